"""Inpainting as A1111's img2img with a mask (reference §6.4): mask preparation, "only masked" crop
regions, masked-content fill, latent masks, inpainting-model conditioning and the final overlay.

Pure functions over PIL images and tensors; :func:`latentstudio.pipeline.run.run` strings them together.
White mask pixels are repainted; black ones are kept (and, after the overlay, unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import cv2
import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from latentstudio.pipeline.params import GenerationParams, ResizeMode
from latentstudio.pipeline.resize import resize_image


class MaskedContent(IntEnum):
    """A1111's ``inpainting_fill``: what the masked area starts from."""

    FILL = 0  # blurred surrounding colours
    ORIGINAL = 1
    LATENT_NOISE = 2
    LATENT_NOTHING = 3


MASKED_CONTENT_LABELS = {0: "fill", 2: "latent noise", 3: "latent nothing"}  # infotext "Masked content"


def binary_mask(mask: Image.Image, round_alpha: bool = True) -> Image.Image:
    """A1111 ``create_binary_mask``: the alpha channel of an RGBA mask with transparency (thresholded at
    > 128 when ``round_alpha``), otherwise the mask as greyscale ``L``."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        alpha = mask.split()[-1].convert("L")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round_alpha else alpha
    return mask.convert("L")


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """A1111's separable mask blur: ``cv2.GaussianBlur`` of the 8-bit mask horizontally with σ = ``blur_x``,
    then vertically with σ = ``blur_y``, each with a kernel of ``2·int(2.5σ + 0.5) + 1`` taps (a σ of 0
    skips its pass), OpenCV's default border (reflect-101)."""
    values = np.asarray(mask.convert("L"))
    for sigma, horizontal in ((blur_x, True), (blur_y, False)):
        if sigma > 0:
            size = 2 * int(2.5 * sigma + 0.5) + 1
            values = cv2.GaussianBlur(values, (size, 1) if horizontal else (1, size), sigma)
    return Image.fromarray(np.ascontiguousarray(values), mode="L")


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """A1111 ``get_crop_region_v2``: the bounding box of the non-zero mask pixels grown by ``padding`` and
    clipped to the image, as ``(x1, y1, x2, y2)``; None for a blank mask."""
    box = mask.convert("L").getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return (
        max(x1 - padding, 0),
        max(y1 - padding, 0),
        min(x2 + padding, mask.width),
        min(y2 + padding, mask.height),
    )


def expand_crop_region(
    region: tuple[int, int, int, int], width: int, height: int, image_width: int, image_height: int
) -> tuple[int, int, int, int]:
    """A1111 ``masking.expand_crop_region``: grow the region to the ``width:height`` aspect ratio, keeping it
    centred and inside the image (a 128×32 region for 512×512 becomes 128×128)."""
    x1, y1, x2, y2 = region
    ratio_crop, ratio_processing = (x2 - x1) / (y2 - y1), width / height
    if ratio_crop > ratio_processing:
        desired = (x2 - x1) / ratio_processing
        diff = int(desired - (y2 - y1)) // 2
        y1, y2 = y1 - diff, y2 + diff
        if y2 >= image_height:
            y1, y2 = y1 - (y2 - image_height), image_height
        if y1 < 0:
            y2, y1 = min(y2 - y1, image_height), 0
    else:
        desired = (y2 - y1) * ratio_processing
        diff = int(desired - (x2 - x1)) // 2
        x1, x2 = x1 - diff, x2 + diff
        if x2 >= image_width:
            x1, x2 = x1 - (x2 - image_width), image_width
        if x1 < 0:
            x2, x1 = min(x2 - x1, image_width), 0
    return x1, y1, x2, y2


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111 ``masking.fill``: the masked area pre-filled with the blurred surrounding colours (Gaussian
    blurs of the unmasked pixels at radii 256, 64, 16, 16, 4, 4, 4, 4, 2, 2, then the sharp image),
    composited outward-in; the unmasked pixels are kept."""
    image_mod = Image.new("RGBA", image.size)
    background = Image.new("RGBa", image.size)
    background.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    background = background.convert("RGBa")
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = background.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            image_mod.alpha_composite(blurred)
    return image_mod.convert("RGB")


def latent_masks(
    mask: Image.Image, latent: torch.Tensor, round_mask: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, repaint)`` latent masks ``[C, h, w]`` from the processing-size mask (A1111 ``self.mask`` and
    ``self.nmask``): the mask resized to the latent size (PIL bicubic), rounded, 1 = repaint."""
    h, w = latent.shape[-2:]
    small = np.asarray(mask.convert("RGB").resize((w, h)), dtype=np.float32)[..., 0] / 255
    if round_mask:
        small = np.around(small)
    repaint = torch.from_numpy(np.ascontiguousarray(small))[None].expand(latent.shape[-3], -1, -1)
    return 1.0 - repaint, repaint


def conditioning_mask(
    mask: Image.Image | None, size: tuple[int, int], round_mask: bool = True
) -> torch.Tensor:
    """The inpainting-model mask ``[1, 1, H, W]`` in [0, 1] (all ones without a mask, as A1111's txt2img)."""
    if mask is None:
        return torch.ones(1, 1, size[1], size[0])
    values = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
    return torch.round(values) if round_mask else values


@dataclass(frozen=True)
class Overlay:
    """How a processed image goes back into the original: ``image`` holds the kept pixels (alpha = not
    repainted); ``paste`` is ``(x, y, w, h)`` of the "only masked" crop, or None for the whole picture."""

    image: Image.Image
    paste: tuple[int, int, int, int] | None


def overlay_for(init: Image.Image, overlay_mask: Image.Image) -> Image.Image:
    """The init image with alpha = 255 − mask (A1111's ``overlay_images`` entry)."""
    masked = Image.new("RGBa", init.size)
    masked.paste(init.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(overlay_mask.convert("L")))
    return masked.convert("RGBA")


def apply_overlay(image: Image.Image, overlay: Overlay) -> Image.Image:
    """A1111 ``apply_overlay``: paste the processed crop back (crop-and-resize to its box), then composite
    the kept pixels over it, so pixels outside the mask are the init image's."""
    if overlay.paste is not None:
        x, y, w, h = overlay.paste
        base = Image.new("RGBA", overlay.image.size)
        base.paste(resize_image(image, w, h, ResizeMode.CROP_AND_RESIZE), (x, y))
        image = base
    composed = image.convert("RGBA")
    composed.alpha_composite(overlay.image)
    return composed.convert("RGB")


@dataclass(frozen=True)
class Prepared:
    """An img2img job's inputs at the processing size: ``image`` (masked content filled; with resize mode 3
    ("latent upscale") at its own size, whole multiples of 8, as its latent is resized instead) and ``mask``
    (``L``, white = repaint; None without a mask), the ``overlay`` that restores the kept pixels, and the
    infotext keys and warnings the preparation adds."""

    image: Image.Image
    mask: Image.Image | None
    overlay: Overlay | None
    infotext: dict[str, object]
    warnings: list[str]
    latent_mask: Image.Image | None = None  # the request's own latent mask (A1111 ``latent_mask``)
    round_mask: bool = True  # A1111 ``mask_round``

    def latent_masks(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(keep, repaint)`` ``[C, h, w]`` for the latent blend (:func:`latent_masks`): from the request's
        latent mask if it has one, else from the processed mask (there must be one)."""
        mask = self.latent_mask if self.latent_mask is not None else self.mask
        assert mask is not None
        return latent_masks(mask, latent, self.round_mask)


def prepare(params: GenerationParams) -> Prepared:
    """A1111 ``StableDiffusionProcessingImg2Img.init`` for one init image: mask (alpha or greyscale,
    inverted, blurred), "only masked" crop or whole picture, the overlay, and the masked-content fill."""
    assert params.init_image is not None
    width, height = params.width, params.height
    init = params.init_image  # flattened to RGB by GenerationParams.resolved
    spec = params.inpaint
    if spec is None:
        if params.resize_mode is not ResizeMode.LATENT_UPSCALE:
            init = resize_image(init, width, height, params.resize_mode)
        return Prepared(init, None, None, {}, [])
    info: dict[str, object] = {}
    mask = binary_mask(spec.mask, spec.round_mask)
    if spec.invert:
        mask = ImageOps.invert(mask)
        info["Mask mode"] = "Inpaint not masked"
    blur_x, blur_y = spec.blur_xy
    mask = blur_mask(mask, blur_x, blur_y)
    if blur_x == blur_y:  # first, as A1111's UI writes it; A1111's ``mask_blur`` is None (no key) if unequal
        info = {"Mask blur": blur_x, **info}
    region = crop_region(mask, spec.padding) if spec.only_masked else None
    warnings = []
    if spec.only_masked and region is None:
        warnings.append('Unable to perform "Only masked" because the mask is blank; switched to img2img.')
    if region is not None:
        region = expand_crop_region(region, width, height, mask.width, mask.height)
        overlay = Overlay(
            overlay_for(init, mask), (*region[:2], region[2] - region[0], region[3] - region[1])
        )
        processing_mask = resize_image(mask.crop(region), width, height, ResizeMode.RESIZE_AND_FILL).convert(
            "L"
        )
        image = resize_image(init.crop(region), width, height, ResizeMode.RESIZE_AND_FILL)
        fill_mask = processing_mask  # A1111 fills the crop under the crop's own mask
        info.update({"Inpaint area": "Only masked", "Masked area padding": spec.padding})
    elif params.resize_mode is ResizeMode.LATENT_UPSCALE:
        image, fill_mask, processing_mask, shown = _latent_upscale_inputs(init, mask, width, height)
        overlay = Overlay(overlay_for(shown, _doubled(processing_mask)), None)
    else:
        processing_mask = resize_image(mask, width, height, params.resize_mode).convert("L")
        image = resize_image(init, width, height, params.resize_mode)
        fill_mask = processing_mask
        overlay = Overlay(overlay_for(image, _doubled(processing_mask)), None)
    if spec.latent_mask is not None:  # A1111 takes it as it is, for the fill too (validated to fit)
        fill_mask = spec.latent_mask.crop((0, 0, image.width, image.height))
    if spec.fill != MaskedContent.ORIGINAL:  # A1111 pre-fills for "latent noise"/"latent nothing" too
        image = fill(image, fill_mask)
        info["Masked content"] = MASKED_CONTENT_LABELS[spec.fill]
    return Prepared(image, processing_mask, overlay, info, warnings, spec.latent_mask, spec.round_mask)


def _doubled(mask: Image.Image) -> Image.Image:
    """A1111's whole-picture overlay mask ``clip(mask·2)``: blurred edges reach full opacity halfway."""
    return Image.fromarray(np.clip(np.asarray(mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8), mode="L")


def _latent_upscale_inputs(
    init: Image.Image, mask: Image.Image, width: int, height: int
) -> tuple[Image.Image, Image.Image, Image.Image, Image.Image]:
    """Whole-picture inpainting with resize mode 3: ``(image, its mask, processing mask, shown)``.

    A1111 encodes the init image at its own size and stretches its latent to ``width × height``
    (bilinear). The mask follows the same geometry: brought to the init's size, cropped with it to whole
    multiples of 8 (``image``, what is encoded, and ``fill``'s mask), then stretched to the processing
    size (Lanczos, as A1111 resizes masks). ``shown`` is the cropped init stretched the same way: the
    overlay takes the kept pixels from it, so they are the resized original. A1111 itself resizes the
    mask with its "resize and fill" branch, and its overlay and fill need the init to be ``width ×
    height`` already (other sizes raise "images do not match" there); for that size both are the same.
    """
    image = resize_image(init, width, height, ResizeMode.LATENT_UPSCALE)
    native = mask if mask.size == init.size else mask.resize(init.size, resample=Image.Resampling.LANCZOS)
    native = native.crop((0, 0, image.width, image.height))
    processing_mask = resize_image(native, width, height, ResizeMode.JUST_RESIZE).convert("L")
    return image, native, processing_mask, resize_image(image, width, height, ResizeMode.JUST_RESIZE)


def masked_image_conditioning(
    image: Image.Image | None,
    mask: Image.Image | None,
    weight: float,
    size: tuple[int, int],
    round_mask: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An inpainting model's inputs before the VAE: ``(mask [1, 1, H, W], image [1, 3, H, W] in [-1, 1])``
    with the masked area greyed out by ``weight`` (A1111 ``inpainting_mask_weight``); no image → grey.
    ``round_mask``: the mask rounded to 0/1 first (A1111 ``mask_round`` for SD1/SD2 inpainting models;
    SDXL ones always round)."""
    cond_mask = conditioning_mask(mask, size, round_mask)
    if image is None:
        return cond_mask, torch.zeros(1, 3, size[1], size[0])
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(
        2, 0, 1
    )[None]
    return cond_mask, torch.lerp(pixels, pixels * (1.0 - cond_mask), weight)


def outpaint_canvas(
    image: Image.Image, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0
) -> tuple[Image.Image, Image.Image]:
    """Outpainting input: ``image`` on a canvas grown by the given pixels on each side, the new area
    pre-filled by stretching the nearest edge pixels, and the mask of that new area (white = paint).
    Run it as inpainting (``inpainting_fill`` 0 "fill" or 1 "original") at the canvas size."""
    for name, value in (("left", left), ("top", top), ("right", right), ("bottom", bottom)):
        if not 0 <= value <= 2048:
            raise ValueError(f"{name}: {value} is not in [0, 2048]")
    width, height = image.width + left + right, image.height + top + bottom
    source = np.asarray(image.convert("RGB"))
    rows = np.clip(np.arange(height) - top, 0, image.height - 1)
    cols = np.clip(np.arange(width) - left, 0, image.width - 1)
    canvas = Image.fromarray(np.ascontiguousarray(source[rows][:, cols]))
    mask = Image.new("L", (width, height), 255)
    mask.paste(0, (left, top, left + image.width, top + image.height))
    return canvas, mask
