"""What the ``/sdapi/v1`` list endpoints return, in A1111's shapes (reference §1.3, §1.9, §5).

Listing never loads a model or hashes a file: hashes appear once the model manager has computed them
(as A1111's ``hash``/``sha256`` are null until a model was loaded). Model files are only read for their
safetensors header (LoRA metadata, via the LoRA library) or, for ``embeddings``, with the safe readers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import psutil
import torch

from latentstudio.api.sdapi.convert import CheckpointRef, ServerCatalog
from latentstudio.config import Settings
from latentstudio.models import loader
from latentstudio.models.discovery import CheckpointInfo
from latentstudio.models.embeddings import EmbeddingDatabase
from latentstudio.models.families import Family
from latentstudio.models.files import ModelFileError
from latentstudio.models.lora.library import metadata_json
from latentstudio.models.manager import ModelManager, ModelNotFoundError
from latentstudio.pipeline.scripts import script_info
from latentstudio.postprocess.upscalers import UpscalerInfo
from latentstudio.prompts.styles import load_styles
from latentstudio.samplers import SAMPLER_INFO, SCHEDULER_INFO

LATENT_UPSCALE_MODES = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)
STYLES_FILE = "styles.csv"
_ENCODER_WIDTHS: dict[Family, dict[str, int]] = {
    Family.SD1: {"text_encoder": 768},
    Family.SD2: {"text_encoder": 1024},
    Family.SDXL: {"text_encoder": 768, "text_encoder_2": 1280},
    Family.SDXL_REFINER: {"text_encoder_2": 1280},
}


def samplers() -> list[dict[str, Any]]:
    """``[{name, aliases, options}]``; option values as strings (A1111's pydantic v1 gives "True")."""
    return [
        {"name": s.name, "aliases": list(s.aliases), "options": {k: str(v) for k, v in s.options.items()}}
        for s in SAMPLER_INFO.values()
    ]


def schedulers() -> list[dict[str, Any]]:
    """``[{name, label, aliases, default_rho, need_inner_model}]`` (aliases null when none, as A1111)."""
    return [
        {
            "name": s.name,
            "label": s.label,
            "aliases": list(s.aliases) or None,
            "default_rho": s.default_rho,
            "need_inner_model": s.need_inner_model,
        }
        for s in SCHEDULER_INFO.values()
    ]


def upscalers(infos: Sequence[UpscalerInfo]) -> list[dict[str, Any]]:
    """``[{name, model_name, model_path, model_url, scale}]`` (``model_name``: the folder's family)."""
    return [
        {"name": u.name, "model_name": u.model_name, "model_path": u.model_path, "model_url": u.model_url,
         "scale": u.scale}
        for u in infos
    ]  # fmt: skip


def latent_upscale_modes() -> list[dict[str, str]]:
    return [{"name": name} for name in LATENT_UPSCALE_MODES]


def _shorthash(manager: ModelManager, info: CheckpointInfo) -> tuple[str | None, str | None]:
    entry = manager.entry(info, compute_hash=False)
    return entry.shorthash, entry.sha256


def catalog(manager: ModelManager, settings: Settings, upscalers: Sequence[str] = ()) -> ServerCatalog:
    """Checkpoints (with their exact aliases), VAE names, styles, limits and (for scripts) the upscaler
    names, for request conversion."""
    refs = []
    for info in manager.checkpoints():
        short, _ = _shorthash(manager, info)
        refs.append(CheckpointRef(info.name, info.title(short), info.aliases(short)))
    return ServerCatalog(
        checkpoints=tuple(refs),
        vaes=tuple(v.name for v in manager.vaes()),
        styles=load_styles(settings.data_dir / STYLES_FILE),
        max_side=settings.max_side,
        upscalers=tuple(upscalers),
    )


def sd_models(manager: ModelManager) -> list[dict[str, Any]]:
    """``[{title, model_name, hash, sha256, filename, config}]``; hashes null until computed. A file that
    cannot be used also has ``error`` (one line naming the file and the reason); A1111 lists it silently."""
    out = []
    for info in manager.checkpoints():
        short, sha256 = _shorthash(manager, info)
        yaml = info.path.with_suffix(".yaml")
        entry: dict[str, Any] = {
            "title": info.title(short),
            "model_name": info.model_name,
            "hash": short,
            "sha256": sha256,
            "filename": str(info.path.resolve()),
            "config": str(yaml.resolve()) if yaml.is_file() else None,
        }
        problem = manager.problem(info)
        out.append(entry if problem is None else {**entry, "error": problem})
    return out


def sd_vaes(manager: ModelManager) -> list[dict[str, str]]:
    return [{"model_name": v.name, "filename": str(v.path.resolve())} for v in manager.vaes()]


def current_checkpoint(manager: ModelManager, stored: str | None) -> CheckpointInfo | None:
    """The checkpoint jobs use by default: the stored option, else the first one (None when there is none)."""
    try:
        return manager.find(stored) if stored else manager.default_checkpoint()
    except ModelNotFoundError:
        return None


def loras(manager: ModelManager) -> list[dict[str, Any]]:
    """``[{name, alias, path, metadata}]`` from the manager's LoRA library (``Lora/`` and ``LyCORIS/``)."""
    return [
        {"name": i.name, "alias": i.alias, "path": str(i.path.resolve()), "metadata": metadata_json(i)}
        for i in manager.lora_library.infos()
    ]


def embeddings(manager: ModelManager, settings: Settings, stored: str | None) -> dict[str, Any]:
    """``{loaded: {name: {step, sd_checkpoint, sd_checkpoint_name, shape, vectors}}, skipped: {…}}`` for the
    checkpoint jobs use by default (its text-encoder widths decide what is usable)."""
    info = current_checkpoint(manager, stored)
    if info is None:
        return {"loaded": {}, "skipped": {}}
    try:
        family = loader.identify_path(info.path).family
    except (ModelFileError, ValueError, OSError):
        return {"loaded": {}, "skipped": {}}
    folder = settings.resolved_embeddings_dir()
    database = EmbeddingDatabase.load(folder, _ENCODER_WIDTHS[family], hash_cache=manager.hashes)
    return database.listing().to_api()


def prompt_styles(settings: Settings) -> list[dict[str, str]]:
    styles = load_styles(settings.data_dir / STYLES_FILE)
    return [
        {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles.values()
    ]


def memory() -> dict[str, Any]:
    """A1111's ``/memory``: this process's RAM use (psutil) and CUDA statistics or ``{error}``."""
    process = psutil.Process(os.getpid())
    rss = process.memory_info().rss
    total = psutil.virtual_memory().total
    ram = {"free": total - rss, "used": rss, "total": total}
    if not torch.cuda.is_available():
        return {"ram": ram, "cuda": {"error": "unavailable"}}
    free, cuda_total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()

    def pair(name: str) -> dict[str, int]:
        return {
            "current": int(stats.get(f"{name}.all.current", 0)),
            "peak": int(stats.get(f"{name}.all.peak", 0)),
        }

    cuda = {
        "system": {"free": free, "used": cuda_total - free, "total": cuda_total},
        "active": pair("active_bytes"),
        "allocated": pair("allocated_bytes"),
        "reserved": pair("reserved_bytes"),
        "inactive": pair("inactive_split_bytes"),
        "events": {"retries": int(stats.get("num_alloc_retries", 0)), "oom": int(stats.get("num_ooms", 0))},
    }
    return {"ram": ram, "cuda": cuda}


def cmd_flags(settings: Settings) -> dict[str, Any]:
    """A1111's argparse names for what this server was started with. Never a secret: the credential flags
    (``api_auth``, ``gradio_auth``) are left out, and no environment or tokens appear (A1111 #17411)."""
    models = settings.models_dir.resolve()
    return {
        "api": True,
        "nowebui": not settings.ui,  # the web UI is served at / unless --no-ui
        "data_dir": str(settings.data_dir.resolve()),
        "models_dir": str(models),
        "ckpt_dir": str(models / "Stable-diffusion"),
        "vae_dir": str(models / "VAE"),
        "lora_dir": str(models / "Lora"),
        "hypernetwork_dir": str(models / "hypernetworks"),
        "embeddings_dir": str(settings.resolved_embeddings_dir().resolve()),
        "styles_file": [str((settings.data_dir / STYLES_FILE).resolve())],
        "use_cpu": ["all"] if settings.device == "cpu" else [],
        "no_half": settings.dtype == "float32",
        "cors_allow_origins": ",".join(settings.cors_allow_origins) or None,
        "api_server_stop": False,
        "enable_insecure_extension_access": False,
        "allow_code": False,
        "disable_safe_unpickle": False,
    }


def scripts() -> dict[str, list[str]]:
    """``/sdapi/v1/scripts``: the selectable scripts' titles, lowercased as A1111 names them, per tab."""
    return {tab: [s["name"] for s in script_info(tab == "img2img")] for tab in ("txt2img", "img2img")}


def option_view(values: Mapping[str, Any], manager: ModelManager) -> dict[str, Any]:
    """GET ``/options``: every option, with ``sd_model_checkpoint`` as the current checkpoint's title and
    ``sd_checkpoint_hash`` its sha256 once known."""
    out = dict(values)
    stored = values.get("sd_model_checkpoint")
    info = current_checkpoint(manager, stored if isinstance(stored, str) else None)
    if info is not None:
        short, sha256 = _shorthash(manager, info)
        out["sd_model_checkpoint"] = info.title(short)
        out["sd_checkpoint_hash"] = sha256 or ""
    return out
