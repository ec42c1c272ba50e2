"""Random-weight ControlNets and T2I-Adapters in their original file layouts, at any width.

Test fixtures built at test time (no binary files in git): a diffusers ``ControlNetModel`` exported to
lllyasviel's cldm layout (``control_model.`` prefix), TencentARC's ``Adapter`` / ``Adapter_light`` state dicts
built from those classes' constructor rules (independently of diffusers' ``T2IAdapter``), and shapes-only
safetensors files (sparse, all zeros) for full-size layouts whose data would cost gigabytes.
"""

from __future__ import annotations

import inspect
import json
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel, UNet2DConditionModel

from latentstudio.models import export
from latentstudio.models.families import Family
from latentstudio.models.synthetic import tiny_spec, write_checkpoint

Config = dict[str, Any]
Shape = tuple[int, ...]
V = TypeVar("V")
CLDM_PREFIX = "control_model."


def controlnet_config(
    unet_config: Mapping[str, Any],
    *,
    hint_channels: int = 3,
    embedding_channels: Sequence[int] = (16, 32, 96, 256),
) -> Config:
    """The ``ControlNetModel`` config of a ControlNet for the UNet that ``unet_config`` describes (the
    fields both classes share), with a ``hint_channels`` control image and the given hint-encoder widths."""
    fields = set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
    config = {k: v for k, v in unet_config.items() if k in fields}
    config.update(
        conditioning_channels=hint_channels, conditioning_embedding_out_channels=list(embedding_channels)
    )
    return config


def _cldm_key(key: str, layers_per_block: int, hint_blocks: int) -> str:
    """One ``ControlNetModel`` key → its cldm name (without ``control_model.``)."""
    if key.startswith("controlnet_cond_embedding."):
        rest = key.removeprefix("controlnet_cond_embedding.")
        if rest.startswith("conv_in."):
            return "input_hint_block.0." + rest.removeprefix("conv_in.")
        if rest.startswith("conv_out."):
            return f"input_hint_block.{2 * hint_blocks + 2}." + rest.removeprefix("conv_out.")
        _, index, tail = rest.split(".", 2)  # blocks.<j>.<weight|bias>: conv 2j + 2 (SiLUs in between)
        return f"input_hint_block.{2 * int(index) + 2}.{tail}"
    if key.startswith("controlnet_down_blocks."):
        _, index, tail = key.split(".", 2)
        return f"zero_convs.{index}.0.{tail}"
    if key.startswith("controlnet_mid_block."):
        return "middle_block_out.0." + key.removeprefix("controlnet_mid_block.")
    return export.unet_key_to_ldm(key, layers_per_block, frozenset())


def controlnet_to_cldm(state: Mapping[str, V], layers_per_block: int) -> dict[str, V]:
    """``ControlNetModel`` state (tensors or shapes) → lllyasviel's cldm keys with ``control_model.``."""
    hint_blocks = len({k.split(".")[2] for k in state if k.startswith("controlnet_cond_embedding.blocks.")})
    return {CLDM_PREFIX + _cldm_key(k, layers_per_block, hint_blocks): v for k, v in state.items()}


def cldm_shapes(config: Config) -> dict[str, Shape]:
    """The cldm-layout key → shape map of the ControlNet ``config`` describes (built on the meta device)."""
    with init_empty_weights():
        model = ControlNetModel.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return controlnet_to_cldm(shapes, int(config.get("layers_per_block", 2)))


def _perturbed(model: torch.nn.Module, seed: int, scale: float) -> None:
    """Add seeded noise to every parameter: zero-initialised convolutions must not hide swapped keys."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def tiny_controlnet_file(
    path: Path,
    family: Family = Family.SD1,
    *,
    seed: int = 0,
    layout: Literal["cldm", "cldm-diff", "diffusers"] = "cldm",
    base_unet: UNet2DConditionModel | None = None,
    hint_channels: int = 3,
    dtype: torch.dtype | None = None,
    hint_gain: float = 1.0,
) -> ControlNetModel:
    """Write a tiny random ControlNet for ``family`` (the structure of ``tiny_spec(family)``'s UNet: widths
    64/128/128, cross-attention width 64 for SD1) and return it (fp32, CPU, eval).

    ``layout``: ``cldm`` (``control_model.`` prefix), ``cldm-diff`` (stores control − ``base_unet`` for every
    key the UNet shares, plus a ``difference`` key), ``diffusers`` (``ControlNetModel`` keys, no prefix).
    ``hint_gain`` scales the hint embedding's last convolution: the random network's outputs depend on the
    control image about 1 % at 1.0, visibly more at 30.
    """
    config = controlnet_config(tiny_spec(family).unet, hint_channels=hint_channels)
    torch.manual_seed(seed)
    model = ControlNetModel.from_config(config)
    _perturbed(model, seed, 0.05)
    with torch.no_grad():
        model.controlnet_cond_embedding.conv_out.weight.mul_(hint_gain)
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if layout == "cldm-diff":
        if base_unet is None:
            raise ValueError("layout 'cldm-diff' needs base_unet")
        base = base_unet.state_dict()
        state = {k: v - base[k].to(v.dtype) if k in base else v for k, v in state.items()}
    if layout != "diffusers":
        state = controlnet_to_cldm(state, int(config["layers_per_block"]))
    if layout == "cldm-diff":
        state["difference"] = torch.ones(1)
    write_checkpoint(path, state, dtype=dtype)
    return model


def tencent_adapter_shapes(
    channels: Sequence[int],
    *,
    cin: int = 64,
    sdxl: bool = False,
    nums_rb: int = 2,
    ksize: int = 1,
    sk: bool = True,
    use_conv: bool = False,
) -> dict[str, Shape]:
    """Key → shape of TencentARC's ``Adapter`` (``ldm/modules/encoders/adapter.py``) for these arguments.

    ``cin`` is the conv_in input width: control channels × 8² (SD1) or × 16² (``sdxl``). Block ``k`` of the
    flat ``body`` list is res block ``k % nums_rb`` of level ``k // nums_rb``; levels 1–3 (SD1) or 2 (SDXL)
    downsample, level 1 of SDXL widens without downsampling.
    """
    shapes: dict[str, Shape] = {}

    def conv(name: str, out_c: int, in_c: int, k: int) -> None:
        shapes[name + ".weight"], shapes[name + ".bias"] = (out_c, in_c, k, k), (out_c,)

    conv("conv_in", channels[0], cin, 3)
    down_levels, widen_levels = ({2}, {1}) if sdxl else ({1, 2, 3}, set())
    for i, out_c in enumerate(channels):
        for r in range(nums_rb):
            p = f"body.{i * nums_rb + r}."
            in_c = channels[i - 1] if r == 0 and i in down_levels | widen_levels else out_c
            if in_c != out_c or not sk:
                conv(p + "in_conv", out_c, in_c, ksize)
            conv(p + "block1", out_c, out_c, 3)
            conv(p + "block2", out_c, out_c, ksize)
            if not sk:
                conv(p + "skep", out_c, in_c, ksize)
            if r == 0 and i in down_levels and use_conv:
                conv(p + "down_opt.op", in_c, in_c, 3)
    return shapes


def tencent_light_adapter_shapes(
    channels: Sequence[int], *, cin: int = 192, nums_rb: int = 4
) -> dict[str, Shape]:
    """Key → shape of TencentARC's ``Adapter_light``: per level an ``extractor`` (1×1 in_conv to a quarter of
    the width, ``nums_rb`` 3×3 res blocks, 1×1 out_conv); every level after the first downsamples."""
    shapes: dict[str, Shape] = {}
    for i, out_c in enumerate(channels):
        in_c, inter, p = cin if i == 0 else channels[i - 1], out_c // 4, f"body.{i}."
        shapes[p + "in_conv.weight"], shapes[p + "in_conv.bias"] = (inter, in_c, 1, 1), (inter,)
        for j in range(nums_rb):
            for conv in ("block1", "block2"):
                shapes[p + f"body.{j}.{conv}.weight"] = (inter, inter, 3, 3)
                shapes[p + f"body.{j}.{conv}.bias"] = (inter,)
        shapes[p + "out_conv.weight"], shapes[p + "out_conv.bias"] = (out_c, inter, 1, 1), (out_c,)
    return shapes


def random_state(shapes: Mapping[str, Shape], seed: int = 0, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """Seeded noise of the given shapes (fp32): weights with no two entries equal."""
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=generator) * scale for k, s in shapes.items()}


def tiny_adapter_file(
    path: Path,
    *,
    light: bool = False,
    sdxl: bool = False,
    hint_channels: int = 1,
    channels: Sequence[int] = (64, 128, 128),
    seed: int = 0,
    prefix: str = "",
    **adapter_args: Any,
) -> dict[str, torch.Tensor]:
    """Write a tiny random T2I-Adapter in Tencent's layout (keys under ``prefix``, e.g. ``adapter.``) and
    return its state without the prefix. ``adapter_args`` go to :func:`tencent_adapter_shapes` (ksize, sk,
    use_conv, nums_rb) or :func:`tencent_light_adapter_shapes` (nums_rb)."""
    cin = hint_channels * (16 if sdxl else 8) ** 2
    if light:
        shapes = tencent_light_adapter_shapes(channels, cin=cin, **adapter_args)
    else:
        shapes = tencent_adapter_shapes(channels, cin=cin, sdxl=sdxl, **adapter_args)
    state = random_state(shapes, seed)
    write_checkpoint(path, {prefix + k: v for k, v in state.items()})
    return state


def write_shapes_only(path: Path, shapes: Mapping[str, Shape], dtype: str = "F16") -> Path:
    """A valid safetensors file of zeros with these shapes, written sparse: a full-size layout costs a few
    kilobytes on disk and nothing in memory (only the header is ever read by shape inspection)."""
    itemsize = {"F16": 2, "BF16": 2, "F32": 4}[dtype]
    header: dict[str, Any] = {}
    offset = 0
    for key, shape in shapes.items():
        size = math.prod(shape) * itemsize
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path
