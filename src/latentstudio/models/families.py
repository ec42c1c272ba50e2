"""Identify a checkpoint's model family from its state-dict keys and shapes alone.

Structure decides first (which text encoder layout is present, linear vs conv attention projections, the
UNet's input channels), absolute widths only when a file has no text encoder. That makes the rules hold for
tiny test checkpoints in the real key layout as well as for full-size files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch

from latentstudio.core import Prediction
from latentstudio.models.files import ModelFileError

UNET_PREFIX = "model.diffusion_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
REFINER_CLIP_G_PREFIX = "conditioner.embedders.0.model."

Shapes = Mapping[str, tuple[int, ...]]
TensorGetter = Callable[[str], torch.Tensor]


class Family(StrEnum):
    """Model families latentstudio loads."""

    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl-refiner"


@dataclass(frozen=True)
class FamilyInfo:
    """The identity of a checkpoint, as reported by ``latentstudio models``."""

    family: Family
    prediction: Prediction
    inpainting: bool
    native_size: int

    @property
    def label(self) -> str:
        """Human-readable family, e.g. ``SD2.x v 768`` or ``SD1.x inpainting``."""
        names = {
            Family.SD1: "SD1.x",
            Family.SD2: "SD2.x",
            Family.SDXL: "SDXL",
            Family.SDXL_REFINER: "SDXL refiner",
        }
        parts = [names[self.family]]
        if self.prediction is Prediction.V:
            parts.append("v")
        if self.inpainting:
            parts.append("inpainting")
        return " ".join(parts)


def _has_prefix(shapes: Shapes, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def _context_dim(shapes: Shapes) -> int | None:
    """Cross-attention width: in-features of the first ``attn2.to_k`` of the UNet."""
    for key, shape in shapes.items():
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return shape[1]
    return None


def _text_layout(shapes: Shapes) -> Family | None:
    """The family implied by which text encoders the file carries, or None if it has none."""
    if _has_prefix(shapes, SDXL_CLIP_G_PREFIX) and _has_prefix(shapes, SDXL_CLIP_L_PREFIX):
        return Family.SDXL
    if _has_prefix(shapes, REFINER_CLIP_G_PREFIX) and not _has_prefix(shapes, "conditioner.embedders.1."):
        return Family.SDXL_REFINER
    if _has_prefix(shapes, SD2_TEXT_PREFIX):
        return Family.SD2
    if _has_prefix(shapes, SD1_TEXT_PREFIX):
        return Family.SD1
    return None


_BY_CONTEXT = {768: Family.SD1, 1024: Family.SD2, 2048: Family.SDXL, 1280: Family.SDXL_REFINER}
_IN_CHANNELS = {4: False, 9: True}
_OTHER_IN_CHANNELS = {8: "instruct-pix2pix", 5: "depth-conditioned", 7: "x4 upscaler"}


def detect_family(
    path: Path,
    shapes: Shapes,
    metadata: Mapping[str, str],
    get_tensor: TensorGetter,
    sidecar_prediction: Prediction | None = None,
) -> FamilyInfo:
    """Classify a checkpoint; raise :class:`ModelFileError` naming the file for anything unknown.

    ``get_tensor`` fetches one tensor's values (for the SD2 v-prediction statistic);
    ``sidecar_prediction`` comes from an A1111-style ``<name>.yaml`` next to the file.
    """
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        hint = " (it looks like a VAE)" if _has_prefix(shapes, "encoder.down.") else ""
        raise ModelFileError(path, f"unknown model family: no UNet weights ({UNET_PREFIX}*){hint}")
    in_channels = conv_in[1]
    if in_channels not in _IN_CHANNELS:
        kind = _OTHER_IN_CHANNELS.get(in_channels, "unknown")
        raise ModelFileError(
            path,
            f"unsupported model family: UNet with {in_channels} input channels ({kind}); expected 4 or 9",
        )
    family = _text_layout(shapes)
    context = _context_dim(shapes)
    if family is None:
        family = _BY_CONTEXT.get(context or 0)
        if family is None:
            raise ModelFileError(
                path, f"unknown model family: no text encoder and cross-attention width {context}"
            )
    _check_unet_structure(path, shapes, family)
    prediction = _prediction(shapes, metadata, get_tensor, family, in_channels, sidecar_prediction)
    native = {Family.SD1: 512, Family.SD2: 512, Family.SDXL: 1024, Family.SDXL_REFINER: 1024}[family]
    if family is Family.SD2 and prediction is Prediction.V:
        native = 768
    return FamilyInfo(family, prediction, _IN_CHANNELS[in_channels], native)


def _check_unet_structure(path: Path, shapes: Shapes, family: Family) -> None:
    """SDXL UNets carry ``label_emb`` (size/crop conditioning); SD1/SD2 ones do not."""
    has_label_emb = UNET_PREFIX + "label_emb.0.0.weight" in shapes
    expects = family in (Family.SDXL, Family.SDXL_REFINER)
    if has_label_emb != expects:
        what = "has" if has_label_emb else "lacks"
        raise ModelFileError(
            path, f"unknown model family: {family.value} text encoders but the UNet {what} label_emb"
        )


def _prediction(  # noqa: PLR0917 - private helper, all arguments are distinct facts about one file
    shapes: Shapes,
    metadata: Mapping[str, str],
    get_tensor: TensorGetter,
    family: Family,
    in_channels: int,
    sidecar: Prediction | None,
) -> Prediction:
    """v or epsilon, from (in order) the sidecar yaml, a ``v_pred`` marker key, modelspec metadata, and
    for SD2 the statistic ComfyUI uses: v-trained SD2 UNets have a wide spread of the last transformer's
    ``norm1.bias`` (std > 0.09), eps-trained ones do not."""
    if sidecar is not None:
        return sidecar
    if "v_pred" in shapes:
        return Prediction.V
    spec = metadata.get("modelspec.prediction_type", "").lower()
    if spec in ("v", "v_prediction", "v-prediction"):
        return Prediction.V
    if spec in ("epsilon", "eps"):
        return Prediction.EPSILON
    if family is Family.SD2 and in_channels == 4:
        key = _last_output_norm1_bias(shapes)
        if key is not None and float(get_tensor(key).float().std(unbiased=False)) > 0.09:
            return Prediction.V
    return Prediction.EPSILON


def _last_output_norm1_bias(shapes: Shapes) -> str | None:
    """``output_blocks.<last>.1.transformer_blocks.0.norm1.bias`` (index 11 in a full-size UNet)."""
    best: tuple[int, str] | None = None
    for key in shapes:
        if key.startswith(UNET_PREFIX + "output_blocks.") and key.endswith(
            ".1.transformer_blocks.0.norm1.bias"
        ):
            index = int(key[len(UNET_PREFIX + "output_blocks.") :].split(".", 1)[0])
            if best is None or index > best[0]:
                best = (index, key)
    return None if best is None else best[1]
