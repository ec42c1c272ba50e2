"""Key layouts of ControlNet and T2I-Adapter files, how each maps to diffusers' classes, and the
architecture config (and family) their tensor shapes describe.

Layouts are told apart by key names (as sd-webui-controlnet's ``scripts/controlnet_model_guess.py``) after
removing a ``control_model.`` or ``adapter.`` prefix; every width and depth comes from tensor shapes, never
from file names. Each is renamed to the state-dict keys of diffusers' ``ControlNetModel`` or ``T2IAdapter``:

- ``cldm``: lllyasviel's ControlNet (input_hint_block, zero_convs, input_blocks, middle_block,
  middle_block_out, label_emb for SDXL), SD1/SD2 and SDXL full, mid and small (depths read per level);
  → ``ControlNetModel`` by diffusers' own cldm conversion, ``label_emb`` mapped to ``add_embedding``.
  ``cldm-diff``: the same plus a ``difference`` key; its weights are control − base UNet, so loading needs
  the checkpoint's UNet.
- ``diffusers``: ``ControlNetModel`` keys, as a single file or a folder (config.json + weights); as they are.
- ``tencent-full``: TencentARC's ``Adapter`` (sk=True, ksize 1, average-pool downsampling, 2 res blocks per
  level, which is what diffusers' FullAdapter / FullAdapterXL represent); its flat ``body.<k>`` becomes
  ``adapter.body.<k // 2>.resnets.<k % 2>``. ``tencent-light``: ``Adapter_light`` → LightAdapter, its
  ``body.<i>.body.<j>`` becoming ``adapter.body.<i>.resnets.<j>``.
- ``diffusers-adapter``: ``T2IAdapter`` keys (with or without ``adapter.``), a single file or a folder.

Family of a ControlNet, by structure first (so tiny test files come out right, as for checkpoints in
:mod:`latentstudio.models.families`): ``add_embedding`` (cldm ``label_emb``, SDXL's size conditioning) → SDXL;
otherwise linear attention projections → SD2, 1×1-conv projections → SD1. A cross-attention width that
names a full-size family (768 SD1, 1024 SD2, 2048 SDXL; controlnet_model_guess.py's rule) must agree.
Adapters: conv_in's input width is control channels × the pixel-unshuffle factor² (64 / 192 = 1 / 3 × 8² →
SD1, 256 / 768 = 1 / 3 × 16² → SDXL); light adapters are SD1. SD2 adapters cannot be told from SD1 ones.

Refused, each with one :class:`ModelFileError` line naming the file: Control-LoRA, ControlNet Union, style
adapters, IP-Adapter, ControlLLLite, SparseCtrl, v1 adapters (3×3 second convs, skep, conv downsampling) and
anything else unknown, truncated or inconsistent.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar, cast

from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

from latentstudio.models import arch
from latentstudio.models.families import Family
from latentstudio.models.files import ModelFileError

Config = dict[str, Any]
Shape = tuple[int, ...]
Shapes = Mapping[str, Shape]
V = TypeVar("V")

_BY_CONTEXT = {768: Family.SD1, 1024: Family.SD2, 2048: Family.SDXL}
_UNSHUFFLE = {64: (1, 8), 192: (3, 8), 256: (1, 16), 768: (3, 16)}  # conv_in input → (channels, factor)
_LABEL_EMB = {
    f"label_emb.0.{i}.{p}": f"add_embedding.linear_{n}.{p}"
    for i, n in ((0, 1), (2, 2))
    for p in ("weight", "bias")
}
_TENCENT_BLOCK = re.compile(r"body\.(\d+)\.(in_conv|block1|block2)\.(weight|bias)")
_TENCENT_LIGHT = re.compile(r"body\.(\d+)\.(in_conv|out_conv|body\.\d+\.block[12])\.(weight|bias)")
_V1_ADAPTER = (
    "unsupported v1 T2I-Adapter (3×3 second convs, skep shortcuts or conv downsampling): diffusers' "
    "FullAdapter represents only sk=True, ksize 1, average-pool adapters"
)
_REFUSED = tuple(
    (re.compile(pattern), what)
    for pattern, what in (
        (r"lora_controlnet$", "Control-LoRA files ('lora_controlnet')"),
        (r"control_add_embedding\.|task_embedding", "ControlNet Union files (control_add_embedding)"),
        (r"style_embedding$", "T2I style adapters ('style_embedding')"),
        (r".*\.motion_modules\.", "SparseCtrl files (motion_modules)"),
        (r"ip_adapter\.|image_proj\.", "IP-Adapter files"),
        (r".*lllite", "ControlLLLite files"),
    )
)
_MAX_LEVELS, _MAX_DEPTH = 8, 64


class ControlKind(StrEnum):
    """What a control file holds."""

    CONTROLNET = "controlnet"
    T2I_ADAPTER = "t2i_adapter"


def detect_layout(path: Path, entries: Mapping[str, V]) -> tuple[ControlKind, str, dict[str, V]]:
    """Kind, layout name (see the module doc) and the entries (tensors or shapes) without their prefix;
    :class:`ModelFileError` naming ``path`` for refused and unknown layouts."""
    sub = _strip(entries)
    for pattern, what in _REFUSED:
        if any(pattern.match(k) for k in sub):
            raise ModelFileError(path, f"{what} are not supported")
    if "input_hint_block.0.weight" in sub:
        return ControlKind.CONTROLNET, "cldm-diff" if "difference" in sub else "cldm", sub
    if "controlnet_cond_embedding.conv_in.weight" in sub:
        return ControlKind.CONTROLNET, "diffusers", sub
    if "body.0.resnets.0.block1.weight" in sub:
        return ControlKind.T2I_ADAPTER, "diffusers-adapter", sub
    if "conv_in.weight" in sub and "body.0.block1.weight" in sub:
        return ControlKind.T2I_ADAPTER, "tencent-full", sub
    if "body.0.body.0.block1.weight" in sub:
        return ControlKind.T2I_ADAPTER, "tencent-light", sub
    first = next(iter(entries), "")
    raise ModelFileError(path, f"not a ControlNet or T2I-Adapter: unknown key layout (key {first[:80]!r})")


def to_diffusers(path: Path, layout: str, sub: dict[str, V]) -> dict[str, V]:
    """Entries (tensors or shapes) of ``layout``, as :func:`detect_layout` returns them, renamed to the
    diffusers class's state-dict keys."""
    if layout in ("cldm", "cldm-diff"):
        return _cldm_to_diffusers(path, sub)
    if layout == "tencent-full":
        return _tencent_full(path, sub)
    if layout == "tencent-light":
        out: dict[str, V] = {}
        for key, value in sub.items():
            m = _TENCENT_LIGHT.fullmatch(key)
            if m is None:
                raise ModelFileError(path, f"unsupported light T2I-Adapter key {key[:80]!r}")
            out["adapter." + key.replace(f"body.{m[1]}.body.", f"body.{m[1]}.resnets.", 1)] = value
        return out
    if layout == "diffusers-adapter":
        return {"adapter." + k: v for k, v in sub.items()}
    return dict(sub)


def required_shape(path: Path, shapes: Shapes, key: str) -> Shape:
    """The shape of diffusers-layout ``key``; a file without it is incomplete (:class:`ModelFileError`)."""
    if key not in shapes:
        raise ModelFileError(path, f"incomplete file: no {key} (diffusers name)")
    return shapes[key]


def controlnet_config(path: Path, s: Shapes) -> tuple[Family, Config]:
    """``ControlNetModel`` config from diffusers-layout shapes; fields weights cannot tell (activation,
    norm groups, SD1's 8 heads) from the family's shipped UNet config."""
    family = _controlnet_family(path, s)
    levels = _indices(s, "down_blocks.")
    per_level = {len(_indices(s, f"down_blocks.{i}.resnets.")) for i in levels}
    if not 0 < len(levels) <= _MAX_LEVELS or len(per_level) != 1:
        raise ModelFileError(path, f"unsupported ControlNet: {len(levels)} levels of {per_level} blocks")
    channels = [required_shape(path, s, f"down_blocks.{i}.resnets.0.conv2.weight")[0] for i in levels]
    attn = [f"down_blocks.{i}.attentions.0.proj_in.weight" in s for i in levels]
    depths = [
        len(_indices(s, f"down_blocks.{i}.attentions.0.transformer_blocks.")) if a else 1
        for i, a in zip(levels, attn, strict=True)
    ]
    mid_attn = "mid_block.attentions.0.proj_in.weight" in s
    if mid_attn:  # diffusers ties the middle transformer's depth to the last level's
        mid_depth = len(_indices(s, "mid_block.attentions.0.transformer_blocks."))
        if attn[-1] and depths[-1] != mid_depth:
            raise ModelFileError(path, f"unsupported ControlNet: middle depth {mid_depth} ≠ last level's")
        depths[-1] = mid_depth
    hint_blocks = _indices(s, "controlnet_cond_embedding.blocks.")[1::2]  # the stride-2 convolutions
    hint_in = required_shape(path, s, "controlnet_cond_embedding.conv_in.weight")
    fields = inspect.signature(ControlNetModel.__init__).parameters
    config = {k: v for k, v in arch.shipped_config(family, "unet").items() if k in fields}
    config.update(
        in_channels=required_shape(path, s, "conv_in.weight")[1],
        block_out_channels=channels,
        layers_per_block=per_level.pop(),
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        transformer_layers_per_block=depths,
        mid_block_type="UNetMidBlock2DCrossAttn" if mid_attn else "UNetMidBlock2D",
        use_linear_projection=any(len(v) == 2 for k, v in s.items() if k.endswith(".proj_in.weight")),
        conditioning_channels=hint_in[1],
        conditioning_embedding_out_channels=[hint_in[0]]
        + [required_shape(path, s, f"controlnet_cond_embedding.blocks.{j}.weight")[0] for j in hint_blocks],
        global_pool_conditions=False,
    )
    if max([*depths, config["layers_per_block"]]) > _MAX_DEPTH:
        raise ModelFileError(path, f"unsupported ControlNet: depths {depths} exceed {_MAX_DEPTH}")
    context = next((v[1] for k, v in s.items() if k.endswith(".attn2.to_k.weight") and len(v) == 2), None)
    if context is not None:
        config["cross_attention_dim"] = context
    if family is not Family.SD1:  # 64-wide heads (diffusers' attention_head_dim holds head counts)
        if any(c % 64 for c in channels):
            raise ModelFileError(path, f"cannot infer attention heads: widths {channels} are not 64k")
        config["attention_head_dim"] = [c // 64 for c in channels]
    if family is Family.SDXL:
        config["projection_class_embeddings_input_dim"] = s["add_embedding.linear_1.weight"][1]
    return family, config


def adapter_config(path: Path, layout: str, s: Shapes) -> tuple[Family, Config, int]:
    """``T2IAdapter`` config, family and control channels from diffusers-layout adapter shapes."""
    light = "adapter.conv_in.weight" not in s
    levels = _indices(s, "adapter.body.")
    cin = required_shape(path, s, "adapter.body.0.in_conv.weight" if light else "adapter.conv_in.weight")[1]
    if cin not in _UNSHUFFLE or (light and _UNSHUFFLE[cin][1] != 8):
        raise ModelFileError(path, f"unsupported T2I-Adapter input width {cin} (64/192/256/768)")
    hint, factor = _UNSHUFFLE[cin]
    blocks = len(_indices(s, "adapter.body.0.resnets."))
    if not 1 < len(levels) <= _MAX_LEVELS or not 0 < blocks <= _MAX_DEPTH:
        raise ModelFileError(path, f"unsupported T2I-Adapter: {len(levels)} levels of {blocks} res blocks")
    if light:  # diffusers' LightAdapter repeats its last width in one more downsampling level
        outs = [required_shape(path, s, f"adapter.body.{i}.out_conv.weight")[0] for i in levels]
        if outs[-1] != outs[-2]:
            raise ModelFileError(path, f"unsupported light T2I-Adapter widths {outs}: the last two differ")
        channels, adapter_type = outs[:-1], "light_adapter"
    else:
        channels = [required_shape(path, s, f"adapter.body.{i}.resnets.0.block1.weight")[0] for i in levels]
        adapter_type = "full_adapter_xl" if factor == 16 else "full_adapter"
        if required_shape(path, s, "adapter.body.0.resnets.0.block2.weight")[2:] != (1, 1):
            raise ModelFileError(path, _V1_ADAPTER)
        if layout == "tencent-full" and factor == 8 and len(levels) > 4:  # Tencent: levels 1–3 go down
            raise ModelFileError(path, f"unsupported T2I-Adapter: {len(levels)} levels (Tencent's SD1 has 4)")
    config = {
        "in_channels": hint, "channels": channels, "num_res_blocks": blocks, "downscale_factor": factor,
        "adapter_type": adapter_type,
    }  # fmt: skip
    return (Family.SDXL if factor == 16 else Family.SD1), config, hint


def _strip(entries: Mapping[str, V]) -> dict[str, V]:
    """Keys under ``control_model.`` (other keys are a bundled base model), else without ``adapter.``."""
    prefix = "control_model."
    if any(k.startswith(prefix) for k in entries):
        sub = {k[len(prefix) :]: v for k, v in entries.items() if k.startswith(prefix)}
        if "difference" in entries:
            sub["difference"] = entries["difference"]
        return sub
    return {k.removeprefix("adapter."): v for k, v in entries.items()}


def _cldm_to_diffusers(path: Path, sub: dict[str, V]) -> dict[str, V]:
    """diffusers' own cldm conversion (which skips ``label_emb``: mapped here), checked to be complete."""
    source = {k: v for k, v in sub.items() if k != "difference" and not k.startswith("label_emb.")}
    out: dict[str, V] = {}
    for key in sub.keys() - source.keys() - {"difference"}:
        if key not in _LABEL_EMB:
            raise ModelFileError(path, f"unsupported cldm key {key[:80]!r}")
        out[_LABEL_EMB[key]] = sub[key]
    blocks = _indices(source, "input_blocks.")[1:]
    downs = [i for i in blocks if f"input_blocks.{i}.0.op.weight" in source]
    layers = downs[0] - 1 if downs else max(len(blocks), 1)
    converted: dict[str, V | None] = convert_controlnet_checkpoint(source, {"layers_per_block": layers})
    missing = sorted(k for k, v in converted.items() if v is None)
    if missing:
        raise ModelFileError(path, f"incomplete ControlNet: no weights for {missing[:3]} (diffusers names)")
    if len(converted) != len(source):
        raise ModelFileError(path, f"unknown cldm keys: converted {len(converted)} of {len(source)}")
    out.update(cast("dict[str, V]", converted))
    return out


def _tencent_full(path: Path, sub: dict[str, V]) -> dict[str, V]:
    """Tencent's flat ``body.<k>`` (block ``k % 2`` of level ``k // 2``) → ``adapter.body.<level>.…``."""
    if any("skep" in k or "down_opt" in k for k in sub):
        raise ModelFileError(path, _V1_ADAPTER)
    out: dict[str, V] = {}
    for key, value in sub.items():
        if key in ("conv_in.weight", "conv_in.bias"):
            out["adapter." + key] = value
            continue
        m = _TENCENT_BLOCK.fullmatch(key)
        if m is None:
            raise ModelFileError(path, f"unsupported T2I-Adapter key {key[:80]!r}")
        level, block = divmod(int(m[1]), 2)
        if m[2] == "in_conv" and block:
            raise ModelFileError(path, f"unsupported T2I-Adapter: {key} (expected 2 res blocks per level)")
        name = "in_conv" if m[2] == "in_conv" else f"resnets.{block}.{m[2]}"
        out[f"adapter.body.{level}.{name}.{m[3]}"] = value
    return out


def _indices(keys: Mapping[str, object], prefix: str) -> list[int]:
    """Sorted distinct integers ``i`` of keys ``<prefix><i>.…``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})


def _controlnet_family(path: Path, s: Shapes) -> Family:
    """SDXL by ``add_embedding``, else SD2 by linear / SD1 by 1×1-conv projections; see the module doc."""
    projections = {len(v) for k, v in s.items() if k.endswith(".proj_in.weight")}
    context = next((v[1] for k, v in s.items() if k.endswith(".attn2.to_k.weight") and len(v) == 2), None)
    if "add_embedding.linear_1.weight" in s:
        family = Family.SDXL
    elif projections in ({2}, {4}):
        family = Family.SD2 if projections == {2} else Family.SD1
    else:
        raise ModelFileError(path, "unknown ControlNet family: no (or mixed) attention projections")
    named = _BY_CONTEXT.get(context or 0)
    if named is not None and named is not family:
        raise ModelFileError(path, f"inconsistent ControlNet: {family} layers, {named} context {context}")
    return family
