"""Training configurations: frozen dataclasses, written as ``config.json`` next to every output."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

Objective = Literal["epsilon", "v_prediction"]
ControlNetworkKind = Literal["controlnet", "t2i-adapter"]
C = TypeVar("C", bound="LoopConfig")


@dataclass(frozen=True)
class LoopConfig:
    """What every mode shares: optimisation, EMA, checkpoints, samples, logging.

    ``batch_size`` is per process and per micro-step; the global batch is
    ``batch_size × grad_accum × processes``.
    """

    output_dir: str = "runs/train"
    seed: int = 0
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-4
    warmup: int = 100
    lr_steps: tuple[tuple[int, float], ...] = ()  # ((step, lr), …): from that step on, that lr
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999  # 0 disables EMA
    checkpoint_every: int = 500
    sample_every: int = 500
    log_every: int = 10
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    # processes making the next micro-batches' data ahead of the step (tasks with a data function); the
    # data is a pure function of the sample indices, so this changes speed only (for a GPU: a CPU core
    # renders fewer pictures a second than the GPU trains on)
    data_workers: int = 0

    def lr_at(self, step: int) -> float:
        """Learning rate of ``step``: linear warm-up to ``lr``, then piecewise constant by ``lr_steps``."""
        lr = self.lr
        for start, value in sorted(self.lr_steps):
            if step >= start:
                lr = value
        return lr * min(1.0, (step + 1) / max(self.warmup, 1))

    def save(self, path: Path) -> None:
        """Write the config as JSON (with its class name) to ``path``."""
        data = {"kind": type(self).__name__, **dataclasses.asdict(self)}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls: type[C], path: Path) -> C:
        """Read a config written by :meth:`save`; unknown fields are an error."""
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        kind = data.pop("kind", cls.__name__)
        if kind != cls.__name__:
            raise ValueError(f"{path}: a {kind} config, expected {cls.__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{path}: unknown config fields {unknown}")
        for f in dataclasses.fields(cls):  # JSON lists back to tuples
            if isinstance(data.get(f.name), list):
                data[f.name] = tuple(tuple(v) if isinstance(v, list) else v for v in data[f.name])
        return cls(**data)


@dataclass(frozen=True)
class VaeConfig(LoopConfig):
    """``train vae``: a small AutoencoderKL on the shapes set (8× downscale, 4 latent channels)."""

    output_dir: str = "runs/vae"
    resolution: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 64)
    # One group: GroupNorm removes each group's mean over space, so with many groups a flat picture's
    # colour survives only in the pattern across the channels of a group (per-channel groups erase it).
    norm_groups: int = 1
    latent_channels: int = 4
    kl_weight: float = 1e-5
    lr: float = 1e-3
    warmup: int = 20
    steps: int = 1500
    batch_size: int = 8
    ema_decay: float = 0.0


@dataclass(frozen=True)
class ModelConfig(LoopConfig):
    """``train model``: UNet + CLIP text encoder from scratch (or from ``init``) in the latent space of a
    trained VAE."""

    output_dir: str = "runs/model"
    vae: str = ""  # the VAE run's output dir (its final/ weights) or a .safetensors file
    resolution: int = 64
    unet_channels: tuple[int, ...] = (48, 96, 96)
    unet_attention: tuple[bool, ...] = (True, True, False)
    norm_groups: int = 16
    heads: int = 8
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    objective: Objective = "epsilon"
    min_snr_gamma: float = 5.0  # 0 disables min-SNR weighting
    noise_offset: float = 0.0
    caption_dropout: float = 0.1  # empty captions, for classifier-free guidance
    data_seed: int = 0
    # "templates": the five fixed caption templates (the built-in model's data); "grammar": phrasings drawn
    # from latentstudio.train.captions (the same pictures)
    captions: Literal["templates", "grammar"] = "templates"
    # a single-file checkpoint whose UNet and text encoder start the run (a fine-tune; the architecture
    # above must match it); its VAE too when ``vae`` is empty
    init: str = ""
    train_text_encoder: bool = True
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ControlConfig(LoopConfig):
    """``train controlnet`` / ``train t2i-adapter``. ``base``: the frozen checkpoint (file or diffusers
    folder); ``data``: a folder of images with same-name captions (kohya layout, ``N_name`` repeats), or
    ``shapes`` for the procedural shapes set of the built-in control model. Conditions: same-stem images in
    ``conditioning_data``, or ``preprocessor`` (one of ours, e.g. ``canny``, ``scribble_xdog``) run once per
    image and cached under ``output_dir/conditions``."""

    output_dir: str = "runs/controlnet"
    network: ControlNetworkKind = "controlnet"
    base: str = ""
    data: str = ""
    conditioning_data: str = ""
    preprocessor: str = ""
    processor_res: int = 512
    threshold_a: float | None = None
    threshold_b: float | None = None
    output_name: str = ""
    resolution: int = 512
    hint_channels: int = 3
    caption_extension: str = ".txt"
    caption_dropout: float = 0.5
    min_snr_gamma: float = 0.0
    noise_offset: float = 0.0
    gradient_checkpointing: bool = False
    sample_prompts: tuple[str, ...] = ()
    sample_steps: int = 20
    lr: float = 1e-5
    warmup: int = 0
    steps: int = 1000
    batch_size: int = 4
    ema_decay: float = 0.0
    checkpoint_every: int = 250
    sample_every: int = 250

    def check(self) -> None:
        """Raises ValueError naming the first setting out of range."""
        if self.network not in ("controlnet", "t2i-adapter"):
            raise ValueError(f"network: {self.network!r} is not one of controlnet, t2i-adapter")
        if not self.base:
            raise ValueError("base: a checkpoint is required")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"resolution: {self.resolution} is not a positive multiple of 8")
        if self.hint_channels not in (1, 3):
            raise ValueError(f"hint_channels: {self.hint_channels} is not 1 or 3")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout: {self.caption_dropout} is not in [0, 1]")
        if self.data != "shapes" and bool(self.conditioning_data) == bool(self.preprocessor):
            raise ValueError("give exactly one of conditioning_data (a folder) and preprocessor (a name)")
