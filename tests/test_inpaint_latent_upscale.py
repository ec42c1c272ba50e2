"""Inpainting with resize mode 3 ("Just resize (latent upscale)") on a tiny SD1-layout checkpoint.

A1111 encodes the init image at its own size and stretches the latent to W/8 × H/8 (bilinear); the mask
and the kept pixels follow the same stretch. A1111 completes this only when the init is already W×H (its
overlay raises "images do not match" otherwise), where mode 3 equals mode 0; "only masked" ignores the
resize mode.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from latentstudio import infotext
from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.pipeline.params import GenerationParams, ResizeMode
from latentstudio.pipeline.run import GenerationResult, ModelIdentity, run
from tests.conftest import MakeTiny
from tests.params_support import flat_params, flat_replace

IDENTITY = ModelIdentity("tiny", "0123456789")
LANCZOS = Image.Resampling.LANCZOS
LATENT = ResizeMode.LATENT_UPSCALE


@pytest.fixture(scope="module")
def sd1(make_tiny: MakeTiny) -> loader.Components:
    return loader.load_checkpoint(
        make_tiny(Family.SD1, seed=5).path, device=torch.device("cpu"), dtype=torch.float32
    )


def _inputs(width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """A random init image and a mask with a rectangle at the same relative place (white = repaint)."""
    rng = np.random.default_rng(3)
    init = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width * 5 // 16, height * 5 // 16, width * 9 // 16, height * 10 // 16))
    return init, mask


def _params(init: Image.Image, mask: Image.Image, **kwargs: object) -> GenerationParams:
    base: dict[str, object] = {
        "prompt": "a red circle", "negative_prompt": "blurry", "sampler": "Euler", "steps": 3, "seed": 11,
        "width": 128, "height": 96, "init_image": init, "mask": mask, "mask_blur": 0,
        "denoising_strength": 0.9, "resize_mode": LATENT,
    }  # fmt: skip
    return flat_params(**{**base, **kwargs}).resolved()


def _run(params: GenerationParams, model: loader.Components) -> tuple[GenerationResult, set[tuple[int, ...]]]:
    shapes: set[tuple[int, ...]] = set()
    result = run(params, model, identity=IDENTITY, on_step=lambda s: shapes.add(tuple(s.latent.shape)))
    return result, shapes


def test_latent_upscale_inpainting_keeps_the_stretched_original_outside_the_mask(
    sd1: loader.Components,
) -> None:
    init, mask = _inputs(100, 76)  # encoded as its 96×72 top-left crop (whole multiples of 8)
    params = _params(init, mask, inpainting_fill=0)  # "fill" works on the crop with the mask cropped alike
    result, shapes = _run(params, sd1)
    assert result.images[0].size == (128, 96)
    assert shapes == {(1, 4, 12, 16)}  # the 12×9 latent of the crop, stretched to the processing size
    crop = (0, 0, 96, 72)
    expected = np.asarray(init.crop(crop).resize((128, 96), LANCZOS))
    stretched_mask = np.asarray(mask.crop(crop).resize((128, 96), LANCZOS))
    outside, out = stretched_mask == 0, np.asarray(result.images[0])
    assert 0.7 < outside.mean() < 0.95
    assert np.array_equal(out[outside], expected[outside])
    inside = stretched_mask == 255
    assert np.abs(out[inside].astype(int) - expected[inside]).mean() > 10  # the masked area was repainted
    parsed = infotext.parse(result.infotexts[0])
    assert (parsed["Size-1"], parsed["Size-2"], parsed["Mask blur"]) == ("128", "96", "0")
    assert (parsed["Denoising strength"], parsed["Masked content"]) == ("0.9", "fill")
    # Mode 0 on the crop stretches the pixels before encoding: the same kept pixels, another init latent.
    cropped = {"init_image": init.crop(crop), "mask": mask.crop(crop), "resize_mode": ResizeMode.JUST_RESIZE}
    resized, _ = _run(flat_replace(params, **cropped), sd1)
    other = np.asarray(resized.images[0])
    assert np.array_equal(other[outside], out[outside])
    assert not np.array_equal(other[inside], out[inside])


def test_latent_upscale_at_the_init_size_equals_just_resize(sd1: loader.Components) -> None:
    """The one case A1111 runs with a whole-picture mask: the init is already W×H, nothing is resized."""
    init, mask = _inputs(128, 96)
    params = _params(init, mask, mask_blur=4, inpainting_fill=0)
    latent, _ = _run(params, sd1)
    plain, _ = _run(dataclasses.replace(params, resize_mode=ResizeMode.JUST_RESIZE), sd1)
    assert np.array_equal(np.asarray(latent.images[0]), np.asarray(plain.images[0]))
    assert latent.infotexts == plain.infotexts


def test_latent_upscale_only_masked_ignores_the_resize_mode(sd1: loader.Components) -> None:
    init, mask = _inputs(100, 76)
    params = _params(init, mask, width=64, height=64, inpaint_full_res=True, inpaint_full_res_padding=8)
    latent, shapes = _run(params, sd1)
    plain, _ = _run(dataclasses.replace(params, resize_mode=ResizeMode.JUST_RESIZE), sd1)
    assert latent.images[0].size == (100, 76)  # pasted back into the full picture
    assert shapes == {(1, 4, 8, 8)}
    assert np.array_equal(np.asarray(latent.images[0]), np.asarray(plain.images[0]))
    outside = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(latent.images[0])[outside], np.asarray(init)[outside])


def test_latent_upscale_inpainting_checkpoint(make_tiny: MakeTiny) -> None:
    """A 9-channel checkpoint sees the masked image stretched like the init latent (sizes must agree)."""
    path = make_tiny(Family.SD1, inpainting=True).path
    model = loader.load_checkpoint(path, device=torch.device("cpu"), dtype=torch.float32)
    init, mask = _inputs(64, 48)
    result, shapes = _run(_params(init, mask), model)
    assert result.images[0].size == (128, 96)
    assert shapes == {(1, 4, 12, 16)}
    stretched_mask = np.asarray(mask.resize((128, 96), LANCZOS))
    expected = np.asarray(init.resize((128, 96), LANCZOS))
    outside = stretched_mask == 0
    assert np.array_equal(np.asarray(result.images[0])[outside], expected[outside])
    assert infotext.parse(result.infotexts[0])["Conditional mask weight"] == "1.0"
