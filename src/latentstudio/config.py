"""Settings in one typed place, built once at start-up (never at import).

Every field can be set from the environment with the ``LATENTSTUDIO_`` prefix
(``LATENTSTUDIO_MODELS_DIR=/srv/a1111/models``) or passed explicitly by the CLI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# The hard limits of one request: every door's schema and the one parameter builder
# (pipeline.params.GenerationParams.resolved) use these.
MAX_SIDE = 2048  # largest width, height or hires target side of a request (Settings.max_side may lower it)
MAX_STEPS = 150  # sampling steps of one pass
MAX_IMAGES = 64  # batch_size, n_iter (and their product) of one request; images of one extras job

if TYPE_CHECKING:  # torch is imported by the functions that need it: commands without models never load it
    import torch

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DtypeName = Literal["auto", "float32", "float16", "bfloat16"]

# Environment variables that make huggingface_hub / transformers / diffusers refuse network access.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DIFFUSERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}


class Settings(BaseSettings):
    """Directories, device and limits of one latentstudio process."""

    model_config = SettingsConfigDict(env_prefix="LATENTSTUDIO_", frozen=True, extra="forbid")

    models_dir: Path = Field(
        default=Path("models"),
        description="A1111-style models root: Stable-diffusion/, VAE/, Lora/ below it.",
    )
    embeddings_dir: Path | None = Field(
        default=None, description="Textual-inversion folder; default: <models_dir>/../embeddings."
    )
    lora_dir: Path | None = Field(
        default=None, description="LoRA folder (A1111 --lora-dir); default: <models_dir>/Lora."
    )
    data_dir: Path = Field(default=Path("data"), description="Job store, hash cache and settings.")
    device: DeviceName = "auto"
    dtype: DtypeName = "auto"
    safety_checker: Path | None = Field(
        default=None,
        description="Local StableDiffusionSafetyChecker folder (config.json + model.safetensors); setting it "
        "turns the NSFW filter on (off by default, as in A1111). Never downloaded.",
    )
    builtin_model: bool = Field(
        default=True, description="Offer the built-in shapes model when models_dir has no checkpoints."
    )
    checkpoints_in_ram: int = Field(
        default=2, ge=1, le=16, description="How many loaded checkpoints the model manager keeps."
    )
    # -- server (latentstudio serve) --
    ui: bool = Field(default=True, description="Serve the web UI at / (off: API only).")
    max_queue: int = Field(default=100, ge=1, le=100_000, description="Queued jobs before 429.")
    preview_every: int = Field(
        default=5, ge=0, le=1000, description="Step events carry a small preview every N steps (0: never)."
    )
    max_side: int = Field(
        default=MAX_SIDE,
        ge=64,
        le=MAX_SIDE,
        description="Largest width/height (hires target too) a request may ask.",
    )
    max_body_bytes: int = Field(default=50 * 1024 * 1024, ge=1024, description="Largest HTTP request body.")
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, le=89_478_485, description="Largest decoded input image (pixels)."
    )
    api_auth: SecretStr | None = Field(
        default=None, description="HTTP Basic credentials 'user:pass[,user2:pass2]' required on every route."
    )
    cors_allow_origins: tuple[str, ...] = Field(
        default=(), description="Origins allowed by CORS (none: no CORS headers at all)."
    )

    def resolved_lora_dirs(self) -> tuple[Path, ...]:
        """The LoRA folders: ``lora_dir`` (default ``<models_dir>/Lora``) and ``<models_dir>/LyCORIS``."""
        return (self.lora_dir or self.models_dir / "Lora", self.models_dir / "LyCORIS")

    def resolved_embeddings_dir(self) -> Path:
        """The embeddings folder: explicit, or ``embeddings/`` beside the models root (A1111 layout)."""
        return self.embeddings_dir or self.models_dir.parent / "embeddings"


def resolve_device(name: DeviceName) -> torch.device:
    """``auto`` → CUDA when available, else CPU; other names are taken as given."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: DtypeName, device: torch.device) -> torch.dtype:
    """``auto`` → fp16 on CUDA (bf16 where supported is a choice, not a default), fp32 elsewhere.

    fp32 on CPU: CPUs without bf16 instructions run bf16 about 40× slower than fp32.
    """
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def enforce_offline() -> None:
    """Make every Hugging Face library refuse network access for the rest of this process.

    Called by the CLI entry point and the model manager, never at import time. huggingface_hub reads the
    variable once, when it is imported: a process that has not imported it yet (the CLI, before any command
    runs) only needs the environment, and is not made to import it here.
    """
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value
    constants: Any = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported: it read the variable before we set it
        constants.HF_HUB_OFFLINE = True
