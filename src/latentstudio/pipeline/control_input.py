"""The control picture of each ControlNet unit of a job, detected once per job as sd-webui-controlnet's
``get_control`` does (``scripts/controlnet.py``: ``choose_input_image``, ``try_crop_image_with_a1111_mask``,
the inpaint fallback of ``controlnet_main_entry``): the unit's own image (with its mask: the canvas
scribble, or an inpaint unit's mask), else img2img's init image; cropped like the picture with "only
masked" inpainting; then through the unit's preprocessor (:func:`hint.detect_map`).

An inpaint unit's input is its picture with a mask as a fourth channel: its own mask, else img2img's
A1111 mask (inverted and blurred as A1111 prepares it), else none (nothing masked). ``inpaint_only`` on
an img2img job with a mask becomes ``inpaint`` (global harmonious), as the extension falls back when
A1111 inpaints too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from latentstudio.control import hint, preprocessors
from latentstudio.control.networks import ControlNetwork
from latentstudio.control.preprocess_ops import gray_to_rgb, with_mask
from latentstudio.control.units import RESIZE_ALIASES, ControlResize, ControlUnit
from latentstudio.pipeline import inpaint
from latentstudio.pipeline.params import GenerationParams, Inpaint, ResizeMode
from latentstudio.pipeline.resize import resize_image

_RESIZE_MODE = {  # a unit's resize mode as A1111's resize_image numbers it
    ControlResize.JUST_RESIZE: ResizeMode.JUST_RESIZE,
    ControlResize.CROP_AND_RESIZE: ResizeMode.CROP_AND_RESIZE,
    ControlResize.RESIZE_AND_FILL: ResizeMode.RESIZE_AND_FILL,
}


@dataclass(frozen=True)
class Detected:
    """A unit's detected map (``[H', W', 3]`` uint8, before fitting; an inpaint unit's ``[H, W, 4]``, its
    mask last) and how it is fitted."""

    unit: ControlUnit
    network: ControlNetwork
    detected: np.ndarray
    resize: ControlResize


def detect_units(
    units: Sequence[ControlUnit],
    networks: Sequence[ControlNetwork],
    params: GenerationParams,
    seed: int,
    subseed: int,
    *,
    roots: Sequence[Path] = (),
) -> list[Detected]:
    """Run each unit's preprocessor once per job (the extension's ``get_control``) on the unit's image, or
    on the img2img init image fitted by the job's img2img resize mode; pixel-perfect resolution for the
    first pass's size; the numpy seed of the job's first image for shuffle (:func:`numpy_seed`); with
    "only masked" inpainting, cropped as the job's picture is (:func:`masked_crop`); ``roots``: where
    weight-needing preprocessors find their files."""
    out = []
    numpy_seed = preprocessors.numpy_seed(seed, subseed)
    for given, network in zip(units, networks, strict=True):
        unit = _fallback(given, params)
        module = preprocessors.find(unit.module)
        if module.accepts_mask:
            picture, resize = _inpaint_input(unit, params)
        elif unit.image is not None:
            mask = None if unit.mask is None else hint.array(unit.mask)
            picture, resize = hint.input_image(hint.array(unit.image), mask), unit.resize_mode
        elif params.init_image is not None:
            picture = np.asarray(params.init_image.convert("RGB"))
            resize = RESIZE_ALIASES.get(int(params.resize_mode), ControlResize.JUST_RESIZE)
        else:  # the door refuses this
            raise ValueError("controlnet is enabled but no input image is given")
        if params.inpaint is not None and params.inpaint.only_masked and unit.inpaint_crop_input_image:
            picture = masked_crop(picture, resize, params)
        if module.name == "inpaint_only+lama" and resize is ControlResize.RESIZE_AND_FILL:
            picture = hint.fit(picture, resize, *_final_size(params))  # LaMa outpaints the border it fills
        detected = hint.detect_map(
            unit, picture, resize, (params.height, params.width), numpy_seed, roots=roots
        )
        out.append(Detected(unit, network, detected, resize))
    return out


def _final_size(params: GenerationParams) -> tuple[int, int]:
    """The last pass's ``(height, width)`` as the extension's ``get_target_dimensions`` reckons it: the hires
    size (``hr_resize_y/x``, else the size times ``hr_scale``) or the job's, each rounded down to 8."""
    height, width = params.height, params.width
    if params.hires is not None:
        hires = params.hires
        if hires.resize_x == 0 and hires.resize_y == 0:
            height, width = int(height * hires.scale), int(width * hires.scale)
        else:
            height, width = hires.resize_y, hires.resize_x
    return height // 8 * 8, width // 8 * 8


def _fallback(unit: ControlUnit, params: GenerationParams) -> ControlUnit:
    """``inpaint_only`` on an img2img job with an inpainting mask is ``inpaint`` (global harmonious): the
    extension's fallback when A1111 inpaints too."""
    if unit.module == "inpaint_only" and params.init_image is not None and params.inpaint is not None:
        return dataclasses.replace(unit, module="inpaint")
    return unit


def _inpaint_input(unit: ControlUnit, params: GenerationParams) -> tuple[np.ndarray, ControlResize]:
    """An inpaint unit's picture and mask ``[H, W, 4]`` and its resize mode: the unit's image and mask,
    else the init image with the job's inpainting mask (inverted and blurred as A1111 prepares it; none:
    nothing masked), fitted by the job's img2img resize mode."""
    if unit.image is not None:
        mask = None if unit.mask is None else hint.array(unit.mask)
        return with_mask(hint.array(unit.image), mask), unit.resize_mode
    if params.init_image is None:  # the door refuses this
        raise ValueError("controlnet is enabled but no input image is given")
    init = params.init_image.convert("RGB")
    mask = None
    if params.inpaint is not None:
        prepared = _prepared_mask(params.inpaint)
        if prepared.size != init.size:
            prepared = prepared.resize(init.size, resample=Image.Resampling.LANCZOS)
        mask = np.asarray(prepared)
    resize = RESIZE_ALIASES.get(int(params.resize_mode), ControlResize.JUST_RESIZE)
    return with_mask(np.asarray(init), mask), resize


def _prepared_mask(spec: Inpaint) -> Image.Image:
    """The job's inpainting mask as the extension's ``prepare_mask`` makes it: grey, inverted if asked,
    blurred as A1111 blurs it."""
    mask = spec.mask.convert("L")
    mask = ImageOps.invert(mask) if spec.invert else mask
    return inpaint.blur_mask(mask, *spec.blur_xy)


def masked_crop(picture: np.ndarray, resize: ControlResize, params: GenerationParams) -> np.ndarray:
    """The extension's ``try_crop_image_with_a1111_mask`` for "only masked" inpainting: ``picture``
    (``[H, W, 3]`` uint8; an inpaint unit's ``[H, W, 4]``, each channel alone) fitted to the inpainting
    mask's size by ``resize``, cropped to the region A1111 inpaints (the mask inverted and blurred as the
    job's; its bounding box grown by the padding and to the job's aspect ratio), then resized and filled to
    the job's size. A blank mask crops nothing (A1111 then inpaints the whole picture)."""
    spec = params.inpaint
    assert spec is not None
    if picture.shape[2] == 4:  # an inpaint unit's: channel by channel, as the extension crops them
        return np.stack(
            [masked_crop(gray_to_rgb(picture[:, :, c]), resize, params)[:, :, 0] for c in range(4)], 2
        )
    mask = _prepared_mask(spec)
    region = inpaint.crop_region(mask, spec.padding)
    if region is None:
        return picture
    region = inpaint.expand_crop_region(region, params.width, params.height, mask.width, mask.height)
    fitted = resize_image(Image.fromarray(picture), mask.width, mask.height, _RESIZE_MODE[resize])
    cropped = resize_image(fitted.crop(region), params.width, params.height, ResizeMode.RESIZE_AND_FILL)
    return np.asarray(cropped)


def detected_maps(detected: Sequence[Detected], sizes: Sequence[tuple[int, int]]) -> list[Image.Image]:
    """The detected maps a job returns, as the extension collects them: per unit that saves its map, the
    map fitted to each pass's ``(height, width)`` in ``sizes`` (the hires pass's first, as there); an
    inpaint unit's as RGBA with the masked part half transparent."""
    return [
        Image.fromarray(preprocessors.display(d.unit.module, hint.fit(d.detected, d.resize, height, width)))
        for d in detected
        if d.unit.save_detected_map
        for height, width in sizes
    ]
