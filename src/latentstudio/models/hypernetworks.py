"""A1111 hypernetworks: ``*.pt`` files under ``<models_dir>/hypernetworks``, loaded weights-only.

A file is the dict A1111's ``Hypernetwork.save`` writes: ``layer_structure`` (default ``[1, 2, 1]``),
``activation_func``, ``is_layer_norm``, ``activate_output`` (default True), ``use_dropout``,
``dropout_structure``, ``last_layer_dropout``, and for each context width ``dim`` (an ``int`` key) a pair
``(module_k state, module_v state)``. Each module maps ``x [B, T, dim] → x + layers(x) · multiplier``;
A1111 runs it on the input of every attention's ``to_k`` / ``to_v`` whose width matches (the
cross-attention context, and ``x`` itself in self-attention). Dropout layers take their place in the
layer list (their index names the weights) but are inactive: the modules run in eval mode.
"""

from __future__ import annotations

import glob
import inspect
import os
import pickle
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Hypernetwork", "HypernetworkError", "HypernetworkLibrary", "HypernetworkModule", "load_file"]

_ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "linear": torch.nn.Identity,
    "relu": torch.nn.ReLU,
    "leakyrelu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
}
_ACTIVATIONS.update(
    {
        name.lower(): cls
        for name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
        if cls.__module__ == "torch.nn.modules.activation" and issubclass(cls, torch.nn.Module)
    }
)
_OLD_KEYS = {f"linear{i + 1}.{p}": f"linear.{i}.{p}" for i in range(2) for p in ("weight", "bias")}


class HypernetworkError(ValueError):
    """A hypernetwork that cannot be used (unknown name, refused or malformed file); one line."""


@dataclass(frozen=True)
class Structure:
    """The layer options of a file, with A1111's defaults."""

    layers: tuple[float, ...] = (1.0, 2.0, 1.0)
    activation: str | None = None
    layer_norm: bool = False
    activate_output: bool = True
    dropout: tuple[float, ...] | None = None


class HypernetworkModule(torch.nn.Module):
    """One k or v module of one width: Linear layers ``dim·layers[i] → dim·layers[i+1]``, each followed
    by the activation (not after the last unless ``activate_output``), a LayerNorm and a Dropout where the
    structure asks for them."""

    def __init__(self, dim: int, structure: Structure) -> None:
        super().__init__()
        sizes = structure.layers
        if len(sizes) < 2 or sizes[0] != 1 or sizes[-1] != 1:
            raise HypernetworkError(f"layer_structure {list(sizes)} must start and end with 1")
        layers: list[torch.nn.Module] = []
        for i in range(len(sizes) - 1):
            width = int(dim * sizes[i + 1])
            layers.append(torch.nn.Linear(int(dim * sizes[i]), width))
            last = i >= len(sizes) - 2
            if structure.activation not in (None, "linear") and not (last and not structure.activate_output):
                if structure.activation not in _ACTIVATIONS:
                    raise HypernetworkError(f"unsupported activation function {structure.activation!r}")
                layers.append(_ACTIVATIONS[structure.activation]())
            if structure.layer_norm:
                layers.append(torch.nn.LayerNorm(width))
            p = structure.dropout[i + 1] if structure.dropout is not None else 0
            if p > 0:
                if not 0 < p < 1:
                    raise HypernetworkError(f"dropout probability {p} is not in (0, 1)")
                layers.append(torch.nn.Dropout(p=p))
        self.linear = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        """``x [B, T, dim]`` → ``x + layers(x) · multiplier`` (same shape)."""
        out: torch.Tensor = x + self.linear(x) * multiplier
        return out


@dataclass(frozen=True, eq=False)
class Hypernetwork:
    """A loaded file: its ``(k, v)`` modules by context width (eval mode, no gradients)."""

    name: str
    path: Path
    layers: Mapping[int, tuple[HypernetworkModule, HypernetworkModule]]


def _dropout_structure(state: Mapping[object, object], layers: Sequence[float]) -> tuple[float, ...]:
    """A1111's ``dropout_structure``: the file's, else 0.3 after every hidden layer but the last (that one
    too with ``last_layer_dropout``) when ``use_dropout``, else none."""
    given = state.get("dropout_structure")
    if isinstance(given, (list, tuple)):
        return tuple(float(p) for p in given)
    if not state.get("use_dropout", False):
        return (0.0,) * len(layers)
    last = 0.3 if state.get("last_layer_dropout", False) else 0.0
    return (0.0, *([0.3] * (len(layers) - 3)), last, 0.0)


def _structure(state: Mapping[object, object]) -> Structure:
    layers = state.get("layer_structure") or [1, 2, 1]
    if not isinstance(layers, (list, tuple)):
        raise HypernetworkError(f"layer_structure {layers!r} is not a list")
    activation = state.get("activation_func")
    return Structure(
        layers=tuple(float(s) for s in layers),
        activation=activation if isinstance(activation, str) else None,
        layer_norm=bool(state.get("is_layer_norm", False)),
        activate_output=bool(state.get("activate_output", True)),
        dropout=_dropout_structure(state, layers),
    )


def _module(dim: int, structure: Structure, weights: object) -> HypernetworkModule:
    if not isinstance(weights, Mapping):
        raise HypernetworkError(f"width {dim}: the module weights are not a state dict")
    state = {_OLD_KEYS.get(str(k), str(k)): v for k, v in weights.items()}
    module = HypernetworkModule(dim, structure)
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise HypernetworkError(f"width {dim}: {str(error).splitlines()[0]}") from None
    return module.eval().requires_grad_(False)


def load_file(path: Path, name: str | None = None) -> Hypernetwork:
    """Read ``path`` with ``torch.load(weights_only=True)`` and build its modules (CPU, float32).

    Raises:
        HypernetworkError: the file needs more than tensors and plain containers to unpickle (refused),
            cannot be read, or its layout is not a hypernetwork's; the message names the file.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise HypernetworkError(f"{path.name}: refused, not a weights-only torch file") from None
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise HypernetworkError(f"{path.name}: unreadable ({str(error).splitlines()[0]})") from None
    if not isinstance(state, Mapping):
        raise HypernetworkError(f"{path.name}: not a hypernetwork (no dict)")
    try:
        structure = _structure(state)
        layers: dict[int, tuple[HypernetworkModule, HypernetworkModule]] = {}
        for dim, pair in state.items():
            if type(dim) is not int:  # A1111 keeps exactly the int keys
                continue
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise HypernetworkError(f"width {dim}: not a (k, v) pair")
            layers[dim] = (_module(dim, structure, pair[0]), _module(dim, structure, pair[1]))
    except HypernetworkError as error:
        raise HypernetworkError(f"{path.name}: {error}") from None
    return Hypernetwork(name or path.stem, path, layers)


class HypernetworkLibrary:
    """The ``*.pt`` files under ``root`` (recursive, as A1111's ``list_hypernetworks``: sorted by
    lower-cased path, named by file stem, a later duplicate name wins, ``None`` left out); loaded files
    are kept until they change on disk. Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._files: dict[str, Path] | None = None
        self._loaded: dict[Path, tuple[tuple[int, int], Hypernetwork]] = {}

    def refresh(self) -> None:
        """Forget the scanned list (the next listing scans again)."""
        with self._lock:
            self._files = None

    def files(self) -> dict[str, Path]:
        """``{name: path}`` in A1111's order."""
        with self._lock:
            if self._files is None:
                pattern = os.path.join(glob.escape(str(self.root)), "**", "*.pt")
                found = sorted(glob.glob(pattern, recursive=True), key=str.lower)
                names = ((Path(f).stem, Path(f)) for f in found)
                self._files = {name: path for name, path in names if name != "None" and path.is_file()}
            return dict(self._files)

    def load(self, name: str) -> Hypernetwork:
        """The hypernetwork ``name`` (loaded once per file version).

        Raises:
            HypernetworkError: no file of that name, or the file cannot be used (see :func:`load_file`).
        """
        path = self.files().get(name)
        if path is None:
            raise HypernetworkError(f"no hypernetwork file of that name in {self.root}")
        try:
            stat = path.stat()
        except OSError as error:
            raise HypernetworkError(f"{path.name}: unreadable ({error.strerror})") from None
        version = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._loaded.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        network = load_file(path, name)
        with self._lock:
            self._loaded[path] = (version, network)
        return network
