"""Textual-inversion embedding files, found and read as AUTOMATIC1111 does (a1111-compat.md §3.4, §4.2).

A1111 ``modules/textual_inversion/textual_inversion.py``: every file in ``embeddings/`` is one embedding
named by its file stem (:func:`scan_embeddings` finds them, :func:`read_embedding` reads one). Formats read
(``create_embedding_from_data``):

- A1111 / original TI: ``{"string_to_param": {"*": Tensor[n, width]}, "step", "sd_checkpoint",
  "sd_checkpoint_name", ...}`` (``.pt``, also ``.bin``);
- diffusers concepts: ``{"<token>": Tensor[width] or Tensor[n, width]}`` (``learned_embeds.bin`` or
  ``.safetensors``), and kohya's ``{"emb_params": Tensor[n, width]}`` — one tensor under any key;
- SDXL: ``{"clip_l": Tensor[n, 768], "clip_g": Tensor[n, 1280]}``.

Vectors are keyed by the text-encoder component they feed: ``text_encoder`` (CLIP-L for SD1 and SDXL's
first encoder; OpenCLIP-H for SD2) and ``text_encoder_2`` (SDXL's OpenCLIP bigG).

Nothing from a file ever executes: ``.safetensors`` goes through :func:`~latentstudio.models.files.
read_tensor_file`; ``.pt``/``.bin`` through ``torch.load(weights_only=True)`` and anything needing more is
refused. Differences from A1111, each on purpose:

- Embeddings inside PNG/WebP images (``sd-ti-embedding`` text chunk, or data hidden in the pixels) are not
  read: images are not scanned at all (A1111 treats most as previews anyway). Both encodings are JSON, not
  pickle, so they could be added safely later.
- Old files whose ``string_to_param`` is a pickled ``torch.nn.ParameterDict`` need full unpickling and are
  refused with a one-line error (convert them with a trusted tool).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch

from latentstudio.models.discovery import natural_key
from latentstudio.models.files import ModelFileError, read_tensor_file
from latentstudio.models.hashes import HashCache, sha256_file, short_hash

__all__ = [
    "EMBEDDING_SUFFIXES",
    "TEXT_ENCODER",
    "TEXT_ENCODER_2",
    "Embedding",
    "read_embedding",
    "scan_embeddings",
]

TEXT_ENCODER = "text_encoder"
"""Component fed by SD1's CLIP-L, SD2's OpenCLIP-H and SDXL's first encoder (CLIP-L)."""
TEXT_ENCODER_2 = "text_encoder_2"
"""Component fed by SDXL's second encoder (OpenCLIP bigG)."""
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
"""File extensions scanned for embeddings (lower case; matched case-insensitively)."""
HASH_KIND = "textual_inversion"
""":class:`HashCache` namespace, as A1111's ``textual_inversion/<name>`` keys."""

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


@dataclass(frozen=True, eq=False)
class Embedding:
    """One textual-inversion embedding.

    Attributes:
        name: the file stem; the prompt uses it by this name.
        vectors: component name → ``Tensor[vector_count, width]`` float32 on the CPU (``text_encoder``, and
            for SDXL also ``text_encoder_2``); read-only mapping.
        path: the file it came from.
        hash: A1111's shorthash, the full-file sha256 truncated to 12 hex characters ("" if unknown).
        step, sd_checkpoint, sd_checkpoint_name: training metadata from A1111 ``.pt`` files, else None.
    """

    name: str
    vectors: Mapping[str, torch.Tensor]
    path: Path
    hash: str = ""
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    def __post_init__(self) -> None:
        """Check every vector set is ``[n, width]`` with one ``n``; freeze the mapping."""
        if not self.vectors:
            raise ValueError(f"embedding {self.name!r}: vectors must not be empty")
        rows = {tuple(v.shape)[:1] for v in self.vectors.values()}
        if any(v.dim() != 2 or 0 in v.shape for v in self.vectors.values()) or len(rows) != 1:
            shapes = {k: list(v.shape) for k, v in self.vectors.items()}
            raise ValueError(f"embedding {self.name!r}: vectors must be [n, width] with one n; got {shapes}")
        object.__setattr__(self, "vectors", MappingProxyType(dict(self.vectors)))

    @property
    def shape(self) -> int:
        """A1111 ``shape``: the vector width, summed over encoders (768 SD1, 1024 SD2, 2048 SDXL)."""
        return sum(int(v.shape[1]) for v in self.vectors.values())

    @property
    def vector_count(self) -> int:
        """How many tokens the embedding occupies in a prompt (A1111 ``vectors``)."""
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def widths(self) -> dict[str, int]:
        """Component name → vector width, e.g. ``{"text_encoder": 768}``."""
        return {key: int(v.shape[1]) for key, v in self.vectors.items()}


def scan_embeddings(folder: Path) -> list[Path]:
    """Return the embedding files under ``folder``, recursively, natural-sorted by relative path.

    Files ending in :data:`EMBEDDING_SUFFIXES` (any case) count; hidden files and folders (name starting with
    ``.``) and broken links are skipped; symlinked folders are followed, each real folder walked once. A
    missing folder gives an empty list.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            stat = os.stat(dirpath)
        except OSError:  # removed while walking
            dirnames.clear()
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            dirnames.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath) / name
            if not name.startswith(".") and name.lower().endswith(EMBEDDING_SUFFIXES) and path.is_file():
                found.append(path)
    found.sort(key=lambda p: (natural_key(p.relative_to(root).as_posix()), p.as_posix()))
    return found


def read_embedding(path: Path, *, hash_cache: HashCache | None = None) -> Embedding:
    """Read one embedding file in any supported format, name it by its stem and hash it.

    Vectors are copied to float32 ``Tensor[n, width]`` (a 1-D diffusers vector becomes ``[1, width]``).

    Raises:
        ModelFileError: unsupported extension, unreadable/corrupt file, a pickle needing more than tensors
            and plain containers (refused, never executed), or data that is not one embedding.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        data: Mapping[object, object] = {k: v for k, v in read_tensor_file(path).tensors.items()}
    elif suffix in (".pt", ".bin"):
        data = _load_pickled_dict(path)
    else:
        raise ModelFileError(path, f"not an embedding file: expected one of {', '.join(EMBEDDING_SUFFIXES)}")
    vectors = _vectors_of(path, data)
    try:
        full = hash_cache.sha256(path, HASH_KIND) if hash_cache is not None else sha256_file(path)
    except (OSError, RuntimeError) as e:
        raise ModelFileError(path, f"cannot hash: {e}") from e
    step = data.get("step")
    return Embedding(
        name=path.stem,
        vectors=vectors,
        path=path,
        hash=short_hash(full, 12),
        step=step if isinstance(step, int) and not isinstance(step, bool) else None,
        sd_checkpoint=_str_or_none(data.get("sd_checkpoint")),
        sd_checkpoint_name=_str_or_none(data.get("sd_checkpoint_name")),
    )


def _str_or_none(value: object) -> str | None:
    """``value`` if it is a string, else None (metadata fields of untrusted files)."""
    return value if isinstance(value, str) else None


def _load_pickled_dict(path: Path) -> Mapping[object, object]:
    """``torch.load(weights_only=True)`` of a dict: tensors, str/int/None and plain containers only.

    Raises:
        ModelFileError: refused (the pickle names a global or opcode the weights-only loader forbids),
            corrupt, or not a dict.
    """
    if not path.is_file() or path.stat().st_size == 0:
        raise ModelFileError(path, "empty file (0 bytes)" if path.is_file() else "no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _GLOBAL.search(str(e))
        if found is None and not _is_torch_or_pickle(path):
            raise ModelFileError(path, "corrupt file: neither a torch zip archive nor a pickle") from e
        what = f"forbidden global {found.group(1)}" if found else "opcodes the weights-only loader refuses"
        raise ModelFileError(
            path,
            f"refused: the file needs full unpickling, which could run code from the file ({what}); "
            "convert it to .safetensors with a trusted tool",
        ) from e
    except Exception as e:  # untrusted bytes: the loader may raise anything; report, never crash
        if not _is_torch_or_pickle(path):
            raise ModelFileError(path, "corrupt file: neither a torch zip archive nor a pickle") from e
        first = (str(e).strip() or type(e).__name__).splitlines()[0].split(". ")[0][:200]
        raise ModelFileError(path, f"corrupt or truncated file: {first}") from e
    if not isinstance(obj, Mapping):
        raise ModelFileError(path, f"not an embedding: the file holds a {type(obj).__name__}, not a dict")
    return obj


def _is_torch_or_pickle(path: Path) -> bool:
    """Whether the file starts as a zip (``torch.save``) or with a pickle PROTO opcode (legacy or raw)."""
    with path.open("rb") as f:
        head = f.read(4)
    return head[:1] == b"\x80" or head == b"PK\x03\x04"


def _vectors_of(path: Path, data: Mapping[object, object]) -> dict[str, torch.Tensor]:
    """Component name → ``Tensor[n, width]`` from a file's top-level dict (A1111 format detection order)."""
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or len(params) != 1:
            count = len(params) if isinstance(params, Mapping) else type(params).__name__
            raise ModelFileError(path, f"string_to_param must hold exactly one term, got {count}")
        return {TEXT_ENCODER: _as_vectors(path, "string_to_param", next(iter(params.values())))}
    if "clip_l" in data and "clip_g" in data:
        clip_l = _as_vectors(path, "clip_l", data["clip_l"])
        clip_g = _as_vectors(path, "clip_g", data["clip_g"])
        if clip_l.shape[0] != clip_g.shape[0]:
            raise ModelFileError(
                path, f"clip_l has {clip_l.shape[0]} vectors but clip_g has {clip_g.shape[0]}"
            )
        return {TEXT_ENCODER: clip_l, TEXT_ENCODER_2: clip_g}
    if len(data) == 1:
        key, value = next(iter(data.items()))
        return {TEXT_ENCODER: _as_vectors(path, str(key), value)}
    keys = sorted(map(str, data))
    listed = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    raise ModelFileError(
        path,
        f"not a textual-inversion embedding: expected string_to_param, clip_l + clip_g, or one tensor; "
        f"found {len(keys)} entries ({listed})",
    )


def _as_vectors(path: Path, key: str, value: object) -> torch.Tensor:
    """Check one embedding tensor; return a float32 ``Tensor[n, width]`` copy (``[w]`` → ``[1, w]``)."""
    if not isinstance(value, torch.Tensor):
        raise ModelFileError(path, f"{key!r} holds a {type(value).__name__}, not a tensor")
    tensor = value.detach()
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if not tensor.is_floating_point() or tensor.dim() != 2 or 0 in tensor.shape:
        raise ModelFileError(
            path, f"{key!r} is {tensor.dtype} {list(value.shape)}; expected floating [vectors, width]"
        )
    tensor = tensor.to(device="cpu", dtype=torch.float32, copy=True).contiguous()
    if not bool(torch.isfinite(tensor).all()):
        raise ModelFileError(path, f"{key!r} holds NaN or infinite values")
    return tensor
