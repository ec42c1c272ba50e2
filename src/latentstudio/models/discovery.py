"""Find checkpoints and VAEs in an AUTOMATIC1111 ``models/`` folder, named as A1111 names them.

Layout (reference/a1111-compat.md §4.1, §4.3)::

    models/Stable-diffusion/**/*.{safetensors,ckpt,pt,pth}   checkpoints (not *.vae.*)
    models/Stable-diffusion/**/<dir with model_index.json>   a diffusers checkpoint folder
    models/Stable-diffusion/**/*.vae.{ckpt,pt,safetensors}   VAEs kept next to their checkpoint
    models/VAE/**/*.{ckpt,pt,safetensors}                    VAEs

Scans follow symlinks (guarding against cycles), skip broken links and hidden files and folders (a name
starting with ``.``), never descend into a diffusers folder, and sort with A1111's natural sort.
Beyond A1111 we also accept ``.pt``/``.pth`` checkpoints and diffusers folders.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CHECKPOINT_EXTENSIONS",
    "DIFFUSERS_MARKER",
    "VAE_EXTENSIONS",
    "CheckpointInfo",
    "VaeInfo",
    "find_checkpoint",
    "natural_key",
    "scan_checkpoints",
    "scan_control_models",
    "scan_vaes",
]

logger = logging.getLogger(__name__)

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth")
"""Single-file checkpoint extensions (A1111 itself lists only .ckpt and .safetensors)."""
VAE_EXTENSIONS = (".ckpt", ".pt", ".safetensors")
"""VAE file extensions, as A1111."""
CONTROL_EXTENSIONS = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")
"""ControlNet / T2I-Adapter file extensions, as sd-webui-controlnet (matched exactly, as it does)."""
CONTROL_EXTENSION_FOLDER = "extensions/sd-webui-controlnet/models"
"""sd-webui-controlnet's own models folder, relative to the A1111 root (the parent of ``models/``)."""
DIFFUSERS_MARKER = "model_index.json"
"""A folder holding this file is one diffusers-format checkpoint."""

_DIGITS = re.compile(r"([0-9]+)")
_TRAILING_CHECKSUM = re.compile(r"\s*\[[^]]+]\s*$")


def natural_key(s: str) -> tuple[str | int, ...]:
    """Return A1111's natural sort key: ASCII digit runs compare as numbers, the rest case-insensitively.

    ``model2`` sorts before ``model10``. The split alternates text and digits, so positions always hold
    the same type and keys of any two strings compare without a TypeError.
    """
    return tuple(int(part) if i % 2 else part.lower() for i, part in enumerate(_DIGITS.split(s)))


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint, with the names A1111 gives it.

    Attributes:
        path: the file (or diffusers folder) as found under the scanned directory (symlinks not resolved).
        name: the path relative to ``models/Stable-diffusion``, ``/``-separated (``sub/model.safetensors``).
        name_for_extra: the basename without its extension (``model``).
        model_name: ``name`` with ``/`` and ``\\`` replaced by ``_``, extension dropped (``sub_model``);
            this is infotext's ``Model:``.
        is_diffusers: whether ``path`` is a diffusers folder (its names keep any dots: no extension to drop).
    """

    path: Path
    name: str
    name_for_extra: str
    model_name: str
    is_diffusers: bool = False

    @classmethod
    def from_path(cls, path: Path, root: Path) -> CheckpointInfo:
        """Build the info for ``path`` found under ``root`` (the ``Stable-diffusion`` folder).

        Raises:
            ValueError: ``path`` is not inside ``root``.
        """
        path, root = Path(path), Path(root)
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            raise ValueError(f"checkpoint {path} is not inside the models folder {root}") from None
        is_diffusers = path.is_dir()
        flat = name.replace("/", "_").replace("\\", "_")
        return cls(
            path=path,
            name=name,
            name_for_extra=path.name if is_diffusers else path.stem,
            model_name=flat if is_diffusers else os.path.splitext(flat)[0],
            is_diffusers=is_diffusers,
        )

    def title(self, shorthash: str | None) -> str:
        """A1111's title: ``name``, or ``"name [shorthash]"`` once the file has been hashed."""
        return self.name if shorthash is None else f"{self.name} [{shorthash}]"

    def short_title(self, shorthash: str | None) -> str:
        """A1111's short title: ``"name_for_extra [shorthash]"``, or ``name_for_extra`` before hashing."""
        return self.name_for_extra if shorthash is None else f"{self.name_for_extra} [{shorthash}]"

    def aliases(self, shorthash: str | None) -> tuple[str, ...]:
        """Every string that names this checkpoint exactly (A1111 ``CheckpointInfo.ids``, plus the path).

        The legacy 8-hex hash and the full sha256 are not included: both need the file's data.
        """
        names = (str(self.path), self.name, self.name_for_extra, self.model_name)
        if shorthash is None:
            return names
        hashed = (f"{self.name} [{shorthash}]", f"{self.name_for_extra} [{shorthash}]", shorthash)
        return names + hashed


@dataclass(frozen=True)
class VaeInfo:
    """One VAE file; ``name`` is its basename with extension, the key of A1111's ``sd_vae`` option."""

    path: Path
    name: str


@dataclass(frozen=True)
class _Found:
    """A candidate from :func:`_walk`: a file, or a folder holding ``model_index.json``."""

    path: Path
    is_diffusers: bool


def _walk(root: Path) -> Iterator[_Found]:
    """Yield files and diffusers folders under ``root``, recursively, following symlinks.

    Hidden entries (name starting with ``.``) and broken links are skipped, diffusers folders are yielded
    and not entered, and a folder reached twice (a symlink cycle or alias) is walked once. A folder that
    cannot be listed is logged and skipped. Order is unspecified: callers sort.
    """
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            stat = folder.stat()
            if (stat.st_dev, stat.st_ino) in seen:
                continue
            seen.add((stat.st_dev, stat.st_ino))
            with os.scandir(folder) as listing:
                entries = [entry for entry in listing if not entry.name.startswith(".")]
        except OSError as exc:
            logger.warning("cannot list model folder %s: %s", folder, exc)
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir():  # follows symlinks; False for a broken link
                if (path / DIFFUSERS_MARKER).is_file():
                    yield _Found(path, is_diffusers=True)
                else:
                    stack.append(path)
            elif entry.is_file():
                yield _Found(path, is_diffusers=False)


def _has_suffix(name: str, suffixes: Sequence[str]) -> bool:
    """Whether ``name`` ends with one of ``suffixes``, ignoring case."""
    return name.lower().endswith(tuple(suffixes))


def scan_checkpoints(models_dir: Path) -> list[CheckpointInfo]:
    """Return the checkpoints under ``models_dir/"Stable-diffusion"``, natural-sorted by name.

    Single files with a :data:`CHECKPOINT_EXTENSIONS` suffix count, except ``*.vae.*`` (those are VAEs),
    and so does every diffusers folder. A missing folder gives an empty list.
    """
    root = Path(models_dir) / "Stable-diffusion"
    if not root.is_dir():
        return []
    vae_suffixes = tuple(".vae" + ext for ext in CHECKPOINT_EXTENSIONS)
    infos = [
        CheckpointInfo.from_path(found.path, root)
        for found in _walk(root)
        if found.is_diffusers
        or (
            _has_suffix(found.path.name, CHECKPOINT_EXTENSIONS)
            and not _has_suffix(found.path.name, vae_suffixes)
        )
    ]
    return sorted(infos, key=lambda info: (natural_key(info.name), info.name))  # exact name breaks ties


def _scan_vae_source(root: Path, suffixes: Sequence[str]) -> list[VaeInfo]:
    """Return the files under ``root`` ending with one of ``suffixes``, natural-sorted by relative path."""
    if not root.is_dir():
        return []
    files = [f.path for f in _walk(root) if not f.is_diffusers and _has_suffix(f.path.name, suffixes)]
    files.sort(key=lambda path: (natural_key(path.relative_to(root).as_posix()), path.as_posix()))
    return [VaeInfo(path=path, name=path.name) for path in files]


def scan_vaes(models_dir: Path) -> list[VaeInfo]:
    """Return the VAEs in ``models_dir/"VAE"`` and the ``*.vae.*`` files in ``models_dir/"Stable-diffusion"``.

    The list is natural-sorted by name and names are unique: on a clash a file in ``VAE/`` wins over one in
    ``Stable-diffusion/`` (A1111 scans ``VAE/`` last, so its file overwrites), and within one folder the
    first in natural path order wins. A missing folder contributes nothing.
    """
    models_dir = Path(models_dir)
    vae_suffixes = tuple(".vae" + ext for ext in VAE_EXTENSIONS)
    by_name: dict[str, VaeInfo] = {}
    for source in (
        _scan_vae_source(models_dir / "VAE", VAE_EXTENSIONS),
        _scan_vae_source(models_dir / "Stable-diffusion", vae_suffixes),
    ):
        for info in source:
            by_name.setdefault(info.name, info)
    return sorted(by_name.values(), key=lambda info: (natural_key(info.name), info.name))


def scan_control_models(models_dir: Path) -> list[Path]:
    """The ControlNet and T2I-Adapter files, as sd-webui-controlnet finds them: every file with a
    :data:`CONTROL_EXTENSIONS` suffix under ``models_dir/"ControlNet"``, then under its own folder
    (:data:`CONTROL_EXTENSION_FOLDER`), recursively, sorted by file name per folder; a file whose lower-case
    stem an earlier one has replaces it in that place (the extension keys its list by that stem). A file
    named ``None.*`` is skipped, as there."""
    models_dir = Path(models_dir)
    by_stem: dict[str, Path] = {}
    for base in (models_dir / "ControlNet", models_dir.parent / CONTROL_EXTENSION_FOLDER):
        if not base.is_dir():
            continue
        found = [f.path for f in _walk(base) if not f.is_diffusers and f.path.suffix in CONTROL_EXTENSIONS]
        for path in sorted(found, key=lambda path: path.name):
            if path.stem != "None":
                by_stem[path.stem.lower()] = path
    return list(by_stem.values())


def find_checkpoint(
    infos: Sequence[CheckpointInfo],
    query: str,
    shorthash_of: Callable[[CheckpointInfo], str | None] | None = None,
) -> CheckpointInfo | None:
    """Find the checkpoint ``query`` names, with A1111's ``get_closet_checkpoint_match`` rules.

    1. An exact alias (:meth:`CheckpointInfo.aliases`: path, name, name_for_extra, model_name and, once
       hashed, ``"name [shorthash]"``, ``"name_for_extra [shorthash]"`` and the shorthash). When two
       checkpoints share an alias the later one in ``infos`` wins, as in A1111's alias dict. A query with
       ``\\`` separators (a Windows A1111 name) is also tried with ``/``.
    2. Otherwise the checkpoint with the shortest title containing ``query``.
    3. Otherwise step 2 again with a trailing ``[...]`` (a stale or foreign hash) stripped from ``query``.

    ``shorthash_of`` gives a checkpoint's 10-hex shorthash, or None if it has not been hashed (e.g.
    ``HashCache.cached`` then :func:`~latentstudio.models.hashes.short_hash`). An empty query gives None.
    """
    if not query:
        return None
    hashes = [shorthash_of(info) if shorthash_of is not None else None for info in infos]
    by_alias = {
        alias: info for info, short in zip(infos, hashes, strict=True) for alias in info.aliases(short)
    }
    for candidate in (query, query.replace("\\", "/")):
        if candidate in by_alias:
            return by_alias[candidate]
    titled = [(info.title(short), info) for info, short in zip(infos, hashes, strict=True)]
    for needle in (query, _TRAILING_CHECKSUM.sub("", query)):
        found = [(len(title), i) for i, (title, _) in enumerate(titled) if needle and needle in title]
        if found:
            return titled[min(found)[1]][1]
    return None
