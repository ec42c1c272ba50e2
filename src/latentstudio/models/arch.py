"""Architecture configs: the shipped per-family JSON, with every width and depth read from the weights.

The shipped configs (``configs/<family>/<component>.json``, diffusers format) supply what weights cannot
tell (activation, attention head rule, VAE scaling factor, noise schedule). Widths, depths, channel counts
and block types come from tensor shapes, so a tiny checkpoint in the real key layout builds the right tiny
model. A safetensors metadata entry ``latentstudio.architecture`` (JSON ``{component: {field: value}}``)
overrides both, for models whose head counts break the family rule (the built-in model).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from latentstudio.models.arch_schema import check_architecture
from latentstudio.models.families import (
    REFINER_CLIP_G_PREFIX,
    SD1_TEXT_PREFIX,
    SD2_TEXT_PREFIX,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    UNET_PREFIX,
    Family,
    FamilyInfo,
    Shapes,
)
from latentstudio.models.files import ModelFileError

ARCH_METADATA_KEY = "latentstudio.architecture"
Config = dict[str, Any]


@dataclass(frozen=True)
class TextEncoderSpec:
    """Where one text encoder lives in a single-file checkpoint and how it is stored."""

    name: str  # "text_encoder" or "text_encoder_2" (diffusers component names)
    prefix: str  # key prefix in the original layout
    open_clip: bool  # OpenCLIP layout (resblocks, in_proj) vs transformers CLIP layout
    with_projection: bool  # CLIPTextModelWithProjection (SDXL's pooled output)


TEXT_ENCODERS: dict[Family, tuple[TextEncoderSpec, ...]] = {
    Family.SD1: (TextEncoderSpec("text_encoder", SD1_TEXT_PREFIX, False, False),),
    Family.SD2: (TextEncoderSpec("text_encoder", SD2_TEXT_PREFIX, True, False),),
    Family.SDXL: (
        TextEncoderSpec("text_encoder", SDXL_CLIP_L_PREFIX, False, False),
        TextEncoderSpec("text_encoder_2", SDXL_CLIP_G_PREFIX, True, True),
    ),
    Family.SDXL_REFINER: (TextEncoderSpec("text_encoder_2", REFINER_CLIP_G_PREFIX, True, True),),
}


def shipped_config(family: Family, component: str) -> Config:
    """The shipped full-size diffusers config of ``component`` for ``family`` (a fresh copy)."""
    text = resources.files("latentstudio.models").joinpath("configs", family.value, f"{component}.json")
    config: Config = json.loads(text.read_text(encoding="utf-8"))
    return config


def architecture_overrides(path: Path, metadata: Mapping[str, str]) -> dict[str, Config]:
    """The ``latentstudio.architecture`` metadata entry, validated to ``{component: {field: value}}``."""
    raw = metadata.get(ARCH_METADATA_KEY)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(path, f"metadata {ARCH_METADATA_KEY} is not valid JSON") from e
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ModelFileError(path, f"metadata {ARCH_METADATA_KEY} must map component names to objects")
    problem = check_architecture(value)
    if problem is not None:
        raise ModelFileError(path, f"metadata {ARCH_METADATA_KEY}: {problem}")
    return value


def _indices(shapes: Shapes, prefix: str) -> list[int]:
    """Sorted distinct integers ``i`` of keys ``<prefix><i>.…``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in shapes if (m := pattern.match(k))})


def _transformer_depth(shapes: Shapes, prefix: str) -> int:
    return len(_indices(shapes, prefix + "transformer_blocks."))


def unet_config(path: Path, shapes: Shapes, info: FamilyInfo, overrides: Config) -> Config:
    """diffusers ``UNet2DConditionModel`` config for the UNet under ``model.diffusion_model.``."""
    p = UNET_PREFIX
    config = shipped_config(info.family, "unet")
    model_channels, in_channels = shapes[p + "input_blocks.0.0.weight"][:2]
    levels: list[list[int]] = [[]]  # input-block indices of the res blocks of each resolution level
    for i in _indices(shapes, p + "input_blocks.")[1:]:
        if p + f"input_blocks.{i}.0.op.weight" in shapes:
            levels.append([])
        else:
            levels[-1].append(i)
    per_level = {len(level) for level in levels}
    if len(per_level) != 1:
        raise ModelFileError(path, f"unsupported UNet: uneven res blocks per level {sorted(per_level)}")
    channels = [shapes[p + f"input_blocks.{lv[0]}.0.out_layers.3.weight"][0] for lv in levels]
    depths = [_transformer_depth(shapes, p + f"input_blocks.{lv[0]}.1.") for lv in levels]
    attn = [d > 0 for d in depths]
    proj_in = next((s for k, s in shapes.items() if k.startswith(p) and k.endswith(".proj_in.weight")), None)
    config.update(
        in_channels=in_channels,
        out_channels=shapes[p + "out.2.weight"][0],
        block_out_channels=channels,
        layers_per_block=per_level.pop(),
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        transformer_layers_per_block=[max(d, 1) for d in depths],
        use_linear_projection=proj_in is not None and len(proj_in) == 2,
        sample_size=info.native_size // 8,
    )
    if model_channels != channels[0]:
        raise ModelFileError(
            path, f"unsupported UNet: conv_in width {model_channels} != first level {channels[0]}"
        )
    context = next(
        (s[1] for k, s in shapes.items() if k.startswith(p) and k.endswith("attn2.to_k.weight")), None
    )
    if context is not None:
        config["cross_attention_dim"] = context
    if info.family in (Family.SDXL, Family.SDXL_REFINER):
        _sdxl_embedding(shapes, config, info.family)
    if info.family is Family.SD2:
        config["upcast_attention"] = info.prediction.value == "v_prediction"
    if "attention_head_dim" not in overrides:
        config["attention_head_dim"] = _unet_heads(path, info.family, channels, config["attention_head_dim"])
    return {**config, **overrides}


def _unet_heads(path: Path, family: Family, channels: list[int], shipped: int | list[int]) -> int | list[int]:
    """SD1 uses 8 heads everywhere; SD2 and SDXL use 64-wide heads (diffusers' ``attention_head_dim``
    holds head counts)."""
    if family is Family.SD1:
        return shipped
    if any(c % 64 for c in channels):
        raise ModelFileError(
            path,
            f"cannot infer attention heads: widths {channels} are not multiples of 64 ({ARCH_METADATA_KEY})",
        )
    return [c // 64 for c in channels]


def _sdxl_embedding(shapes: Shapes, config: Config, family: Family) -> None:
    """Size/crop (+ aesthetic score on the refiner) conditioning: label_emb in = pooled + n_ids × 256."""
    adm_in = shapes[UNET_PREFIX + "label_emb.0.0.weight"][1]
    pooled = next(
        (s[1] for k, s in shapes.items() if k.endswith("model.text_projection")), adm_in - 6 * 256
    )  # text_projection is [width, projection]
    time_ids = 5 if family is Family.SDXL_REFINER else 6
    config["projection_class_embeddings_input_dim"] = adm_in
    config["addition_time_embed_dim"] = (adm_in - pooled) // time_ids


def vae_config(shapes: Shapes, info: FamilyInfo, prefix: str, overrides: Config) -> Config:
    """diffusers ``AutoencoderKL`` config for LDM-layout VAE keys under ``prefix``."""
    config = shipped_config(info.family, "vae")
    levels = _indices(shapes, prefix + "encoder.down.")
    channels = [shapes[prefix + f"encoder.down.{i}.block.0.conv2.weight"][0] for i in levels]
    config.update(
        in_channels=shapes[prefix + "encoder.conv_in.weight"][1],
        out_channels=shapes[prefix + "decoder.conv_out.weight"][0],
        latent_channels=shapes[prefix + "quant_conv.weight"][0] // 2,
        block_out_channels=channels,
        layers_per_block=len(_indices(shapes, prefix + "encoder.down.0.block.")),
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        sample_size=info.native_size,
    )
    return {**config, **overrides}


def text_encoder_config(
    path: Path, shapes: Shapes, family: Family, spec: TextEncoderSpec, overrides: Config
) -> Config:
    """transformers ``CLIPTextConfig`` fields for the encoder at ``spec.prefix`` (64-wide heads)."""
    config = shipped_config(family, spec.name)
    if spec.open_clip:
        p = spec.prefix
        vocab, hidden = shapes[p + "token_embedding.weight"]
        layers = len(_indices(shapes, p + "transformer.resblocks."))
        inter = shapes[p + "transformer.resblocks.0.mlp.c_fc.weight"][0]
        positions = shapes[p + "positional_embedding"][0]
        if spec.with_projection:
            config["projection_dim"] = shapes[p + "text_projection"][1]
    else:
        p = spec.prefix + "text_model."
        vocab, hidden = shapes[p + "embeddings.token_embedding.weight"]
        layers = len(_indices(shapes, p + "encoder.layers."))
        inter = shapes[p + "encoder.layers.0.mlp.fc1.weight"][0]
        positions = shapes[p + "embeddings.position_embedding.weight"][0]
    if hidden % 64 and "num_attention_heads" not in overrides:
        raise ModelFileError(
            path,
            f"cannot infer text-encoder heads: width {hidden} is not a multiple of 64 ({ARCH_METADATA_KEY})",
        )
    config.update(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=inter,
        max_position_embeddings=positions,
        num_attention_heads=max(hidden // 64, 1),
    )
    return {**config, **overrides}
