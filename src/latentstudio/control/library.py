"""The ControlNet / T2I-Adapter files a server has: listed and named as sd-webui-controlnet does, identified
from their headers (kind and base family, cached while a file is unchanged), loaded once and kept in RAM.

Names (``scripts/global_state.py`` ``update_cn_models`` and ``scripts/controlnet.py``
``find_closest_lora_model_name``): a file is listed as ``"stem [hash]"`` (A1111's legacy 8-hex hash); a unit
may name it by that title, by its stem in any case, or by a part of a stem (the shortest stem containing
it wins). The title ``None`` names no model.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from latentstudio.control import annotators
from latentstudio.control.networks import (
    ControlFileInfo,
    ControlNetwork,
    inspect_control_file,
    load_control_network,
)
from latentstudio.models.discovery import scan_control_models
from latentstudio.models.families import Family
from latentstudio.models.files import ModelFileError
from latentstudio.models.hashes import legacy_hash
from latentstudio.models.manager import stat_key

KEEP_IN_RAM = 4  # networks kept loaded (the extension's control_net_model_cache_size is 2 per unit slot)


class ControlModelNotFoundError(LookupError):
    """No listed ControlNet model matches the name a unit gives (or none of the checkpoint's family)."""


@dataclass(frozen=True)
class ControlFile:
    """A listed file: its path and its ``/controlnet/model_list`` title."""

    path: Path
    title: str

    @property
    def stem(self) -> str:
        return self.path.stem


class ControlLibrary:
    """The files under ``models/ControlNet`` (and the extension's own folder) of one models root, and those
    ``extra_files`` returns on each listing (the built-in model's ControlNet), for one device and dtype.
    Thread-safe; :meth:`load` is for the thread that runs jobs."""

    def __init__(
        self,
        models_dir: Path,
        device: torch.device,
        dtype: torch.dtype,
        extra_files: Callable[[], Sequence[Path]] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self._extra_files = extra_files
        self.device = device
        self.dtype = dtype
        self._lock = threading.RLock()
        self._titles: dict[tuple[Path, int, int], str] = {}
        self._infos: dict[tuple[Path, int, int], ControlFileInfo | str] = {}
        # by file version and, for a difference ControlNet, the base UNet it was built on (kept referenced,
        # so that its id cannot be reused while the entry lives)
        self._loaded: OrderedDict[tuple[Path, int, int, int], tuple[ControlNetwork, object]] = OrderedDict()

    @property
    def annotator_roots(self) -> tuple[Path, ...]:
        """Where weight-needing preprocessors find their files (:func:`annotators.roots`)."""
        return annotators.roots(self.models_dir)

    def files(self) -> list[ControlFile]:
        """Every listed file, read anew (the extension rescans on ``model_list?update=true``); hashes are
        computed once per file version."""
        out = []
        extra = list(self._extra_files()) if self._extra_files is not None else []
        for path in [*scan_control_models(self.models_dir), *extra]:
            try:
                key = stat_key(path)
            except OSError:
                continue  # removed while listing
            with self._lock:
                title = self._titles.get(key)
            if title is None:
                title = f"{path.stem} [{legacy_hash(path)}]"
                with self._lock:
                    self._titles[key] = title
            out.append(ControlFile(path, title))
        return out

    def find(self, query: str) -> ControlFile:
        """The file a unit's ``model`` names (see the module docstring), else
        :class:`ControlModelNotFoundError` listing the titles."""
        files = self.files()
        by_title = {f.title: f for f in files}
        by_stem = {f.stem.lower(): f for f in files}
        found = by_title.get(query) or by_stem.get(query.lower())
        if found is None and query:
            matching = sorted(
                (f for f in files if query.lower() in f.stem.lower()), key=lambda f: len(f.stem)
            )
            found = matching[0] if matching else None
        if found is None:
            titles = ", ".join(f.title for f in files[:50]) or "none (put them in models/ControlNet)"
            raise ControlModelNotFoundError(f"model not found: {query!r}; available: {titles}")
        return found

    def info(self, file: ControlFile) -> ControlFileInfo:
        """Kind and base family from the file's header (cached per file version); a file we cannot use
        raises :class:`ModelFileError` (one line naming it), every time."""
        key = stat_key(file.path)
        with self._lock:
            known = self._infos.get(key)
        if known is None:
            try:
                known = inspect_control_file(file.path)
            except ModelFileError as e:
                known = str(e)
            with self._lock:
                self._infos[key] = known
        if isinstance(known, str):
            raise ModelFileError(file.path, known.removeprefix(f"{file.path}: "))
        return known

    def resolve(self, query: str, family: Family | None, checkpoint: str) -> ControlFile:
        """The file a unit names, readable and of the checkpoint's ``family`` (None: unknown, not checked):
        :class:`ControlModelNotFoundError` (also for a model of another family, naming both) or
        :class:`ModelFileError`."""
        file = self.find(query)
        info = self.info(file)
        if family is not None and info.family is not family:
            raise ControlModelNotFoundError(
                f"{file.title} is a {info.family.value} {info.kind.value}; the checkpoint {checkpoint!r} is "
                f"{family.value}"
            )
        return file

    def load(self, file: ControlFile, base_unet: UNet2DConditionModel) -> ControlNetwork:
        """The network, loaded once and kept (the least recently used beyond :data:`KEEP_IN_RAM` goes).
        A difference ControlNet is built on ``base_unet`` and kept per base model."""
        info = self.info(file)
        base = id(base_unet) if info.layout.endswith("diff") else 0
        key = (*stat_key(file.path), base)
        with self._lock:
            entry = self._loaded.get(key)
            if entry is not None:
                self._loaded.move_to_end(key)
                return entry[0]
        network = load_control_network(file.path, device=self.device, dtype=self.dtype, base_unet=base_unet)
        with self._lock:
            self._loaded[key] = (network, base_unet if base else None)
            evict = len(self._loaded) > KEEP_IN_RAM
            while len(self._loaded) > KEEP_IN_RAM:
                self._loaded.popitem(last=False)
        if evict:
            gc.collect()
        return network

    def unload(self) -> None:
        """Drop every loaded network."""
        with self._lock:
            self._loaded.clear()
        gc.collect()
