"""Random-weight models in the exact original single-file layout, at any width.

Used for test fixtures (tiny widths, built at test time instead of binary files in git), benchmarks
(full-size SD1.5 with random weights) and as the starting point of training from scratch. Components are
real diffusers / transformers classes; :mod:`latentstudio.models.export` writes them in the LDM layout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from latentstudio.models import arch, export
from latentstudio.models.families import Family

Config = dict[str, Any]


@dataclass(frozen=True)
class ModelSpec:
    """diffusers/transformers configs of one model: ``text`` is keyed by component name."""

    family: Family
    unet: Config
    vae: Config
    text: Mapping[str, Config] = field(default_factory=dict)


def _tiny_text(hidden: int, layers: int, act: str, projection: int | None = None) -> Config:
    config: Config = {
        "vocab_size": 49408, "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": max(hidden // 64, 1), "max_position_embeddings": 77, "hidden_act": act,
        "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407,
    }  # fmt: skip
    if projection is not None:
        config["projection_dim"] = projection
    return config


def tiny_spec(family: Family, *, inpainting: bool = False, width: int = 64) -> ModelSpec:
    """A tiny model with the family's structure (block types, linear vs conv projections, encoders).

    Widths are multiples of 64 so the family's head rules (8 heads for SD1, 64-wide heads otherwise)
    hold without metadata, exactly as for a full-size file.
    """
    w = width
    vae = arch.shipped_config(family, "vae")
    # Four levels as in every SD VAE (8× downscale), at the narrowest width GroupNorm(32) allows.
    vae.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1)
    vae.update(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    unet = arch.shipped_config(family, "unet")
    unet.update(in_channels=9 if inpainting else 4, sample_size=8, layers_per_block=2)
    if family in (Family.SD1, Family.SD2):
        text_name = "text_encoder"
        text = {text_name: _tiny_text(w, 3, "quick_gelu" if family is Family.SD1 else "gelu")}
        unet.update(
            block_out_channels=[w, 2 * w, 2 * w], cross_attention_dim=w,
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            attention_head_dim=8 if family is Family.SD1 else [1, 2, 2],
        )  # fmt: skip
        return ModelSpec(family, unet, vae, text)
    projection, time_dim = w // 2, 8
    text = {"text_encoder_2": _tiny_text(w, 3, "gelu", projection)}
    if family is Family.SDXL:
        text = {"text_encoder": _tiny_text(w, 3, "quick_gelu"), **text}
    time_ids = 6 if family is Family.SDXL else 5
    unet.update(
        block_out_channels=[w, 2 * w], cross_attention_dim=w * len(text),
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=[1, 2],
        transformer_layers_per_block=[1, 2], addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=projection + time_ids * time_dim,
    )  # fmt: skip
    return ModelSpec(family, unet, vae, text)


def full_spec(family: Family) -> ModelSpec:
    """The full-size architecture of ``family`` (for example SD1.5: 860M-parameter UNet)."""
    names = [
        n for n in ("text_encoder", "text_encoder_2") if n in {s.name for s in arch.TEXT_ENCODERS[family]}
    ]
    return ModelSpec(
        family,
        arch.shipped_config(family, "unet"),
        arch.shipped_config(family, "vae"),
        {n: arch.shipped_config(family, n) for n in names},
    )


def _perturb(module: torch.nn.Module, generator: torch.Generator, scale: float) -> None:
    """Add noise to every parameter so that no two weights are equal (zero-initialised biases and unit
    norm weights would hide swapped keys in layout tests)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)


def build_components(
    spec: ModelSpec, seed: int = 0, *, noise: float = 0.02
) -> tuple[UNet2DConditionModel, AutoencoderKL, dict[str, CLIPTextModel | CLIPTextModelWithProjection]]:
    """Instantiate the spec with seeded random weights (fp32, CPU, eval mode)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel.from_config(spec.unet)
    vae = AutoencoderKL.from_config(spec.vae)
    encoders: dict[str, CLIPTextModel | CLIPTextModelWithProjection] = {}
    for name, config in spec.text.items():
        cls = CLIPTextModelWithProjection if "projection_dim" in config else CLIPTextModel
        clean = {k: v for k, v in config.items() if not k.startswith("_")}
        encoders[name] = cls(CLIPTextConfig(**clean))
    for module in (unet, vae, *encoders.values()):
        if noise:
            _perturb(module, generator, noise)
        module.eval()
    return unet, vae, encoders


def single_file_state(
    family: Family,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    encoders: Mapping[str, torch.nn.Module],
) -> dict[str, torch.Tensor]:
    """All components in the original single-file layout, plus the ``alphas_cumprod`` buffer."""
    state = export.unet_to_ldm(unet.state_dict(), int(unet.config["layers_per_block"]))
    state.update(export.vae_to_ldm(vae.state_dict(), len(vae.config["block_out_channels"])))
    for spec in arch.TEXT_ENCODERS[family]:
        encoder_state = encoders[spec.name].state_dict()
        if spec.open_clip:
            state.update(export.open_clip_to_ldm(encoder_state, spec.prefix))
            state[spec.prefix + "logit_scale"] = torch.tensor(math.log(1 / 0.07))
            if not spec.with_projection:  # SD2 files carry OpenCLIP's projection although SD never uses it
                width = state[spec.prefix + "ln_final.weight"].shape[0]
                state[spec.prefix + "text_projection"] = torch.eye(width)
        else:
            state.update(export.clip_to_ldm(encoder_state, spec.prefix))
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    state["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    return state


def random_single_file_state(
    spec: ModelSpec, seed: int = 0, *, dtype: torch.dtype = torch.float16, scale: float = 0.02
) -> dict[str, torch.Tensor]:
    """The single-file state of ``spec`` filled with seeded noise, without running any module init.

    Modules are built on the meta device only to learn the key layout and shapes, so a full-size SD1.5
    state costs its size in memory once (2.1 GB in fp16) and a few seconds.
    """
    with torch.device("meta"):
        unet, vae, encoders = build_components(spec, seed, noise=0.0)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, meta in single_file_state(spec.family, unet, vae, encoders).items():
        if key == "alphas_cumprod":
            state[key] = meta  # built on the meta device too: recompute below
            continue
        state[key] = (torch.randn(meta.shape, generator=generator) * scale).to(dtype)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    state["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    return state


def write_checkpoint(
    path: Path,
    state: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save ``state`` as ``.safetensors`` (contiguous copies, optional cast of floating tensors)."""
    out = {}
    for key, value in state.items():
        tensor = value.detach()
        if dtype is not None and tensor.is_floating_point() and key != "alphas_cumprod":
            tensor = tensor.to(dtype)
        out[key] = tensor.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata=dict(metadata) if metadata else None)
    return path
