"""ControlNet and T2I-Adapter files → diffusers' ``ControlNetModel`` / ``T2IAdapter``, loaded and checked.

A file is a single ``.safetensors`` / ``.pth`` / ``.ckpt`` / ``.bin`` / ``.pt`` or a diffusers folder
(config.json + unsharded weights). Its key layout, the renaming to diffusers' keys, its family and the
architecture config come from :mod:`latentstudio.control.layouts` (keys and shapes only, never file names);
here the described module is built on the ``meta`` device and checked key by key against the file before any
weights are placed. A difference ControlNet (``cldm-diff``) gets the base UNet's weights added back.

Refused, each with one :class:`ModelFileError` line naming the file: what :mod:`~latentstudio.control.layouts`
refuses (see its module doc), folders without a readable config.json or weights, a config.json that
disagrees with the weights, and weights that do not fit the architecture they describe.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel

from latentstudio.control.layouts import (
    Config,
    ControlKind,
    Shape,
    Shapes,
    adapter_config,
    controlnet_config,
    detect_layout,
    required_shape,
    to_diffusers,
)
from latentstudio.models.arch import architecture_overrides
from latentstudio.models.families import Family
from latentstudio.models.files import (
    SAFETENSORS_SUFFIXES,
    ModelFileError,
    read_safetensors_header,
    read_tensor_file,
)
from latentstudio.models.loader import Placement, construct, first_line

__all__ = [
    "ControlFileInfo",
    "ControlKind",
    "ControlNetwork",
    "empty_control_module",
    "inspect_control_file",
    "load_control_network",
]

BASE_FAMILY_KEY = "latentstudio.base_family"
"""Metadata a trained control file records its base model's family in (``latentstudio train``)."""
_SHARED_WITH_UNET = ("conv_in.", "time_embedding.", "add_embedding.", "down_blocks.", "mid_block.")
_FOLDER_WEIGHTS = tuple(
    f"diffusion_pytorch_model{v}.{s}" for s in ("safetensors", "bin") for v in ("", ".fp16")
)


@dataclass(frozen=True)
class ControlFileInfo:
    """A control file's identity: ``layout`` is one of cldm, cldm-diff, diffusers, tencent-full,
    tencent-light, diffusers-adapter; ``hint_channels`` is the control image's channel count the network
    takes (1 for adapters with a 64- or 256-wide conv_in: feed them the first channel)."""

    kind: ControlKind
    family: Family
    layout: str
    hint_channels: int


@dataclass(frozen=True, eq=False)
class ControlNetwork:
    """A loaded control network: ``module`` is in eval mode, without gradients, on its device/dtype.

    ControlNet: ``module(sample [B,4,h,w], t, context [B,77,D], controlnet_cond [B,C,8h,8w])`` → down
    residuals + mid residual. T2I-Adapter: ``module(hint [B,C,H,W])`` → one feature map per level.
    """

    path: Path
    info: ControlFileInfo
    module: ControlNetModel | T2IAdapter


@dataclass(frozen=True)
class _Described:
    info: ControlFileInfo
    config: Config
    shapes: dict[str, Shape]  # diffusers-layout key → shape


def inspect_control_file(path: Path) -> ControlFileInfo:
    """Kind, family and layout from keys and shapes only (safetensors: the header, no tensor data), checked
    against the architecture they describe; :class:`ModelFileError` for anything we do not load."""
    return _describe_file(path)[0].info


def empty_control_module(path: Path) -> ControlNetModel | T2IAdapter:
    """The module the file's shapes describe, on the ``meta`` device (no weights, nothing allocated)."""
    return _describe_file(path)[1]


def load_control_network(
    path: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    base_unet: UNet2DConditionModel | None = None,
) -> ControlNetwork:
    """Load a single file (.safetensors/.pth/.ckpt/.bin/.pt) or a diffusers folder. A difference ControlNet
    (``cldm-diff``) gets ``base_unet``'s weights added to every key they share; without it, an error."""
    weights, folder = _locate(path)
    tf = read_tensor_file(weights)
    described = _describe(path, {k: tuple(v.shape) for k, v in tf.tensors.items()}, folder, tf.metadata)
    info, config = described.info, dict(described.config)
    state = to_diffusers(path, info.layout, detect_layout(path, tf.tensors)[2])
    if info.layout == "cldm-diff":
        state = _add_base(path, state, base_unet)
    if "addition_time_embed_dim" in config:  # SDXL: the width of each size/crop id's embedding
        adm_in = described.shapes["add_embedding.linear_1.weight"][1]
        config["addition_time_embed_dim"] = _time_dim(path, adm_in, base_unet)
    module = _checked_module(path, described, config)
    placement = Placement(device, dtype, mapped=tf.mapped)
    placed = {key: placement.place(state.pop(key)) for key in list(state)}
    try:
        module.load_state_dict(placed, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelFileError(path, f"weights do not match the architecture: {first_line(e)}") from e
    module.to(device=device)
    module.eval().requires_grad_(False)
    return ControlNetwork(path, info, module)


def _describe_file(path: Path) -> tuple[_Described, Any]:
    weights, folder = _locate(path)
    metadata: Mapping[str, str] = {}
    if weights.suffix.lower() in SAFETENSORS_SUFFIXES and weights.is_file():
        entries, metadata = read_safetensors_header(weights)
        shapes = {k: tuple(cast("list[int]", e["shape"])) for k, e in entries.items()}
    else:  # pickled tensors (weights-only unpickler) or a missing file (read_tensor_file says so)
        shapes = {k: tuple(v.shape) for k, v in read_tensor_file(weights).tensors.items()}
    described = _describe(path, shapes, folder, metadata)
    return described, _checked_module(path, described, described.config)


def _checked_module(path: Path, described: _Described, config: Config) -> Any:
    """The module ``config`` describes, on the meta device, checked key by key against the file's shapes."""
    module = _build(path, described.info.kind, config)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    shapes = described.shapes
    missing, unexpected = sorted(expected.keys() - shapes.keys()), sorted(shapes.keys() - expected.keys())
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelFileError(path, f"weights do not match the architecture: {detail} (diffusers names)")
    for key in sorted(k for k in expected if expected[k] != shapes[k])[:1]:
        raise ModelFileError(path, f"{key} has shape {list(shapes[key])}, not {list(expected[key])}")
    return module


def _locate(path: Path) -> tuple[Path, Mapping[str, Any] | None]:
    """The weights file, and for a diffusers folder its parsed config.json."""
    if not path.is_dir():
        return path, None
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelFileError(path, "a control-network folder needs config.json (diffusers layout)") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(path, "config.json is not readable JSON") from e
    if not isinstance(config, dict):
        raise ModelFileError(path, "config.json is not a JSON object")
    weights = next((path / n for n in _FOLDER_WEIGHTS if (path / n).is_file()), None)
    if weights is None:
        raise ModelFileError(path, f"no weights: expected one of {', '.join(_FOLDER_WEIGHTS)} (not sharded)")
    return weights, config


def _describe(
    path: Path, shapes: Shapes, folder: Mapping[str, Any] | None, metadata: Mapping[str, str]
) -> _Described:
    """Layout → diffusers-layout shapes → family and diffusers config; a folder's config.json must agree.
    An adapter recorded as trained for SD2 (:data:`BASE_FAMILY_KEY`) is SD2. A ControlNet's
    ``latentstudio.architecture`` metadata (``{"controlnet": {…}}``, checked by
    :mod:`latentstudio.models.arch_schema`) gives what shapes cannot: norm groups, heads (a trained
    ControlNet of a base model whose UNet is not its family's, e.g. the built-in model's)."""
    kind, layout, sub = detect_layout(path, shapes)
    converted = to_diffusers(path, layout, sub)
    if kind is ControlKind.CONTROLNET:
        family, config = controlnet_config(path, converted)
        config.update(architecture_overrides(path, metadata).get("controlnet", {}))
        hint = required_shape(path, converted, "controlnet_cond_embedding.conv_in.weight")[1]
    else:
        family, config, hint = adapter_config(path, layout, converted)
        if family is Family.SD1 and metadata.get(BASE_FAMILY_KEY) == Family.SD2.value:
            family = Family.SD2  # the same shapes: only the file's own record tells an SD2 adapter
    if folder is not None:
        name = folder.get("_class_name")
        expected = {"ControlNetModel": ControlKind.CONTROLNET, "T2IAdapter": ControlKind.T2I_ADAPTER}
        if expected.get(str(name)) is not kind or layout not in ("diffusers", "diffusers-adapter"):
            raise ModelFileError(path, f"config.json names {str(name)[:60]!r}, weights are {layout} {kind}")
        if folder.get("global_pool_conditions") is True:  # shuffle ControlNets: not visible in the weights
            config["global_pool_conditions"] = True
    return _Described(ControlFileInfo(kind, family, layout, hint), config, dict(converted))


def _build(path: Path, kind: ControlKind, config: Config) -> Any:
    """The diffusers module on the meta device; a config it cannot build is a :class:`ModelFileError`."""
    cls = ControlNetModel if kind is ControlKind.CONTROLNET else T2IAdapter
    return construct(path, cls.__name__, lambda: cls.from_config(config))


def _add_base(
    path: Path, state: dict[str, torch.Tensor], base_unet: UNet2DConditionModel | None
) -> dict[str, torch.Tensor]:
    """control = stored difference + base, for every key the ControlNet shares with the UNet (fp32 sums)."""
    if base_unet is None:
        raise ModelFileError(path, "a difference ControlNet needs its base checkpoint's UNet")
    base = base_unet.state_dict()
    out = {}
    for key, value in state.items():
        if key.startswith(_SHARED_WITH_UNET):
            ref = base.get(key)
            if ref is None or ref.shape != value.shape:
                found = "nothing" if ref is None else list(ref.shape)
                raise ModelFileError(path, f"does not fit the base UNet: {key} {list(value.shape)}/{found}")
            out[key] = value.to(ref.device, torch.float32) + ref.float()
        else:
            out[key] = value
    return out


def _time_dim(path: Path, adm_in: int, base_unet: UNet2DConditionModel | None) -> int:
    """SDXL's size/crop-id embedding width: the base UNet's, else 256 (adm_in = pooled 1280 + 6 × 256)."""
    if base_unet is not None and base_unet.config.get("addition_time_embed_dim"):
        return int(base_unet.config["addition_time_embed_dim"])
    if adm_in > 6 * 256:
        return 256
    raise ModelFileError(path, f"SDXL ControlNet with label_emb input {adm_in} (not 2816): pass base_unet")
