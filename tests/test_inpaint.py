"""Inpainting building blocks as A1111 (reference §6.4): masks, blur, crop regions, fill, latent masks and
the overlay that keeps unmasked pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter1d

from latentstudio.pipeline import inpaint


def _mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def test_binary_mask_uses_alpha_only_when_transparent() -> None:
    rgba = Image.new("RGBA", (4, 1), (255, 255, 255, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 100))
    rgba.putpixel((1, 0), (0, 0, 0, 200))
    assert np.asarray(inpaint.binary_mask(rgba)).ravel().tolist() == [0, 255, 255, 255]
    assert np.asarray(inpaint.binary_mask(rgba, round_alpha=False)).ravel().tolist() == [100, 200, 255, 255]
    opaque = Image.new("RGBA", (2, 1), (30, 30, 30, 255))
    assert np.asarray(inpaint.binary_mask(opaque)).ravel().tolist() == [30, 30]


@pytest.mark.parametrize(("blur_x", "blur_y"), [(4, 4), (1.5, 0), (0, 7), (10, 3)])
def test_blur_matches_a_separable_gaussian_with_reflect_101(blur_x: float, blur_y: float) -> None:
    rng = np.random.default_rng(0)
    mask = Image.fromarray((rng.random((37, 53)) > 0.7).astype(np.uint8) * 255)
    values = np.asarray(mask, dtype=np.float64)
    for sigma, axis in ((blur_x, 1), (blur_y, 0)):  # scipy "mirror" = OpenCV's reflect-101
        if sigma > 0:
            values = np.rint(gaussian_filter1d(values, sigma, axis=axis, mode="mirror", truncate=2.5))
    got = np.asarray(inpaint.blur_mask(mask, blur_x, blur_y), dtype=np.int16)
    # A1111 blurs the 8-bit mask with OpenCV, whose fixed-point 8-bit kernels stay within a few grey levels
    # of the exact Gaussian (exact parity with A1111's OpenCV calls: tests/test_mask_fields.py)
    assert np.abs(got - values.astype(np.int16)).max() <= 8


def test_crop_region_and_expansion() -> None:
    mask = _mask((512, 512), (200, 300, 327, 331))  # a 128×32 region
    region = inpaint.crop_region(mask, 0)
    assert region == (200, 300, 328, 332)
    assert inpaint.expand_crop_region(region, 512, 512, 512, 512) == (200, 252, 328, 380)  # 128×128
    assert inpaint.crop_region(mask, 16) == (184, 284, 344, 348)
    assert inpaint.crop_region(Image.new("L", (8, 8)), 4) is None
    edge = inpaint.expand_crop_region((0, 0, 128, 32), 512, 512, 512, 512)
    assert edge == (0, 0, 128, 128)  # pushed inside the image


def test_fill_keeps_unmasked_pixels_and_paints_the_hole_with_surroundings() -> None:
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    ImageDraw.Draw(image).rectangle((20, 20, 43, 43), fill=(0, 0, 255))
    mask = _mask((64, 64), (20, 20, 43, 43))
    filled = np.asarray(inpaint.fill(image, mask)).astype(int)
    outside = np.asarray(mask) == 0
    assert np.abs(filled[outside] - np.asarray(image).astype(int)[outside]).max() <= 1
    hole = filled[32, 32]
    assert hole[0] > 150  # red from around it,
    assert hole[2] < 60  # not the blue that was there


def test_latent_masks() -> None:
    mask = _mask((64, 64), (0, 0, 31, 63))  # left half repainted
    keep, repaint = inpaint.latent_masks(mask, torch.zeros(1, 4, 8, 8))
    assert repaint.shape == (4, 8, 8)
    assert torch.equal(keep + repaint, torch.ones(4, 8, 8))
    assert repaint[:, :, :4].min() == 1.0
    assert repaint[:, :, 4:].max() == 0.0


def test_overlay_restores_every_unmasked_pixel() -> None:
    rng = np.random.default_rng(1)
    init = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    mask = _mask((64, 48), (10, 5, 30, 25))
    processed = Image.new("RGB", (64, 48), (0, 255, 0))
    out = np.asarray(inpaint.apply_overlay(processed, inpaint.Overlay(inpaint.overlay_for(init, mask), None)))
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], np.asarray(init)[outside])
    assert (out[~outside] == (0, 255, 0)).all()
    crop = inpaint.Overlay(inpaint.overlay_for(init, mask), (10, 5, 21, 21))
    pasted = np.asarray(inpaint.apply_overlay(Image.new("RGB", (64, 64), (0, 0, 255)), crop))
    assert np.array_equal(pasted[outside], np.asarray(init)[outside])
    assert (pasted[10, 15] == (0, 0, 255)).all()


def test_conditioning_mask() -> None:
    assert torch.equal(inpaint.conditioning_mask(None, (16, 8)), torch.ones(1, 1, 8, 16))
    soft = Image.fromarray(np.array([[0, 100, 200]], dtype=np.uint8))
    assert inpaint.conditioning_mask(soft, (3, 1)).flatten().tolist() == [0.0, 0.0, 1.0]
