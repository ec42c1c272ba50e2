"""img2img colour correction (A1111 ``img2img_color_correction``): the module against an independent
computation, and through the pipeline (tinted init images keep their colours; inpainting keeps its pixels)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import exposure

from latentstudio.core import FieldError
from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.pipeline.color import apply_color_correction, correction_target
from latentstudio.pipeline.params import GenerationParams
from latentstudio.pipeline.run import ModelIdentity, run
from tests.conftest import MakeTiny
from tests.params_support import flat_params, flat_replace

IDENTITY = ModelIdentity("tiny", "0123456789")


def _image(seed: int, tint: tuple[float, float, float], size: tuple[int, int] = (40, 24)) -> Image.Image:
    """Smooth gradients plus noise, scaled per channel by ``tint``."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, (x + y) / (w + h)], axis=-1) * 200 + rng.normal(0, 25, (h, w, 3))
    return Image.fromarray(np.clip(base * np.asarray(tint), 0, 255).astype(np.uint8))


def _luminosity_blend(background: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """blendmodes' LUMINOSITY for opaque RGB images, pixel by pixel as its 2022 release (the one A1111
    pins): the background's colour with the foreground's luma (0.299, 0.587, 0.114), then ClipColor."""
    out = np.empty(background.shape, dtype=np.float64)
    weights = np.array([0.299, 0.587, 0.114])
    for i in range(background.shape[0]):
        for j in range(background.shape[1]):
            colour = background[i, j] / 255.0
            colour = colour + (foreground[i, j] / 255.0) @ weights - colour @ weights
            lum, low, high = colour @ weights, colour.min(), colour.max()
            if low < 0:
                colour = lum + (colour - lum) * lum / (lum - low)
            if high > 1:
                colour = lum + (colour - lum) * (1 - lum) / (high - lum)
            out[i, j] = colour
    return np.uint8(np.around(np.nan_to_num(out) * 255.0))


def test_matches_a1111_computed_independently() -> None:
    init, output = _image(0, (1.0, 0.55, 0.35)), _image(1, (0.4, 0.9, 1.1))
    # A1111 setup_color_correction / apply_color_correction, step by step with the libraries directly
    target = cv2.cvtColor(np.asarray(init), cv2.COLOR_RGB2LAB)
    matched = exposure.match_histograms(
        cv2.cvtColor(np.asarray(output), cv2.COLOR_RGB2LAB), target, channel_axis=2
    )
    corrected = cv2.cvtColor(matched, cv2.COLOR_LAB2RGB).astype("uint8")
    expected = _luminosity_blend(corrected, np.asarray(output))

    assert np.array_equal(correction_target(init), target)
    got = apply_color_correction(correction_target(init), output)
    assert (got.mode, got.size) == ("RGB", output.size)
    assert np.array_equal(np.asarray(got), expected)
    # the luminosity is the output's, the colour moved to the init image's
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(np.asarray(got) @ luma - np.asarray(output) @ luma).mean() < 1.0
    mean = {name: np.asarray(im, dtype=float).mean(axis=(0, 1)) for name, im in
            (("init", init), ("output", output), ("got", got))}  # fmt: skip
    assert mean["got"][0] > mean["got"][2]  # red above blue, as in the init image
    assert mean["output"][0] < mean["output"][2]


def test_identity_when_the_output_is_the_init_image() -> None:
    image = _image(2, (0.9, 0.8, 0.5))
    got = np.asarray(apply_color_correction(correction_target(image), image)).astype(int)
    error = np.abs(got - np.asarray(image))  # 8-bit LAB round trips, truncation, blend rounding only
    assert error.mean() < 1.0
    assert error.max() <= 8


@pytest.fixture(scope="module")
def sd1(make_tiny: MakeTiny) -> loader.Components:
    return loader.load_checkpoint(
        make_tiny(Family.SD1, seed=5).path, device=torch.device("cpu"), dtype=torch.float32
    )


def _lab_ab(image: Image.Image) -> np.ndarray:
    """Mean a*, b* (OpenCV 8-bit LAB, 128 = neutral) of an image."""
    lab = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2LAB).astype(float)
    return lab[..., 1:].mean(axis=(0, 1))


def _params(**kwargs: object) -> GenerationParams:
    base: dict[str, object] = {"prompt": "a circle", "steps": 4, "seed": 3, "width": 64, "height": 64,
                               "sampler": "Euler", "denoising_strength": 0.9}  # fmt: skip
    return flat_params(**{**base, **kwargs}).resolved()


def test_a_tinted_init_image_keeps_its_colour_statistics(sd1: loader.Components) -> None:
    init = _image(4, (1.1, 0.75, 0.3), size=(64, 64))  # strongly orange
    plain = run(_params(init_image=init, batch_size=2), sd1, identity=IDENTITY)
    corrected = run(_params(init_image=init, batch_size=2, color_correction=True), sd1, identity=IDENTITY)
    for before, after in zip(plain.images, corrected.images, strict=True):
        drift_before = np.abs(_lab_ab(before) - _lab_ab(init)).max()
        drift_after = np.abs(_lab_ab(after) - _lab_ab(init)).max()
        assert drift_before > 30  # the tiny model loses the tint (a*, b* near neutral) ...
        assert drift_after < 6  # ... the correction brings it back, up to what the output's kept
        assert drift_after < drift_before / 5  # luminosity allows (brighter pixels hold less chroma)
    assert corrected.infotexts == plain.infotexts  # A1111 writes no infotext key for it


def test_inpainting_with_correction_keeps_unmasked_pixels(sd1: loader.Components) -> None:
    init = _image(5, (1.0, 0.6, 0.4), size=(64, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    params = _params(init_image=init, mask=mask, mask_blur=0, color_correction=True)
    result = run(params, sd1, identity=IDENTITY)
    out, before = np.asarray(result.images[0]), np.asarray(init)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], before[outside])
    plain = run(dataclasses.replace(params, color_correction=False), sd1, identity=IDENTITY)
    assert not np.array_equal(np.asarray(plain.images[0])[~outside], out[~outside])  # it did correct
    only_masked = flat_replace(params, inpaint_full_res=True, inpaint_full_res_padding=4)
    out = np.asarray(run(only_masked, sd1, identity=IDENTITY).images[0])
    assert np.array_equal(out[outside], before[outside])


def test_color_correction_is_img2img_only() -> None:
    with pytest.raises(FieldError, match="img2img option") as info:
        GenerationParams(prompt="x", color_correction=True).resolved()
    assert info.value.field == "color_correction"
