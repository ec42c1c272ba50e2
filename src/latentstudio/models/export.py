"""diffusers / transformers layout → the original single-file (LDM / A1111) key layout.

The inverse of :mod:`latentstudio.models.convert`: training saves checkpoints that A1111, ComfyUI and our
own loader read, and tests build tiny checkpoints in the exact original layout. Tensors are not copied.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from latentstudio.models.convert import canonical_clip_keys
from latentstudio.models.families import UNET_PREFIX

StateDict = dict[str, torch.Tensor]

_RESNET = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
)
_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}


def _rename(name: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def unet_key_to_ldm(key: str, layers_per_block: int, attn_up: frozenset[int]) -> str:
    """One ``UNet2DConditionModel`` key → its ``model.diffusion_model.`` name (without the prefix).

    ``attn_up`` holds the indices of up blocks that have attentions (their upsampler is sub-module 2).
    """
    for old, new in _UNET_TOP.items():
        if key.startswith(old):
            return new + key[len(old) :]
    parts = key.split(".")
    if parts[0] == "mid_block":
        index = {"resnets": {"0": 0, "1": 2}, "attentions": {"0": 1}}[parts[1]][parts[2]]
        rest = ".".join(parts[3:])
        return f"middle_block.{index}." + (_rename(rest, _RESNET) if parts[1] == "resnets" else rest)
    block, kind, rest = int(parts[1]), parts[2], ".".join(parts[4:])
    j = int(parts[3])
    if parts[0] == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{(block + 1) * (layers_per_block + 1)}.0.op.{rest.removeprefix('conv.')}"
        i = 1 + block * (layers_per_block + 1) + j
    else:
        if kind == "upsamplers":
            sub = 2 if block in attn_up else 1
            return f"output_blocks.{block * (layers_per_block + 1) + layers_per_block}.{sub}.{rest}"
        i = block * (layers_per_block + 1) + j
    prefix = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
    if kind == "resnets":
        return f"{prefix}.{i}.0.{_rename(rest, _RESNET)}"
    return f"{prefix}.{i}.1.{rest}"


def unet_to_ldm(state: Mapping[str, torch.Tensor], layers_per_block: int) -> StateDict:
    """``UNet2DConditionModel.state_dict()`` → ``model.diffusion_model.*`` keys."""
    attn_up = frozenset(
        int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k
    )
    return {UNET_PREFIX + unet_key_to_ldm(k, layers_per_block, attn_up): v for k, v in state.items()}


_VAE_ATTN = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def vae_key_to_ldm(key: str, n_levels: int) -> str:
    """One ``AutoencoderKL`` key → its LDM name (``encoder.down.0.block.0.…``), without prefix."""
    side, rest = key.split(".", 1)
    if rest.startswith("conv_norm_out."):
        return f"{side}.norm_out.{rest[len('conv_norm_out.') :]}"
    if not rest.startswith(("down_blocks.", "up_blocks.", "mid_block.")):
        return key
    parts = rest.split(".")
    if parts[0] == "mid_block":
        tail = ".".join(parts[3:])
        if parts[1] == "resnets":
            return f"{side}.mid.block_{int(parts[2]) + 1}.{tail.replace('conv_shortcut.', 'nin_shortcut.')}"
        return f"{side}.mid.attn_1.{_rename(tail, _VAE_ATTN)}"
    level = int(parts[1]) if parts[0] == "down_blocks" else n_levels - 1 - int(parts[1])
    name = "down" if parts[0] == "down_blocks" else "up"
    if parts[2] in ("downsamplers", "upsamplers"):
        return f"{side}.{name}.{level}.{name}sample.{'.'.join(parts[4:])}"
    tail = ".".join(parts[4:]).replace("conv_shortcut.", "nin_shortcut.")
    return f"{side}.{name}.{level}.block.{parts[3]}.{tail}"


def vae_to_ldm(
    state: Mapping[str, torch.Tensor], n_levels: int, prefix: str = "first_stage_model."
) -> StateDict:
    """``AutoencoderKL.state_dict()`` → LDM keys; attention projections become 1×1 convs as originally."""
    out: StateDict = {}
    for key, value in state.items():
        ldm = vae_key_to_ldm(key, n_levels)
        is_linear_attn = ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2
        out[prefix + ldm] = value[:, :, None, None] if is_linear_attn else value
    return out


def clip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """transformers ``CLIPTextModel`` → the same keys under ``prefix`` (SD1, SDXL's CLIP-L)."""
    return {prefix + k: v for k, v in canonical_clip_keys(state).items() if not k.endswith("position_ids")}


_TO_OPEN_CLIP = (
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
    ("self_attn.out_proj.", "attn.out_proj."),
)


def open_clip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """transformers CLIP text model → OpenCLIP text-tower keys under ``prefix`` (SD2, SDXL's bigG).

    q/k/v are fused into ``in_proj_*``; a projection Linear becomes ``text_projection`` (transposed).
    """
    fixed = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    out: StateDict = {}
    state = canonical_clip_keys(state)
    layer_prefix = "text_model.encoder.layers."
    for key, value in state.items():
        if key in fixed:
            out[prefix + fixed[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.t()
        elif key.startswith(layer_prefix) and ".self_attn.q_proj." in key:
            layer, kind = key[len(layer_prefix) :].split(".", 1)[0], key.rsplit(".", 1)[1]
            qkv = [state[key.replace(".q_proj.", f".{n}_proj.")] for n in ("q", "k", "v")]
            out[prefix + f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(qkv)
        elif key.startswith(layer_prefix) and not (".k_proj." in key or ".v_proj." in key):
            layer, name = key[len(layer_prefix) :].split(".", 1)
            out[prefix + f"transformer.resblocks.{layer}.{_rename(name, _TO_OPEN_CLIP)}"] = value
    return out
