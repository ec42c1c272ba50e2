"""Original (LDM / A1111) key layout → diffusers / transformers layout, per component.

UNet and VAE use diffusers' own single-file conversion functions; the two CLIP layouts are simple enough
to map here (transformers CLIP: strip a prefix; OpenCLIP: rename and split the fused q/k/v projection).
Every converter checks that it consumed every key under its prefix, so an unusual file fails loudly
instead of loading with silently missing weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

from latentstudio.models.families import UNET_PREFIX
from latentstudio.models.files import ModelFileError

StateDict = dict[str, torch.Tensor]


def sub_state_dict(tensors: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """Entries under ``prefix``, with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def _check_complete(path: Path, what: str, source: int, converted: int) -> None:
    if source != converted:
        raise ModelFileError(
            path, f"unsupported {what} layout: converted {converted} of {source} tensors (unknown key names)"
        )


def unet_to_diffusers(path: Path, tensors: Mapping[str, torch.Tensor], config: dict[str, Any]) -> StateDict:
    """UNet weights under ``model.diffusion_model.`` → ``UNet2DConditionModel`` keys."""
    source = {k: v for k, v in tensors.items() if k.startswith(UNET_PREFIX)}
    converted: StateDict = convert_ldm_unet_checkpoint(source, config)
    _check_complete(path, "UNet", len(source), len(converted))
    return converted


def vae_to_diffusers(path: Path, tensors: Mapping[str, torch.Tensor], config: dict[str, Any]) -> StateDict:
    """LDM-layout VAE weights (``encoder.down.*``, already without any prefix) → ``AutoencoderKL`` keys.

    Loss-only weights that some VAE files carry (``loss.*``, the LPIPS/discriminator) are dropped.
    """
    source = {k: v for k, v in tensors.items() if not k.startswith("loss.")}
    converted: StateDict = convert_ldm_vae_checkpoint(source, config)
    _check_complete(path, "VAE", len(source), len(converted))
    return converted


def clip_to_transformers(path: Path, tensors: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """transformers-layout CLIP under ``prefix`` (``<prefix>text_model.*``) → canonical CLIP keys.

    ``position_ids`` is a buffer, not a weight, and is dropped.
    """
    out = {k: v for k, v in sub_state_dict(tensors, prefix).items() if not k.endswith("position_ids")}
    if not out:
        raise ModelFileError(path, f"no text-encoder weights under {prefix}")
    return out


def canonical_clip_keys(state: Mapping[str, torch.Tensor]) -> StateDict:
    """CLIP text-model keys with the ``text_model.`` level the file layout uses.

    transformers ≥ 5 dropped that level from ``CLIPTextModel`` (not from ``…WithProjection``).
    """
    return {
        k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v
        for k, v in state.items()
    }


def clip_keys_for(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> StateDict:
    """Canonical CLIP keys renamed to what ``module`` (this transformers version) expects."""
    expected = set(module.state_dict())
    if any(k.startswith("text_model.") for k in expected):
        return dict(state)
    return {k.removeprefix("text_model."): v for k, v in state.items()}


_OPEN_CLIP_RENAMES = (
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
    ("attn.out_proj.", "self_attn.out_proj."),
)


def open_clip_to_transformers(
    path: Path, tensors: Mapping[str, torch.Tensor], prefix: str, with_projection: bool
) -> StateDict:
    """OpenCLIP text tower under ``prefix`` (SD2, SDXL's bigG) → ``CLIPTextModel[WithProjection]`` keys.

    All layers are kept (SD2 and SDXL read the penultimate one); OpenCLIP's ``x @ text_projection``
    becomes a Linear with the transposed matrix.
    """
    source = sub_state_dict(tensors, prefix)
    out: StateDict = {}
    for key, value in source.items():
        if key in ("logit_scale", "attn_mask") or (key == "text_projection" and not with_projection):
            continue
        out.update(_open_clip_entry(path, key, value))
    return out


def _open_clip_entry(path: Path, key: str, value: torch.Tensor) -> StateDict:
    fixed = {
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
    }
    if key in fixed:
        return {fixed[key]: value}
    if key == "text_projection":
        return {"text_projection.weight": value.t()}
    if not key.startswith("transformer.resblocks."):
        raise ModelFileError(path, f"unsupported OpenCLIP key {key!r}")
    rest = key[len("transformer.resblocks.") :]
    layer, name = rest.split(".", 1)
    base = f"text_model.encoder.layers.{layer}."
    if name.startswith("attn.in_proj_"):
        kind = name.rsplit("_", 1)[1]  # weight | bias
        q, k, v = value.chunk(3, dim=0)
        return {base + f"self_attn.{n}_proj.{kind}": t for n, t in (("q", q), ("k", k), ("v", v))}
    for old, new in _OPEN_CLIP_RENAMES:
        if name.startswith(old):
            return {base + new + name[len(old) :]: value}
    raise ModelFileError(path, f"unsupported OpenCLIP key {key!r}")
