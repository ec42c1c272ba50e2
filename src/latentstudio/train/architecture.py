"""Architectures of the trainable models (diffusers / transformers configs) and their SD1 single-file export.

The exported file is an ordinary SD1 checkpoint in the original (LDM) layout; its full architecture goes in
the safetensors metadata entry ``latentstudio.architecture`` (JSON configs only, never code), which the
loader merges over what it reads from tensor shapes (:func:`latentstudio.models.arch.architecture_overrides`),
so the file alone builds the model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from latentstudio.models import arch
from latentstudio.models.families import Family
from latentstudio.models.synthetic import single_file_state, write_checkpoint
from latentstudio.train.config import ModelConfig, VaeConfig

Config = dict[str, Any]


def _clean(config: Mapping[str, Any]) -> Config:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def vae_architecture(config: VaeConfig) -> Config:
    """AutoencoderKL config: one level per channel entry (4 levels = 8× downscale, as every SD VAE)."""
    vae = arch.shipped_config(Family.SD1, "vae")
    levels = len(config.channels)
    vae.update(
        block_out_channels=list(config.channels), layers_per_block=1, latent_channels=config.latent_channels,
        down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
        norm_num_groups=config.norm_groups, sample_size=config.resolution,
    )  # fmt: skip
    return _clean(vae)


def unet_architecture(config: ModelConfig, latent_channels: int, latent_size: int) -> Config:
    """UNet2DConditionModel config in SD1 form (cross-attention levels from ``config.unet_attention``)."""
    if len(config.unet_attention) != len(config.unet_channels):
        raise ValueError("unet_attention needs one entry per unet_channels level")
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.unet_attention]
    unet = arch.shipped_config(Family.SD1, "unet")
    unet.update(
        in_channels=latent_channels, out_channels=latent_channels, sample_size=latent_size,
        block_out_channels=list(config.unet_channels), layers_per_block=1,
        down_block_types=down, up_block_types=[d.replace("Down", "Up") for d in reversed(down)],
        cross_attention_dim=config.text_width, attention_head_dim=config.heads,
        norm_num_groups=config.norm_groups,
    )  # fmt: skip
    return _clean(unet)


def text_architecture(config: ModelConfig) -> Config:
    """CLIPTextModel config with the real CLIP vocabulary (49 408 tokens, 77 positions) at a small width."""
    text = arch.shipped_config(Family.SD1, "text_encoder")
    text.update(
        vocab_size=49408, max_position_embeddings=77, hidden_size=config.text_width,
        intermediate_size=4 * config.text_width, num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads, projection_dim=config.text_width,
    )  # fmt: skip
    return _clean(text)


def build_text_encoder(config: Config) -> CLIPTextModel:
    """A randomly initialised CLIPTextModel from ``config`` (transformers' own init)."""
    return CLIPTextModel(CLIPTextConfig(**config))


def export_sd1(
    path: Path,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    *,
    dtype: torch.dtype = torch.float16,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the three components as one SD1 single-file checkpoint with the architecture in its metadata."""
    architecture = {
        "unet": _clean(dict(unet.config)),
        "vae": _clean(dict(vae.config)),
        "text_encoder": _clean(text_encoder.config.to_diff_dict()),
    }
    architecture["text_encoder"].pop("architectures", None)
    meta = {arch.ARCH_METADATA_KEY: json.dumps(architecture, sort_keys=True), **(metadata or {})}
    state = single_file_state(Family.SD1, unet, vae, {"text_encoder": text_encoder})
    return write_checkpoint(path, state, dtype=dtype, metadata=meta)
