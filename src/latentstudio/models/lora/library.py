"""LoRA files on disk: discovery, names and aliases, metadata, base family, rank and the A1111 hash.

A1111's Lora extension (reference/a1111-compat.md §3.4, §4.2): files ``*.safetensors``, ``*.pt``,
``*.ckpt`` under ``models/Lora`` (``--lora-dir``) and ``models/LyCORIS``; a LoRA is named by its file stem
and by its alias, the ``ss_output_name`` metadata; the prompt's name is looked up among both, except that
an alias two files share (and ``none``, ``Addams``) is forbidden and only file stems match it. The hash is
the kohya "addnet" sha256 (tensor data only) — cached, else ``sshs_model_hash`` from the metadata, else
computed — and its first 12 hex digits go to ``Lora hashes``. Listing reads only the safetensors header.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from latentstudio.models.discovery import natural_key
from latentstudio.models.families import Family
from latentstudio.models.files import (
    SAFETENSORS_SUFFIXES,
    ModelFileError,
    read_safetensors_header,
    read_tensor_file,
)
from latentstudio.models.hashes import HashCache, short_hash
from latentstudio.models.lora.formats import split_key

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
FORBIDDEN_ALIASES = frozenset({"none", "addams"})
LORA_SHORTHASH = 12
_HEX64 = re.compile(r"[0-9a-f]{64}")
Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class LoraInfo:
    """One LoRA file: ``name`` is the file stem, ``alias`` the ``ss_output_name`` (or the name), ``family``
    the base model it was trained for (None: unknown), ``preview`` an image beside it, if any."""

    path: Path
    name: str
    alias: str
    metadata: Mapping[str, str]
    family: Family | None
    preview: Path | None


@dataclass(frozen=True)
class LoraDescription:
    """What ``latentstudio loras --json`` prints for one file (keys are a stable interface)."""

    name: str
    alias: str
    path: str
    hash: str  # the full addnet sha256
    shorthash: str  # its first 12 hex, as in ``Lora hashes``
    family: str | None
    rank: int | None
    formats: list[str]


def _shapes_of(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and metadata; safetensors from the header alone, pickles through the safe loader."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        entries, metadata = read_safetensors_header(path)
        return {k: tuple(int(d) for d in v["shape"]) for k, v in entries.items()}, metadata  # type: ignore[attr-defined]
    tensors = read_tensor_file(path).tensors
    return {k: tuple(v.shape) for k, v in tensors.items()}, {}


def _width_family(width: int) -> Family | None:
    return {768: Family.SD1, 1024: Family.SD2}.get(width)


def family_of(shapes: Shapes, metadata: Mapping[str, str]) -> Family | None:
    """The base family a LoRA was trained for: from its keys when they tell, else from the metadata.

    Keys: SDXL-only names (``lora_te1_``/``lora_te2_``, ``text_encoder_2.``, ``label_emb``/
    ``add_embedding``) → SDXL; otherwise a text-encoder down projection of width 768 → SD1, 1024 → SD2.
    Metadata: ``ss_base_model_version`` ``sdxl_…`` → SDXL, ``sd_v2…`` → SD2, ``sd_v1…`` → SD1; else kohya's
    ``ss_v2`` ``"True"`` → SD2, ``"False"`` → SD1; otherwise unknown (None). A1111's ``detect_version`` also
    calls any file with other metadata SD1; that guess only filters its UI, while ours refuses a LoRA on a
    model of another family, so only explicit facts count.
    """
    keys = list(shapes)
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys) or any(
        "label_emb" in k or "add_embedding" in k for k in keys
    ):
        return Family.SDXL
    for key in keys:
        split = split_key(key)
        if split is not None and split[1] == "down" and key.startswith(("lora_te_", "text_encoder.")):
            found = _width_family(shapes[key][1]) if len(shapes[key]) > 1 else None
            if found is not None:
                return found
    version = metadata.get("ss_base_model_version", "")
    for prefix, family in (("sdxl_", Family.SDXL), ("sd_v2", Family.SD2), ("sd_v1", Family.SD1)):
        if version.startswith(prefix):
            return family
    return {"True": Family.SD2, "False": Family.SD1}.get(metadata.get("ss_v2", ""))


def rank_of(shapes: Shapes, metadata: Mapping[str, str]) -> int | None:
    """The LoRA's rank: ``ss_network_dim`` when it is an integer, else the largest down-projection rank."""
    dim = metadata.get("ss_network_dim", "")
    if dim.isdigit():
        return int(dim)
    ranks = [
        shape[0]
        for key, shape in shapes.items()
        if (split := split_key(key)) is not None
        and split[1] in ("down", "hada_w1_b", "lokr_w1_b", "lokr_w2_b")
    ]
    return max(ranks) if ranks else None


def _preview(path: Path) -> Path | None:
    stem = path.with_suffix("")
    for candidate in (stem, stem.with_name(stem.name + ".preview")):
        for suffix in PREVIEW_SUFFIXES:
            image = candidate.with_name(candidate.name + suffix)
            if image.is_file():
                return image
    return None


def read_info(path: Path) -> LoraInfo:
    """Name, alias, metadata, family and preview of one LoRA file (reads the header only for safetensors).

    Raises:
        ModelFileError: the file cannot be read or is not a valid model file.
    """
    shapes, metadata = _shapes_of(path)
    alias = metadata.get("ss_output_name") or path.stem
    return LoraInfo(path, path.stem, alias, dict(metadata), family_of(shapes, metadata), _preview(path))


def scan_lora_files(folders: Sequence[Path]) -> list[Path]:
    """LoRA files under ``folders`` (recursive, symlinks followed once, hidden entries skipped),
    natural-sorted by file name."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for folder in folders:
        for root, dirs, files in os.walk(folder, followlinks=True):
            stat = os.stat(root)
            if (stat.st_dev, stat.st_ino) in seen:  # a symlink cycle or a folder reached twice
                dirs.clear()
                continue
            seen.add((stat.st_dev, stat.st_ino))
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                path = Path(root) / name
                if not name.startswith(".") and path.suffix.lower() in LORA_SUFFIXES and path.is_file():
                    found.append(path)
    return sorted(found, key=lambda p: (natural_key(p.name), p.as_posix()))


class LoraLibrary:
    """The LoRA files of some folders, looked up by name or alias as A1111 does; thread-safe.

    ``errors`` lists files that could not be read at the last scan (one line each); :meth:`unreadable`
    gives the reason by name.
    """

    def __init__(self, folders: Sequence[Path], hashes: HashCache) -> None:
        self.folders = tuple(Path(f) for f in folders)
        self.hashes = hashes
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._infos: list[LoraInfo] | None = None
        self._by_name: dict[str, LoraInfo] = {}
        self._by_alias: dict[str, LoraInfo] = {}
        self._forbidden: set[str] = set()
        self._unreadable: dict[str, str] = {}

    def refresh(self) -> None:
        """Forget the scan (A1111's refresh-loras); the next lookup scans again."""
        with self._lock:
            self._infos = None

    def infos(self) -> list[LoraInfo]:
        """Every readable LoRA, natural-sorted by file name."""
        with self._lock:
            if self._infos is None:
                self._scan()
            assert self._infos is not None
            return list(self._infos)

    def _scan(self) -> None:
        infos, errors, unreadable = [], [], {}
        for path in scan_lora_files(self.folders):
            try:
                infos.append(read_info(path))
            except (ModelFileError, OSError, ValueError) as e:
                errors.append(str(e))
                unreadable[path.stem] = str(e)
        by_name: dict[str, LoraInfo] = {}
        by_alias: dict[str, LoraInfo] = {}
        forbidden = set(FORBIDDEN_ALIASES)
        for info in infos:  # A1111: a later file wins a shared name; a shared alias is forbidden
            by_name[info.name] = info
            if info.alias in by_alias:
                forbidden.add(info.alias.lower())
            by_alias[info.name] = info
            by_alias[info.alias] = info
        self._infos, self.errors = infos, errors
        self._by_name, self._by_alias, self._forbidden = by_name, by_alias, forbidden
        self._unreadable = unreadable

    def find(self, name: str) -> LoraInfo | None:
        """The LoRA a prompt tag names: by file stem or alias (forbidden aliases: by stem only)."""
        self.infos()
        with self._lock:
            if name.lower() in self._forbidden:
                return self._by_name.get(name)
            return self._by_alias.get(name)

    def unreadable(self, name: str) -> str | None:
        """Why the file named ``name`` (a stem) could not be read at the last scan; None if it was not."""
        self.infos()
        with self._lock:
            return self._unreadable.get(name)

    def hash(self, info: LoraInfo) -> str:
        """The full addnet sha256: cached, else the file's ``sshs_model_hash``, else computed (and cached)."""
        cached = self.hashes.cached(info.path, "lora", "addnet")
        if cached is not None:
            return cached
        claimed = str(info.metadata.get("sshs_model_hash", "")).lower()
        if _HEX64.fullmatch(claimed):
            return claimed
        return self.hashes.addnet(info.path, "lora")

    def shorthash(self, info: LoraInfo) -> str:
        """The 12-hex hash of ``Lora hashes``."""
        return short_hash(self.hash(info), LORA_SHORTHASH)

    def describe(self, info: LoraInfo) -> LoraDescription:
        """Hashes, family, rank and formats of one LoRA (hashes the file on first use)."""
        shapes, metadata = _shapes_of(info.path)
        kinds = sorted({kind for key in shapes if (kind := _kind_of(key)) is not None})
        digest = self.hash(info)
        family = info.family.value if info.family is not None else None
        return LoraDescription(
            info.name, info.alias, str(info.path), digest, short_hash(digest, LORA_SHORTHASH), family,
            rank_of(shapes, metadata), kinds,
        )  # fmt: skip


def _kind_of(key: str) -> str | None:
    split = split_key(key)
    if split is None:
        return None
    role = split[1]
    if role in ("up", "down", "mid"):
        return "lora"
    if role.startswith(("hada_", "lokr_")):
        return "loha" if role.startswith("hada_") else "lokr"
    if role == "dora_scale":
        return "dora"
    return "full" if role.startswith("diff") else None


def metadata_json(info: LoraInfo) -> dict[str, object]:
    """The metadata as A1111's ``/sdapi/v1/loras`` returns it: values that are JSON objects decoded."""
    out: dict[str, object] = {}
    for key, value in info.metadata.items():
        if value.startswith("{"):
            try:
                out[key] = json.loads(value)
                continue
            except ValueError:
                pass
        out[key] = value
    return out
