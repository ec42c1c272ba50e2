"""A1111's mask fields we used to refuse: ``mask_blur_x`` / ``mask_blur_y`` apart, ``mask_round: false`` and
``latent_mask`` (A1111 v1.10.1 ``StableDiffusionProcessingImg2Img.init`` / ``sample`` in
``modules/processing.py``), checked against A1111's steps written out here with OpenCV, PIL and NumPy: in the
pipeline's parts, through a tiny real model, and over real HTTP."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from latentstudio import infotext
from latentstudio.api.sdapi import options as opts
from latentstudio.api.sdapi.convert import ServerCatalog, prepare
from latentstudio.api.sdapi.models import Img2ImgRequest
from latentstudio.config import Settings
from latentstudio.core import FieldError
from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.pipeline import inpaint
from latentstudio.pipeline.params import GenerationParams, Inpaint
from latentstudio.pipeline.run import ModelIdentity, run
from tests.conftest import MakeTiny
from tests.serving import Served, serve

IDENTITY = ModelIdentity("tiny", "0123456789")
BOX = (16, 16, 48, 48)  # the mask's white square in a 64×64 picture


def _init(side: int = 64, seed: int = 7) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def _box_mask(value: int = 255) -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(value, BOX)
    return mask


def _a1111_blur(mask: np.ndarray, blur_x: int, blur_y: int) -> np.ndarray:
    """A1111's two ``cv2.GaussianBlur`` passes over the 8-bit mask (x first; σ 0 skips a pass)."""
    if blur_x > 0:
        size = 2 * int(2.5 * blur_x + 0.5) + 1
        mask = cv2.GaussianBlur(mask, (size, 1), blur_x)
    if blur_y > 0:
        size = 2 * int(2.5 * blur_y + 0.5) + 1
        mask = cv2.GaussianBlur(mask, (1, size), blur_y)
    return mask


def _a1111_latent_mask(mask: Image.Image, size: tuple[int, int], round_mask: bool) -> np.ndarray:
    """A1111's ``latmask``: RGB, resized to the latent size (PIL's default filter), channel 0 / 255,
    rounded if ``mask_round``."""
    latmask = np.moveaxis(np.array(mask.convert("RGB").resize(size), dtype=np.float32), 2, 0)[0] / 255
    return np.around(latmask) if round_mask else latmask


def _params(**inpaint_fields: Any) -> GenerationParams:
    fields: dict[str, Any] = {"mask": _box_mask(), "blur": 0, **inpaint_fields}
    return GenerationParams(
        prompt="a red circle", negative_prompt="blurry", sampler="Euler", steps=3, seed=11, width=64,
        height=64, init_image=_init(), denoising_strength=0.75, inpaint=Inpaint(**fields),
    ).resolved()  # fmt: skip


@pytest.mark.parametrize(("blur_x", "blur_y"), [(8, 0), (0, 5), (3, 7), (6, 2), (4, 4)])
@pytest.mark.parametrize("invert", [False, True])
def test_blur_x_and_y_are_a1111s_two_opencv_passes(blur_x: int, blur_y: int, invert: bool) -> None:
    rng = np.random.default_rng(blur_x * 10 + blur_y)
    raw = (rng.random((48, 64)) > 0.8).astype(np.uint8) * 255
    spec = Inpaint(Image.fromarray(raw), blur=blur_x, blur_y=blur_y, invert=invert)
    init = _init().crop((0, 0, 64, 48))
    params = GenerationParams(prompt="x", width=64, height=48, init_image=init, inpaint=spec).resolved()
    prepared = inpaint.prepare(params)
    expected = _a1111_blur(255 - raw if invert else raw, blur_x, blur_y)
    assert prepared.mask is not None
    assert np.array_equal(np.asarray(prepared.mask), expected)
    # A1111's infotext takes its ``mask_blur``, which is None (no key) when x and y differ
    assert prepared.infotext.get("Mask blur") == (blur_x if blur_x == blur_y else None)


def test_request_fields_map_as_a1111() -> None:
    catalog, init, mask = ServerCatalog(), _init(), _box_mask()

    def job(latent: Image.Image | None = None, **fields: Any) -> Inpaint:
        req = Img2ImgRequest(init_images=["x"], mask="m", width=64, height=64, steps=3, **fields)
        spec = prepare(req, opts.defaults(), catalog, [init], mask, latent_mask=latent).spec
        assert spec.params.inpaint is not None
        return spec.params.inpaint

    assert job(mask_blur_x=8, mask_blur_y=0).blur_xy == (8, 0)
    assert job(mask_blur=5, mask_blur_x=8, mask_blur_y=0).blur_xy == (5, 5)  # an int mask_blur sets both
    assert job().blur_xy == (4, 4)
    assert job(mask_round=False).round_mask is False
    assert job(mask, latent_mask="l", inpainting_fill=1).latent_mask is mask
    req = Img2ImgRequest(init_images=["x"], mask="m", latent_mask="l", width=64, height=64)
    with pytest.raises(FieldError) as e:
        prepare(req, opts.defaults(), catalog, [init], mask)  # the latent mask did not decode
    assert e.value.field == "latent_mask"
    ignored = Img2ImgRequest(init_images=["x"], latent_mask="l", width=64, height=64)  # no mask: as A1111
    assert prepare(ignored, opts.defaults(), catalog, [init]).spec.params.inpaint is None


def test_mask_round_false_keeps_soft_values() -> None:
    soft = _box_mask(100)  # 100/255 ≈ 0.39: rounds to "keep"
    latent = torch.zeros(1, 4, 8, 8)
    for round_mask in (True, False):
        prepared = inpaint.prepare(_params(mask=soft, round_mask=round_mask))
        keep, repaint = prepared.latent_masks(latent)
        expected = torch.from_numpy(_a1111_latent_mask(soft, (8, 8), round_mask))
        assert torch.equal(repaint, expected.expand(4, -1, -1))
        assert torch.equal(keep, 1 - repaint)
    assert float(repaint[0, 4, 4]) == pytest.approx(100 / 255, abs=0.01)  # inside the box, not rounded
    # an RGBA mask with transparency: its alpha, thresholded at > 128 only when rounding
    rgba = Image.new("RGBA", (64, 64), (255, 255, 255, 0))
    rgba.paste((255, 255, 255, 100), BOX)
    for round_mask, inside in ((True, 0), (False, 100)):
        prepared = inpaint.prepare(_params(mask=rgba, round_mask=round_mask))
        assert prepared.mask is not None
        assert np.asarray(prepared.mask)[32, 32] == inside
    # an inpainting model's mask: rounded only with mask_round
    cond, _ = inpaint.masked_image_conditioning(None, soft, 1.0, (64, 64), round_mask=False)
    assert float(cond[0, 0, 32, 32]) == pytest.approx(100 / 255)
    cond, _ = inpaint.masked_image_conditioning(None, soft, 1.0, (64, 64))
    assert float(cond[0, 0, 32, 32]) == 0.0


def test_latent_mask_replaces_the_mask_for_the_fill_and_the_blend() -> None:
    other = Image.new("L", (64, 64), 0)
    other.paste(255, (0, 0, 24, 64))  # the left stripe
    prepared = inpaint.prepare(_params(latent_mask=other, fill=0))
    assert np.array_equal(np.asarray(prepared.image), np.asarray(inpaint.fill(_init(), other)))
    _, repaint = prepared.latent_masks(torch.zeros(1, 4, 8, 8))
    assert torch.equal(repaint[0], torch.from_numpy(_a1111_latent_mask(other, (8, 8), True)))
    assert np.array_equal(np.asarray(prepared.mask), np.asarray(_box_mask()))  # the overlay keeps the mask
    with pytest.raises(FieldError) as e:  # A1111's fill pastes it onto the picture: sizes must agree
        _params(latent_mask=other.resize((32, 32)), fill=0)
    assert e.value.field == "inpaint.latent_mask"
    _params(latent_mask=other.resize((32, 32)), fill=1)  # without a fill any size goes to the latent size


@pytest.fixture(scope="module")
def sd1(make_tiny: MakeTiny) -> loader.Components:
    return loader.load_checkpoint(
        make_tiny(Family.SD1, seed=5).path, device=torch.device("cpu"), dtype=torch.float32
    )


def _pixels(params: GenerationParams, components: loader.Components, **changes: Any) -> np.ndarray:
    spec = params.inpaint
    assert spec is not None
    inpaint_changes = {k: changes.pop(k) for k in ("round_mask", "latent_mask", "mask") if k in changes}
    changed = GenerationParams(**{
        **{f: getattr(params, f) for f in params.__dataclass_fields__}, **changes,
        "inpaint": Inpaint(**{**{f: getattr(spec, f) for f in spec.__dataclass_fields__}, **inpaint_changes}),
    }).resolved()  # fmt: skip
    return np.asarray(run(changed, components, identity=IDENTITY).images[0]).astype(np.int16)


def test_a_rounded_away_soft_mask_keeps_the_init_latent_and_an_unrounded_one_does_not(
    sd1: loader.Components,
) -> None:
    """A mask of 100/255 everywhere: rounded, A1111 keeps the init latent at every step and after the last,
    so the seed cannot matter; unrounded, 39 % of each step's result is the model's."""
    params = _params(mask=Image.new("L", (64, 64), 100))
    rounded = [_pixels(params, sd1, seed=seed) for seed in (1, 2)]
    assert np.array_equal(rounded[0], rounded[1])
    soft = [_pixels(params, sd1, seed=seed, round_mask=False) for seed in (1, 2)]
    assert not np.array_equal(soft[0], soft[1])
    assert not np.array_equal(soft[0], rounded[0])


def test_a_black_latent_mask_keeps_the_init_latent(sd1: loader.Components) -> None:
    params = _params()
    free = [_pixels(params, sd1, seed=seed) for seed in (1, 2)]
    assert not np.array_equal(free[0], free[1])
    black = Image.new("L", (64, 64), 0)
    kept = [_pixels(params, sd1, seed=seed, latent_mask=black) for seed in (1, 2)]
    assert np.array_equal(kept[0], kept[1])


# -- over HTTP ---------------------------------------------------------------------------------------------
def _b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.fixture(scope="module")
def client(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root = tmp_path_factory.mktemp("mask-fields")
    target = root / "models" / "Stable-diffusion" / "tiny.safetensors"
    target.parent.mkdir(parents=True)
    shutil.copyfile(make_tiny(Family.SD1).path, target)
    settings = Settings(models_dir=root / "models", data_dir=root / "data", device="cpu")
    server: Served
    with serve(settings) as server, httpx.Client(base_url=server.base, timeout=120) as http:
        yield http


def _img2img(client: httpx.Client, **fields: Any) -> tuple[np.ndarray, dict[str, Any]]:
    body = {
        "prompt": "a red circle", "init_images": [_b64(_init())], "mask": _b64(_box_mask()), "steps": 3,
        "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler", "denoising_strength": 0.75,
        "inpainting_fill": 1, "inpaint_full_res": False, **fields,
    }  # fmt: skip
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text[:2000]
    data = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(data["images"][0]))).convert("RGB")
    return np.asarray(image).astype(np.int16), infotext.parse(str(json.loads(data["info"])["infotexts"][0]))


def test_http_blur_x_and_y_apart(client: httpx.Client) -> None:
    apart, parsed_apart = _img2img(client, mask_blur_x=8, mask_blur_y=0)
    both, parsed_both = _img2img(client, mask_blur_x=8, mask_blur_y=8)
    assert not np.array_equal(apart, both)
    assert "Mask blur" not in parsed_apart
    assert parsed_both["Mask blur"] == "8"
    init = np.asarray(_init()).astype(np.int16)
    x1, y1, x2, y2 = BOX
    above = (slice(y1 - 3, y1), slice(x1, x2))  # no vertical blur: the mask is 0 right above the box
    assert np.array_equal(apart[above], init[above])
    assert not np.array_equal(both[above], init[above])
    beside = (slice(y1, y2), slice(x2, x2 + 3))  # horizontal blur reaches past the box's side
    assert not np.array_equal(apart[beside], init[beside])


def test_http_mask_round_and_latent_mask(client: httpx.Client) -> None:
    soft = _b64(Image.new("L", (64, 64), 100))
    rounded = [_img2img(client, mask=soft, seed=seed)[0] for seed in (1, 2)]
    assert np.array_equal(rounded[0], rounded[1])  # rounded to "keep": the seed cannot matter
    unrounded, _ = _img2img(client, mask=soft, mask_round=False)
    assert not np.array_equal(unrounded, rounded[0])
    black = _b64(Image.new("L", (64, 64), 0))
    kept = [_img2img(client, latent_mask=black, seed=seed)[0] for seed in (1, 2)]
    assert np.array_equal(kept[0], kept[1])
    assert not np.array_equal(kept[0], _img2img(client)[0])
    plain = {"mask": None, "inpainting_fill": 0}
    assert np.array_equal(_img2img(client, **plain, latent_mask=black)[0], _img2img(client, **plain)[0])
    small = {"latent_mask": _b64(Image.new("L", (32, 32), 0)), "inpainting_fill": 0}
    response = client.post("/sdapi/v1/img2img", json={
        "prompt": "x", "init_images": [_b64(_init())], "mask": _b64(_box_mask()), "steps": 3, "width": 64,
        "height": 64, "sampler_name": "Euler", **small,
    })  # fmt: skip
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][-1] == "latent_mask"
