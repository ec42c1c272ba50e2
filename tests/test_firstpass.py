"""A1111's ``firstpass_image`` (txt2img with ``enable_hr``) over real HTTP: the given image stands for the
first pass's result and only the hires pass runs (A1111 v1.10.1 ``StableDiffusionProcessingTxt2Img.sample``).

Independent construction: that hires pass is an img2img of the same image at the hires size, the same
seed, denoising strength and exact step count. A pixel upscaler sees the image after A1111's
8-bit → [-1, 1] → 8-bit round trip and resizes it (Lanczos here); a latent mode encodes the image at its own
size and interpolates the latents (img2img's "Latent upscale" resize mode does the same)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import MakeTiny
from tests.sdapi_support import IMG2IMG_BASE, TXT2IMG_BASE, build_root, decode, generate, png_b64
from tests.serving import Served, serve

HIRES: dict[str, Any] = {**TXT2IMG_BASE, "enable_hr": True, "hr_scale": 1.5, "seed": 7,
                         "sampler_index": "Euler", "denoising_strength": 0.6, "steps": 3,
                         "prompt": "a red circle"}  # fmt: skip


def _firstpass() -> Image.Image:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pixels[:16] = rng.integers(0, 64, (16, 64, 3), dtype=np.uint8)  # dark rows: A1111's round trip shows
    return Image.fromarray(pixels, "RGB")


def _a1111_round_trip(image: Image.Image) -> Image.Image:
    """A1111: ``np.array(img) / 255 * 2 - 1`` (float32), then ``clamp((x + 1) / 2)``, ``255 *``, ``uint8``."""
    x = np.array(image).astype(np.float32) / 255.0 * 2.0 - 1.0
    y = np.clip((x + 1.0) / 2.0, 0.0, 1.0)
    return Image.fromarray((255.0 * y).astype(np.uint8))


@pytest.fixture(scope="module")
def server(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(build_root(make_tiny, tmp_path_factory.mktemp("firstpass"))) as served:
        yield served


@pytest.fixture
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=300) as c:
        yield c


def _pixels(body: dict[str, Any]) -> np.ndarray:
    return np.asarray(decode(body["images"][0]).convert("RGB"))


def _img2img(client: httpx.Client, init: Image.Image, resize_mode: int) -> np.ndarray:
    """The hires pass as an img2img job: 96×96, the hires pass's seed, strength and exact steps."""
    payload = {**IMG2IMG_BASE, "init_images": [png_b64(init)], "width": 96, "height": 96, "seed": 7,
               "sampler_index": "Euler", "steps": 3, "denoising_strength": 0.6, "prompt": "a red circle",
               "resize_mode": resize_mode, "override_settings": {"img2img_fix_steps": True}}  # fmt: skip
    return _pixels(generate(client, "img2img", payload))


def test_round_trip_changes_dark_values() -> None:  # the reference's premise: the quirk is visible
    image = _firstpass()
    assert not np.array_equal(np.asarray(_a1111_round_trip(image)), np.asarray(image))


@pytest.mark.parametrize("upscaler", ["Lanczos", "Latent"])
def test_firstpass_image_replaces_the_first_pass(client: httpx.Client, upscaler: str) -> None:
    image = _firstpass()
    plain = generate(client, "txt2img", {**HIRES, "hr_upscaler": upscaler})
    given = generate(client, "txt2img", {**HIRES, "hr_upscaler": upscaler, "firstpass_image": png_b64(image)})
    pixels = _pixels(given)
    assert pixels.shape == (96, 96, 3)
    assert _pixels(plain).shape == (96, 96, 3)
    assert not np.array_equal(pixels, _pixels(plain))
    if upscaler == "Lanczos":
        reference = _img2img(client, _a1111_round_trip(image).resize((96, 96), Image.Resampling.LANCZOS), 0)
    else:
        reference = _img2img(client, image, 3)  # encoded at 64×64, latents interpolated (bilinear)
    assert np.array_equal(pixels, reference)
    if upscaler == "Lanczos":  # without A1111's round trip the result would differ
        assert not np.array_equal(
            pixels, _img2img(client, image.resize((96, 96), Image.Resampling.LANCZOS), 0)
        )
    text = given["info"]["infotexts"][0]
    for key in (f"Hires upscaler: {upscaler}", "Hires upscale: 1.5", "Size: 64x64"):
        assert key in text


def test_firstpass_image_without_enable_hr_is_ignored(client: httpx.Client) -> None:
    base = {**HIRES, "enable_hr": False, "seed": 5}
    plain = generate(client, "txt2img", base)
    given = generate(client, "txt2img", {**base, "firstpass_image": png_b64(_firstpass())})
    assert np.array_equal(_pixels(plain), _pixels(given))
    assert _pixels(given).shape == (64, 64, 3)


def test_unreadable_firstpass_image_is_refused(client: httpx.Client) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**HIRES, "firstpass_image": "bm90IGFuIGltYWdl"})
    assert response.status_code == 422
    assert "firstpass_image" in response.text


def test_a_firstpass_image_too_small_or_too_large_is_refused_before_the_job(client: httpx.Client) -> None:
    for size in ((4, 64), (64, 4096)):
        picture = png_b64(Image.new("RGB", size, "white"))
        response = client.post("/sdapi/v1/txt2img", json={**HIRES, "firstpass_image": picture})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", "firstpass_image"]
