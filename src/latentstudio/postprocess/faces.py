"""Face restoration (GFPGAN, CodeFormer) from user-provided weights, loaded safely through spandrel.

Weights live where A1111 keeps them: ``models/GFPGAN`` and ``models/Codeformer`` (the first model file
found, sorted by name). Nothing is downloaded: without a file, asking for the restorer is an error that
names the folder. CodeFormer's architecture ships in ``spandrel_extra_arches`` (non-commercial licence),
which is not a dependency: it is used when the user has installed it.

Deviation from A1111: there is no face detector (A1111's facexlib downloads RetinaFace weights), so the
restorer runs in *aligned* mode: the whole image is treated as one aligned face, resized to the model's
512×512 and back. This suits face crops and close portraits, not faces in a wide scene.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from latentstudio.postprocess.upscalers import (
    UPSCALER_SUFFIXES,
    UpscalerLoadError,
    load_spandrel,
    pil_to_tensor,
    tensor_to_pil,
)

# A1111 face restorer name → (folder under the models root, spandrel architecture id)
FACE_RESTORERS: dict[str, tuple[str, str]] = {
    "CodeFormer": ("Codeformer", "CodeFormer"),
    "GFPGAN": ("GFPGAN", "GFPGAN"),
}
FACE_SIZE = 512
_NO_EXTRA_ARCHES = (
    "CodeFormer needs the spandrel_extra_arches package (non-commercial licence; not installed by "
    "latentstudio): pip install spandrel_extra_arches"
)


class FaceRestorerError(ValueError):
    """A face restorer that was asked for but cannot run (no weights, wrong file, missing architecture)."""


@dataclass(frozen=True)
class FaceRestorerInfo:
    """One entry of ``/sdapi/v1/face-restorers`` plus the weights file found (None: not installed)."""

    name: str
    cmd_dir: str
    model_path: str | None


def discover_face_restorers(models_dir: Path | None) -> list[FaceRestorerInfo]:
    """CodeFormer and GFPGAN, always listed as A1111 does; ``model_path`` is the first weights file."""
    infos = []
    for name, (folder, _) in FACE_RESTORERS.items():
        root = (models_dir / folder) if models_dir else Path(folder)
        files = sorted(p for p in root.glob("*") if p.is_file() and p.suffix.lower() in UPSCALER_SUFFIXES)
        infos.append(FaceRestorerInfo(name, str(root), str(files[0]) if files else None))
    return infos


class FaceRestorers:
    """Loaded face restoration models of one models root (each loaded once, on first use; thread-safe)."""

    def __init__(
        self,
        models_dir: Path | None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.models_dir = models_dir
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self._lock = threading.Lock()
        self._loaded: dict[str, Any] = {}

    def list(self) -> list[FaceRestorerInfo]:
        """The restorers and their weights files (rescanned on every call: a cheap directory listing)."""
        return discover_face_restorers(self.models_dir)

    def check(self, name: str) -> FaceRestorerInfo:
        """Restorer ``name`` with its weights file, without loading it: :class:`FaceRestorerError` when it
        is unknown, has no weights, or needs a package that is not installed (CodeFormer)."""
        if name not in FACE_RESTORERS:
            raise FaceRestorerError(f"unknown face restorer {name!r}; allowed: {', '.join(FACE_RESTORERS)}")
        info = next(i for i in self.list() if i.name == name)
        if info.model_path is None:
            raise FaceRestorerError(
                f"{name} needs its weights: put a .safetensors or .pth file in {info.cmd_dir} "
                "(nothing is downloaded)"
            )
        if name == "CodeFormer" and importlib.util.find_spec("spandrel_extra_arches") is None:
            raise FaceRestorerError(_NO_EXTRA_ARCHES)
        return info

    def usable(self) -> tuple[FaceRestorerInfo, ...]:
        """The restorers :meth:`check` accepts (weights present, architecture available), in listing order."""
        usable: tuple[FaceRestorerInfo, ...] = ()
        for name in FACE_RESTORERS:
            try:
                usable += (self.check(name),)
            except FaceRestorerError:
                continue
        return usable

    def model(self, name: str) -> Any:
        """The spandrel model of restorer ``name``; :class:`FaceRestorerError` when it cannot be had."""
        info = self.check(name)
        assert info.model_path is not None
        with self._lock:
            if info.model_path not in self._loaded:
                self._loaded[info.model_path] = self._load(name, Path(info.model_path))
            return self._loaded[info.model_path]

    def _load(self, name: str, path: Path) -> Any:
        expected = FACE_RESTORERS[name][1]
        registry = _extra_registry() if expected == "CodeFormer" else None
        try:
            model = load_spandrel(path, device=self.device, dtype=self.dtype, registry=registry)
        except UpscalerLoadError as e:
            raise FaceRestorerError(f"{name}: {e}") from e
        if model.architecture.id != expected:
            raise FaceRestorerError(f"{name}: {path} holds a {model.architecture.id} model, not {expected}")
        return model

    def restore(self, image: Image.Image, name: str, *, codeformer_weight: float = 0.5) -> Image.Image:
        """Restore ``image`` (RGB, any size) as one aligned face; returns an image of the same size.

        ``codeformer_weight`` (CodeFormer only, 0..1): 0 is the strongest restoration, as in A1111.
        """
        if not 0.0 <= codeformer_weight <= 1.0:
            raise ValueError(f"codeformer_weight must be in [0, 1], got {codeformer_weight}")
        model = self.model(name)
        face = image.convert("RGB").resize((FACE_SIZE, FACE_SIZE), resample=Image.Resampling.LANCZOS)
        x = pil_to_tensor(face).to(model.device, model.dtype) * 2 - 1  # the networks work in [-1, 1]
        with torch.inference_mode():
            if name == "CodeFormer":
                y = model.model(x, weight=codeformer_weight, adain=True)[0]
            else:
                y = model.model(x, return_rgb=False)[0]
        restored = tensor_to_pil(((y.float() + 1) / 2).clamp(0, 1))
        return restored.resize(image.size, resample=Image.Resampling.LANCZOS)


def _extra_registry() -> Any:
    """spandrel_extra_arches' own registry (CodeFormer), if the user installed the package; spandrel's
    global registry is left untouched."""
    try:
        import spandrel_extra_arches
    except ImportError as e:
        raise FaceRestorerError(_NO_EXTRA_ARCHES) from e
    return spandrel_extra_arches.EXTRA_REGISTRY
