"""The model manager: owns loaded components, loads on first use, keeps the last N checkpoints in RAM.

Only the worker (and the CLI) hold one. A failed load leaves nothing behind in the cache. VAE overrides
are cached separately from checkpoints, so switching the VAE never reloads a UNet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from latentstudio.config import Settings, enforce_offline, resolve_device, resolve_dtype
from latentstudio.models import discovery, loader
from latentstudio.models.builtin import builtin_checkpoint, builtin_control, known_sha256
from latentstudio.models.discovery import CheckpointInfo, VaeInfo
from latentstudio.models.embeddings import EmbeddingDatabase
from latentstudio.models.families import FamilyInfo
from latentstudio.models.files import MODEL_SUFFIXES, ModelFileError, read_tensor_file
from latentstudio.models.hashes import HashCache, legacy_hash, short_hash
from latentstudio.models.hypernetworks import HypernetworkLibrary
from latentstudio.models.lora import LoraLibrary, LoraNetworks

VAE_AUTOMATIC = "Automatic"
VAE_NONE = "None"


class ModelNotFoundError(LookupError):
    """A checkpoint or VAE name that matches nothing; the message lists what is available."""


@dataclass(frozen=True)
class CheckpointEntry:
    """One discovered checkpoint with its A1111 hashes (``sha256`` may be None before first hashing)."""

    info: CheckpointInfo
    sha256: str | None

    @property
    def shorthash(self) -> str | None:
        """First 10 hex of the sha256, as in A1111's titles and ``Model hash``."""
        return None if self.sha256 is None else short_hash(self.sha256)

    @property
    def title(self) -> str:
        """``name [shorthash]`` (or just ``name`` before hashing)."""
        return self.info.title(self.shorthash)


@dataclass(frozen=True)
class CheckpointDescription:
    """What ``latentstudio models --json`` prints for one checkpoint (keys are a stable interface)."""

    title: str
    name: str
    model_name: str
    filename: str
    hash: str  # A1111 legacy 8-hex hash
    sha256: str | None
    shorthash: str | None
    family: str
    family_label: str
    prediction: str
    inpainting: bool
    native_size: int


class ModelManager:
    """Discovers, hashes, loads and caches checkpoints and VAEs for one device/dtype."""

    def __init__(self, settings: Settings) -> None:
        enforce_offline()
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.hashes = HashCache(settings.data_dir / "cache" / "hashes.json")
        self._lock = threading.RLock()
        self._loaded: OrderedDict[Path, loader.Components] = OrderedDict()
        self._vaes: OrderedDict[Path, AutoencoderKL] = OrderedDict()
        self._checkpoints: list[CheckpointInfo] | None = None
        self._vae_infos: list[VaeInfo] | None = None
        self._embeddings: dict[tuple[tuple[str, int], ...], EmbeddingDatabase] = {}
        self._families: dict[tuple[Path, int, int], FamilyInfo] = {}
        self._unusable: dict[tuple[Path, int, int], str] = {}  # failed loads, by path, size and mtime
        self.lora_library = LoraLibrary(settings.resolved_lora_dirs(), self.hashes)
        """The LoRA files (thread-safe: listings may come from any thread)."""
        self.lora_networks = LoraNetworks(self.lora_library)
        """Applies LoRAs to loaded models: only for the thread that runs jobs (``pipeline.run(loras=…)``)."""
        self.hypernetworks = HypernetworkLibrary(settings.models_dir / "hypernetworks")
        """The ``<hypernet:…>`` files (A1111's ``models/hypernetworks``; thread-safe)."""

    # -- discovery -------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Forget the scanned lists (A1111's refresh-checkpoints / refresh-vae)."""
        with self._lock:
            self._checkpoints = None
            self._vae_infos = None
            self._embeddings.clear()
            self._families.clear()
            self._unusable.clear()
        self.lora_library.refresh()
        self.hypernetworks.refresh()

    def checkpoints(self) -> list[CheckpointInfo]:
        """Checkpoints under ``<models_dir>/Stable-diffusion``, natural-sorted; when there are none, the
        built-in shapes model (unless ``settings.builtin_model`` is off)."""
        with self._lock:
            if self._checkpoints is None:
                self._checkpoints = discovery.scan_checkpoints(self.settings.models_dir)
                builtin = builtin_checkpoint()
                if not self._checkpoints and self.settings.builtin_model and builtin.is_file():
                    self._checkpoints = [CheckpointInfo.from_path(builtin, builtin.parent)]
            return list(self._checkpoints)

    def builtin_control_files(self) -> list[Path]:
        """The built-in model's shipped ControlNet while the built-in model is the checkpoint offered (none
        otherwise: it fits no other model)."""
        builtin, control = builtin_checkpoint(), builtin_control()
        offered = [info.path for info in self.checkpoints()] == [builtin]
        return [control] if offered and control.is_file() else []

    def vaes(self) -> list[VaeInfo]:
        """VAE files under ``<models_dir>/VAE`` and ``*.vae.*`` beside checkpoints."""
        with self._lock:
            if self._vae_infos is None:
                self._vae_infos = discovery.scan_vaes(self.settings.models_dir)
            return list(self._vae_infos)

    def entry(self, info: CheckpointInfo, *, compute_hash: bool = True) -> CheckpointEntry:
        """The checkpoint with its sha256 (computed once, then cached by path, size and mtime; the built-in
        model's is recorded in the package, so it is known without reading the file even before hashing)."""
        if info.path.is_dir():
            return CheckpointEntry(info, None)
        digest = known_sha256(info.path)
        if digest is None:
            digest = self.hashes.sha256(info.path) if compute_hash else self.hashes.cached(info.path)
        return CheckpointEntry(info, digest)

    def describe(self, info: CheckpointInfo) -> CheckpointDescription:
        """Hashes and family of a checkpoint, read from its header/keys without building modules."""
        family = loader.identify_path(info.path)
        entry = self.entry(info)
        return CheckpointDescription(
            title=entry.title,
            name=info.name,
            model_name=info.model_name,
            filename=str(info.path.resolve()),
            hash=legacy_hash(info.path) if info.path.is_file() else "",
            sha256=entry.sha256,
            shorthash=entry.shorthash,
            family=family.family.value,
            family_label=family.label,
            prediction=family.prediction.value,
            inpainting=family.inpainting,
            native_size=family.native_size,
        )

    def family(self, info: CheckpointInfo) -> FamilyInfo:
        """The checkpoint's family, from its keys without building modules (from the loaded components when
        it is in RAM; cached while the file's size and mtime hold)."""
        with self._lock:
            loaded = self._loaded.get(info.path)
            if loaded is not None:
                return loaded.info
        key = stat_key(info.path)
        with self._lock:
            found = self._families.get(key)
        if found is None:
            found = loader.identify_path(info.path)
            with self._lock:
                self._families[key] = found
        return found

    def find(self, query: str) -> CheckpointInfo:
        """A checkpoint by any A1111 alias (title, name, stem, hash) or by a file path."""
        as_path = Path(query)
        if (as_path.suffix.lower() in MODEL_SUFFIXES and as_path.is_file()) or (
            as_path / "model_index.json"
        ).is_file():
            root = as_path.parent
            return CheckpointInfo.from_path(as_path, root)
        infos = self.checkpoints()
        found = discovery.find_checkpoint(infos, query, lambda i: self.entry(i, compute_hash=False).shorthash)
        if found is None:
            names = (
                ", ".join(i.name for i in infos) or f"none in {self.settings.models_dir / 'Stable-diffusion'}"
            )
            raise ModelNotFoundError(f"unknown checkpoint {query!r}; available: {names}")
        return found

    def problem(self, info: CheckpointInfo) -> str | None:
        """Why a checkpoint cannot be used, in one line naming the file, as far as is known without loading
        it: its header does not identify a model, or a load of the file as it is now failed. None: usable."""
        try:
            key = stat_key(info.path)
        except OSError as e:
            return f"{info.path}: cannot read ({e.strerror or e})"
        with self._lock:
            failed = self._unusable.get(key)
        if failed is not None:
            return failed
        try:
            self.family(info)
        except (ModelFileError, OSError, ValueError) as e:
            return str(e).splitlines()[0] if str(e).strip() else f"{info.path}: {type(e).__name__}"
        return None

    def default_checkpoint(self) -> CheckpointInfo:
        """The first usable checkpoint in natural order (A1111 picks the first one; a file that cannot be
        loaded is skipped here rather than making every request without a checkpoint fail)."""
        infos = self.checkpoints()
        if not infos:
            raise ModelNotFoundError(f"no checkpoints in {self.settings.models_dir / 'Stable-diffusion'}")
        problems = []
        for info in infos:
            problem = self.problem(info)
            if problem is None:
                return info
            problems.append(problem)
        raise ModelNotFoundError(f"no usable checkpoint: {'; '.join(problems[:5])}")

    # -- loading ---------------------------------------------------------------------------------------
    def load(
        self, query: str | CheckpointInfo | None = None, *, vae: str = VAE_AUTOMATIC
    ) -> loader.Components:
        """Components of a checkpoint (default: the first one) with the VAE chosen as A1111's ``sd_vae``.

        ``vae``: ``"Automatic"`` (the first VAE file whose name starts with the checkpoint's file name
        without extension, as A1111; else the checkpoint's own), ``"None"`` (the checkpoint's own) or a VAE
        file name from :meth:`vaes`. Hashing is separate (:meth:`entry`), so a load never waits for a
        multi-GB sha256.
        """
        if isinstance(query, CheckpointInfo):
            info = query
        else:
            info = self.default_checkpoint() if query is None else self.find(query)
        with self._lock:
            components = self._loaded.get(info.path)
            if components is None:
                components = self._load_file(info)
                self._loaded[info.path] = components
                if len(self._loaded) > self.settings.checkpoints_in_ram:
                    self.lora_networks.release()  # its cached merged weights may belong to the evicted one
                self._evict(self._loaded, self.settings.checkpoints_in_ram)
            self._loaded.move_to_end(info.path)
            vae_path = self._resolve_vae(info, vae)
            if vae_path is None:
                return components
            return dataclasses.replace(
                components, vae=self._load_vae(vae_path, components), vae_path=vae_path
            )

    def _load_file(self, info: CheckpointInfo) -> loader.Components:
        """Load from disk; a file that fails is remembered (until it changes or a refresh) as unusable."""
        try:
            return loader.load_checkpoint(info.path, device=self.device, dtype=self.dtype)
        except ModelFileError as e:
            with contextlib.suppress(OSError):
                self._unusable[stat_key(info.path)] = str(e)
            raise

    def _resolve_vae(self, info: CheckpointInfo, choice: str) -> Path | None:
        if choice == VAE_NONE:
            return None
        vaes = self.vaes()
        if choice == VAE_AUTOMATIC:  # A1111 find_vae_near_checkpoint: the name starts with the file's stem
            stem = info.path.name if info.is_diffusers else info.path.name.rsplit(".", 1)[0]
            near = [v for v in vaes if v.path.name.startswith(stem)]
            return near[0].path if near else None
        for v in vaes:
            if choice in (v.name, str(v.path)):
                return v.path
        allowed = ", ".join([VAE_AUTOMATIC, VAE_NONE, *(v.name for v in vaes)])
        raise ModelNotFoundError(f"unknown VAE {choice!r}; allowed: {allowed}")

    def vae_shorthash(self, components: loader.Components) -> str | None:
        """The infotext's ``VAE hash``: 10 hex of the external VAE's sha256 (cached); None without one."""
        if components.vae_path is None:
            return None
        return short_hash(self.hashes.sha256(components.vae_path, "vae"))

    def _load_vae(self, path: Path, base: loader.Components) -> AutoencoderKL:
        vae = self._vaes.get(path)
        if vae is None:
            tensor_file = read_tensor_file(path)
            placement = loader.Placement(self.device, self.dtype, mapped=tensor_file.mapped)
            vae = loader.build_vae(
                path, loader.strip_vae_prefix(tensor_file.tensors), base.info, {}, placement
            )
            self._vaes[path] = vae
            self._evict(self._vaes, 4)
        self._vaes.move_to_end(path)
        return vae

    @staticmethod
    def _evict(cache: OrderedDict[Path, Any], keep: int) -> None:
        if len(cache) <= keep:
            return
        while len(cache) > keep:
            cache.popitem(last=False)
        _release_memory()

    def embeddings(self, components: loader.Components) -> EmbeddingDatabase:
        """Textual inversions from the embeddings folder that fit ``components``' text encoders (cached per
        set of encoder widths until :meth:`refresh`)."""
        widths = {name: int(enc.config.hidden_size) for name, enc in components.text_encoders.items()}
        key = tuple(sorted(widths.items()))
        with self._lock:
            database = self._embeddings.get(key)
            if database is None:
                folder = self.settings.resolved_embeddings_dir()
                database = EmbeddingDatabase.load(folder, widths, hash_cache=self.hashes)
                self._embeddings[key] = database
            return database

    def loaded(self) -> list[Path]:
        """Paths of the checkpoints in RAM, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def unload(self) -> None:
        """Drop every loaded checkpoint and VAE (A1111's unload-checkpoint)."""
        with self._lock:
            self.lora_networks.release()
            self._loaded.clear()
            self._vaes.clear()
        _release_memory()


def stat_key(path: Path) -> tuple[Path, int, int]:
    """A file as it is now: path, size and modification time."""
    stat = path.stat()
    return path, stat.st_size, stat.st_mtime_ns


def _release_memory() -> None:
    """Return freed model memory now rather than at the next garbage collection."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["CheckpointEntry", "ModelFileError", "ModelManager", "ModelNotFoundError", "stat_key"]
