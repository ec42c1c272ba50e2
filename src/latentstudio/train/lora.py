"""``train lora``: a kohya-format LoRA for an SD1 / SD2 / SDXL checkpoint from a folder of captioned images.

A :class:`latentstudio.train.loop.Task`: the loop's accelerate setup, gradient accumulation, checkpoints
and exact resume, samples and logs apply unchanged; the task's modules are only the adapters
(:mod:`~latentstudio.train.lora_network`), so a checkpoint holds the LoRA, not the base model.

The base model is frozen and loaded once, in the mixed-precision dtype (fp32 without it), and moved to the
accelerator on the first step, where every image's latent is encoded once by the fp32 VAE. The objective is
the base model's own (ε or v, from the checkpoint) with the sampler's parameterisation
(:mod:`~latentstudio.train.objectives`); SDXL gets its pooled text embedding and size/crop conditioning.
The sample images run the exported LoRA through the generation pipeline as a ``<lora:name:1>`` tag.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from latentstudio.models.families import Family
from latentstudio.models.hashes import legacy_hash
from latentstudio.models.loader import Components, load_checkpoint
from latentstudio.prompts.conditioning import encode_tokens, sdxl_time_ids
from latentstudio.samplers.schedules import model_sigmas_from_alphas
from latentstudio.train import lora_data
from latentstudio.train.config import LoopConfig
from latentstudio.train.loop import DataFn, MicroBatch, effective_precision
from latentstudio.train.lora_data import BatchOrder, Size
from latentstudio.train.lora_network import LoraNetwork, kohya_tensors, lora_targets, write_kohya_file
from latentstudio.train.objectives import noise_batch, weighted_mse

_BASE_VERSION = {Family.SD1: "sd_v1", Family.SD2: "sd_v2", Family.SDXL: "sdxl_base_v1-0"}
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_UNSAFE_NAME = re.compile(r"[^\w.+-]+")


@dataclass(frozen=True)
class LoraConfig(LoopConfig):
    """``train lora``. ``base``: checkpoint file (or diffusers folder); ``data``: the image folder.

    Buckets: sides multiples of ``bucket_step`` (64 as kohya; 8·2^levels at least for the UNet to divide
    evenly), between ``min_bucket`` and ``max_bucket`` (0: resolution/2 and 2·resolution); ``buckets``
    off centre-crops every image to the square. ``output_name``: the file stem and ``ss_output_name``
    (default: the data folder's name). ``sample_prompts`` (default: the first two distinct captions).
    """

    output_dir: str = "runs/lora"
    base: str = ""
    data: str = ""
    output_name: str = ""
    rank: int = 16
    alpha: float = 8.0
    train_text_encoder: bool = False
    resolution: int = 512
    buckets: bool = True
    bucket_step: int = 64
    min_bucket: int = 0
    max_bucket: int = 0
    caption_extension: str = ".txt"
    min_snr_gamma: float = 0.0
    noise_offset: float = 0.0
    sample_prompts: tuple[str, ...] = ()
    sample_steps: int = 20
    lr: float = 1e-4
    warmup: int = 0
    steps: int = 1000
    batch_size: int = 1
    ema_decay: float = 0.0
    checkpoint_every: int = 250
    sample_every: int = 250

    def bucket_range(self) -> tuple[int, int]:
        """(min side, max side) of the buckets."""
        return (self.min_bucket or self.resolution // 2, self.max_bucket or self.resolution * 2)

    def check(self) -> None:
        """Raises ValueError naming the first setting out of range."""
        low, high = self.bucket_range()
        if self.bucket_step < 8 or self.bucket_step % 8:
            raise ValueError(f"bucket_step: {self.bucket_step} is not a positive multiple of 8")
        if self.resolution < self.bucket_step or self.resolution % 8:
            raise ValueError(f"resolution: {self.resolution} must be a multiple of 8 and ≥ bucket_step")
        if not self.bucket_step <= low <= self.resolution <= high:
            raise ValueError(f"buckets: need bucket_step ≤ min ({low}) ≤ resolution ≤ max ({high})")
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"rank ({self.rank}) must be ≥ 1 and alpha ({self.alpha}) > 0")


@dataclass(frozen=True)
class _Cached:
    """Per picture: the latent ``[C, h, w]`` (CPU, fp32) and SDXL's ``time_ids`` ``[6]``."""

    latents: tuple[torch.Tensor, ...]
    time_ids: tuple[torch.Tensor, ...]


def text_condition(
    c: Components, captions: list[str], time_ids: torch.Tensor
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Context ``[B, 77, D]`` of ``captions`` (both encoders' hidden states for SDXL) and the UNet's extra
    arguments (SDXL: the pooled embedding and ``time_ids [B, 6]``)."""
    states, pooled = [], None
    for name in c.text_encoders:
        tokens = c.tokenizers[name](
            captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        )
        hidden, pool = encode_tokens(c, name, tokens.input_ids)
        states.append(hidden)
        pooled = pool if pool is not None else pooled
    context = torch.cat(states, dim=-1)
    if c.info.family is not Family.SDXL:
        return context, {}
    assert pooled is not None
    extra = {"text_embeds": pooled, "time_ids": time_ids.to(c.device, pooled.dtype)}
    return context, {"added_cond_kwargs": extra}


class LoraTask:
    """LoRA training on a frozen base model (see the module docstring)."""

    def __init__(self, config: LoraConfig) -> None:
        config.check()
        self.config = config
        self.data: DataFn | None = None  # cached latents, nothing to make ahead
        self.started_at = time.time()
        self.dataset = lora_data.scan_folder(Path(config.data), config.caption_extension)
        # of the frozen base model: fp32 without a GPU, whatever the config asks (effective_precision)
        self.dtype = _DTYPES.get(effective_precision(config.mixed_precision), torch.float32)
        self.components = load_checkpoint(Path(config.base), device=torch.device("cpu"), dtype=self.dtype)
        targets = lora_targets(self.components, text=config.train_text_encoder)
        self.network = LoraNetwork(targets, config.rank, config.alpha, config.seed)
        self.modules = self.network.modules
        self.buckets = [self._bucket(p.size) for p in self.dataset.pictures]
        self.order = BatchOrder(
            self.buckets, [p.repeats for p in self.dataset.pictures], config.batch_size, config.seed
        )
        self.sigmas = model_sigmas_from_alphas(self.components.alphas_cumprod)
        self.name = config.output_name or _UNSAFE_NAME.sub("_", Path(config.data).resolve().name) or "lora"
        self._cached: _Cached | None = None

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the data scan warned about (images without captions, ignored folders)."""
        return self.dataset.warnings

    def _bucket(self, size: Size) -> Size:
        c = self.config
        if not c.buckets:
            return (c.resolution, c.resolution)
        return lora_data.nearest_bucket(
            size, lora_data.bucket_sizes(c.resolution, c.bucket_step, *c.bucket_range())
        )

    def _prepare(self, device: torch.device) -> _Cached:
        """Once: encode every picture's latent (fp32 VAE on ``device``), then put the frozen base model on
        ``device`` in the mixed-precision dtype."""
        if self._cached is not None and self.components.device == device:
            return self._cached
        vae = self.components.vae.to(device).float()
        scale = float(vae.config.scaling_factor)
        latents, time_ids = [], []
        with torch.no_grad():
            for picture, bucket in zip(self.dataset.pictures, self.buckets, strict=True):
                pixels, crop = lora_data.load_pixels(picture, bucket)
                latent = vae.encode(pixels[None].to(device)).latent_dist.mean[0] * scale
                latents.append(latent.float().cpu())
                time_ids.append(sdxl_time_ids(picture.size[::-1], crop, bucket[::-1])[0])
        dtype = self.dtype
        for module in (self.components.unet, vae, *self.components.text_encoders.values()):
            module.to(device)
            if dtype != torch.float32:  # (diffusers warns on every dtype cast, even a no-op one)
                module.to(dtype)
        self.components = dataclasses.replace(self.components, device=device, dtype=dtype)
        self._cached = _Cached(tuple(latents), tuple(time_ids))
        return self._cached

    def loss(self, modules: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
        device = next(modules.parameters()).device
        cached = self._prepare(device)
        entries = self.order.batch(batch.first // batch.size)
        latents = torch.stack([cached.latents[i] for i in entries]).to(device)
        captions = [self.dataset.pictures[i].caption for i in entries]
        with torch.set_grad_enabled(self.config.train_text_encoder and torch.is_grad_enabled()):
            context, extra = text_condition(
                self.components, captions, torch.stack([cached.time_ids[i] for i in entries])
            )
        noised = noise_batch(
            latents,
            self.sigmas,
            self.components.info.prediction,
            batch.generator,
            min_snr_gamma=self.config.min_snr_gamma,
            noise_offset=self.config.noise_offset,
        )
        dtype = self.components.dtype
        out = self.components.unet(
            noised.x_in.to(dtype), noised.t, encoder_hidden_states=context.to(dtype), **extra
        ).sample
        return weighted_mse(out, noised)

    def _bucket_info(self) -> dict[str, object]:
        """kohya's ``ss_bucket_info``: each bucket's size and entries (repeats counted) and the mean
        aspect-ratio error of the images in their buckets."""
        data = self.dataset
        counts: dict[Size, int] = {}
        for bucket, picture in zip(self.buckets, data.pictures, strict=True):
            counts[bucket] = counts.get(bucket, 0) + picture.repeats
        errors = [
            abs(b[0] / b[1] - p.size[0] / p.size[1]) for b, p in zip(self.buckets, data.pictures, strict=True)
        ]
        return {
            "buckets": {
                str(i): {"resolution": list(b), "count": n} for i, (b, n) in enumerate(sorted(counts.items()))
            },
            "mean_img_ar_error": sum(errors) / len(errors),
        }

    def metadata(self, steps: int) -> dict[str, str]:
        """kohya sd-scripts' ``ss_*`` training metadata for a file after ``steps`` optimiser steps."""
        c, data, info = self.config, self.dataset, self.components.info
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        total_batch = c.batch_size * c.grad_accum * world
        epochs = math.ceil(steps * c.grad_accum * world / self.order.per_epoch)
        low, high = c.bucket_range()
        meta: dict[str, object] = {
            "ss_network_module": "networks.lora",
            "ss_network_dim": c.rank,
            "ss_network_alpha": float(c.alpha),
            "ss_base_model_version": _BASE_VERSION[info.family],
            "ss_v2": info.family is Family.SD2,
            "ss_sd_model_name": Path(c.base).name,
            "ss_sd_model_hash": legacy_hash(Path(c.base)) if Path(c.base).is_file() else "",
            "ss_output_name": self.name,
            "ss_training_started_at": self.started_at,
            "ss_training_finished_at": time.time(),
            "ss_resolution": str((c.resolution, c.resolution)),
            "ss_enable_bucket": c.buckets,
            "ss_min_bucket_reso": low,
            "ss_max_bucket_reso": high,
            "ss_bucket_no_upscale": False,
            "ss_bucket_info": json.dumps(self._bucket_info()),
            "ss_num_train_images": data.num_train_images,
            "ss_num_reg_images": 0,
            "ss_num_batches_per_epoch": self.order.per_epoch,
            "ss_num_epochs": epochs,
            "ss_epoch": epochs,
            "ss_steps": steps,
            "ss_max_train_steps": c.steps,
            "ss_batch_size_per_device": c.batch_size,
            "ss_total_batch_size": total_batch,
            "ss_gradient_accumulation_steps": c.grad_accum,
            "ss_learning_rate": c.lr,
            "ss_unet_lr": c.lr,
            "ss_text_encoder_lr": c.lr if c.train_text_encoder else 0.0,
            "ss_network_train_unet_only": not c.train_text_encoder,
            "ss_lr_warmup_steps": c.warmup,
            "ss_lr_scheduler": "constant_with_warmup" if c.warmup else "constant",
            "ss_optimizer": f"torch.optim.adamw.AdamW(weight_decay={c.weight_decay})",
            "ss_max_grad_norm": c.max_grad_norm,
            "ss_mixed_precision": c.mixed_precision,
            "ss_seed": c.seed,
            "ss_noise_offset": c.noise_offset,
            "ss_min_snr_gamma": c.min_snr_gamma,
            "ss_cache_latents": True,
            "ss_caption_dropout_rate": 0.0,
            "ss_shuffle_caption": False,
            "ss_keep_tokens": 0,
            "ss_flip_aug": False,
            "ss_color_aug": False,
            "ss_random_crop": False,
            "ss_dataset_dirs": json.dumps(data.dataset_dirs()),
            "ss_tag_frequency": json.dumps(data.tag_frequency()),
            "ss_training_comment": "latentstudio train lora",
        }
        return {k: str(v) for k, v in meta.items()}

    def write(self, modules: torch.nn.Module, path: Path, steps: int) -> Path:
        """The LoRA of ``modules`` as a kohya fp16 safetensors file with its metadata."""
        return write_kohya_file(path, kohya_tensors(modules), self.metadata(steps))

    def export(self, modules: torch.nn.ModuleDict, folder: Path) -> None:
        """``<output_name>.safetensors`` (kohya keys, fp16, ``ss_*`` metadata) in ``folder``."""
        self.write(modules, folder / f"{self.name}.safetensors", self.config.steps)

    def sample_prompts(self) -> tuple[str, ...]:
        """The configured sample prompts, or the first two distinct captions of the data."""
        if self.config.sample_prompts:
            return self.config.sample_prompts
        captions = dict.fromkeys(p.caption for p in self.dataset.pictures)
        return tuple(captions)[:2]

    def samples(self, modules: torch.nn.ModuleDict, path: Path) -> None:
        """One image per sample prompt through the generation pipeline with ``<lora:name:1>`` (the adapters'
        hooks are off: the file is applied as any LoRA a user would load)."""
        from latentstudio.models.hashes import HashCache
        from latentstudio.models.lora import LoraLibrary, LoraNetworks
        from latentstudio.pipeline.params import GenerationParams
        from latentstudio.pipeline.run import ModelIdentity, run

        size = self.config.resolution
        with tempfile.TemporaryDirectory() as tmp, self.network.disabled():
            folder = Path(tmp)
            self.write(modules, folder / f"{self.name}.safetensors", 0)
            networks = LoraNetworks(LoraLibrary([folder], HashCache(folder / "hashes.json")))
            images = []
            for prompt in self.sample_prompts():
                params = GenerationParams(
                    prompt=f"{prompt} <lora:{self.name}:1>",
                    steps=self.config.sample_steps,
                    seed=self.config.seed,
                    width=size,
                    height=size,
                )
                result = run(
                    params.resolved(),
                    self.components,
                    identity=ModelIdentity(Path(self.config.base).stem),
                    loras=networks,
                )
                images.append(result.images[0].convert("RGB"))
        grid = Image.new("RGB", (size * len(images), size))
        for i, image in enumerate(images):
            grid.paste(image, (i * size, 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
