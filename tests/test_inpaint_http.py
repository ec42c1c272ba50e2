"""Inpainting over real HTTP with the built-in model, for every masked-content fill (0-3) × "only masked"
on/off × padding 0/32 × inverted mask on/off, through ``/sdapi/v1/img2img`` (A1111 clients such as
``webuiapi`` send ``inpaint_full_res: true, inpaint_full_res_padding: 0, inpainting_fill: 0`` by default) and
``/api/v1/jobs``. Each must give a picture whose pixels outside the blurred mask are the init image's, with
the infotext keys A1111 writes; and a job that fails inside the worker must reach the client as a stable
message, never a Python one.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

import latentstudio.jobs.running as running_module
from latentstudio.config import Settings
from latentstudio.jobs.running import INTERNAL_ERROR
from tests.serving import Served, serve

SIDE = 64
BOX = (16, 16, 48, 48)  # the white (repaint) square of the mask
BLUR = 4  # A1111's default; its kernel reaches 2·int(2.5·4 + 0.5) / 2 = 10 px past the box
REACH = 10
PROMPT = "a red circle in the center on a blue background"
COMBINATIONS = list(itertools.product((0, 1, 2, 3), (False, True), (0, 32), (False, True)))


def _png_b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1]))).convert("RGB")


def _init() -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))


def _mask() -> Image.Image:
    mask = Image.new("L", (SIDE, SIDE), 0)
    mask.paste(255, BOX)
    return mask


def _regions(invert: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, repainted)`` boolean maps: pixels the blur cannot reach keep the init image; the core of
    the repainted area (away from the blurred edge) is where the picture must change."""
    x1, y1, x2, y2 = BOX
    inside_reach = np.zeros((SIDE, SIDE), bool)
    inside_reach[y1 - REACH : y2 + REACH, x1 - REACH : x2 + REACH] = True
    core = np.zeros((SIDE, SIDE), bool)
    core[y1 + REACH : y2 - REACH, x1 + REACH : x2 - REACH] = True
    return (core, ~inside_reach) if invert else (~inside_reach, core)


def _check(picture: Image.Image, infotext: str, combo: tuple[int, bool, int, bool]) -> None:
    fill, only_masked, padding, invert = combo
    assert picture.size == (SIDE, SIDE)
    got, init = np.asarray(picture, dtype=np.int16), np.asarray(_init(), dtype=np.int16)
    kept, repainted = _regions(invert)
    assert np.array_equal(got[kept], init[kept]), f"{combo}: pixels outside the mask changed"
    assert np.abs(got[repainted] - init[repainted]).mean() > 2, f"{combo}: the masked area was not repainted"
    labels = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}
    assert ("Masked content: " in infotext) is (fill != 1)  # A1111 leaves out the default, "original"
    assert (f"Masked content: {labels[fill]}," in f"{infotext},") is (fill != 1)
    assert ("Inpaint area: Only masked" in infotext) is only_masked
    assert (f"Masked area padding: {padding}" in infotext) is only_masked
    assert ("Mask mode: Inpaint not masked" in infotext) is invert
    assert f"Mask blur: {BLUR}" in infotext


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("inpaint-http")
    (root / "models").mkdir()  # empty: the built-in model serves
    with serve(Settings(models_dir=root / "models", data_dir=root / "data", device="cpu")) as served:
        yield served


@pytest.fixture(scope="module")
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=120) as http:
        yield http


def _sdapi_body(combo: tuple[int, bool, int, bool]) -> dict[str, Any]:
    fill, only_masked, padding, invert = combo
    return {
        "prompt": PROMPT, "init_images": [_png_b64(_init())], "mask": _png_b64(_mask()), "mask_blur": BLUR,
        "inpainting_fill": fill, "inpaint_full_res": only_masked, "inpaint_full_res_padding": padding,
        "inpainting_mask_invert": int(invert), "denoising_strength": 0.75, "steps": 3, "width": SIDE,
        "height": SIDE, "seed": 1, "sampler_name": "Euler", "cfg_scale": 7,
    }  # fmt: skip


@pytest.mark.parametrize(
    "combo", COMBINATIONS, ids=lambda c: "fill{}-onlymasked{:d}-pad{}-invert{:d}".format(*c)
)
def test_sdapi_img2img_inpaints_every_combination(
    client: httpx.Client, combo: tuple[int, bool, int, bool]
) -> None:
    response = client.post("/sdapi/v1/img2img", json=_sdapi_body(combo))
    assert response.status_code == 200, response.text
    body = response.json()
    info = body["info"]
    _check(_decode(body["images"][0]), str(json.loads(info)["infotexts"][0]), combo)


def test_the_webuiapi_default_inpainting_call(client: httpx.Client) -> None:
    """The exact defaults of the ``webuiapi`` client's ``img2img`` (A1111 field names, ints for bools)."""
    body = {
        **_sdapi_body((0, True, 0, False)), "inpaint_full_res": True, "inpaint_full_res_padding": 0,
        "inpainting_fill": 0, "inpainting_mask_invert": 0, "resize_mode": 0, "include_init_images": False,
        "sampler_index": "Euler a", "restore_faces": False, "tiling": False, "styles": [], "n_iter": 1,
        "batch_size": 1, "cfg_scale": 7.0, "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0,
        "seed_resize_from_w": 0, "override_settings": {}, "override_settings_restore_afterwards": True,
    }  # fmt: skip
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "combo", COMBINATIONS, ids=lambda c: "fill{}-onlymasked{:d}-pad{}-invert{:d}".format(*c)
)
def test_native_jobs_inpaint_every_combination(
    client: httpx.Client, combo: tuple[int, bool, int, bool]
) -> None:
    fill, only_masked, padding, invert = combo
    body = {
        "kind": "img2img", "prompt": PROMPT, "init_image": _png_b64(_init()), "mask": _png_b64(_mask()),
        "mask_blur": BLUR, "inpainting_fill": fill, "inpaint_full_res": only_masked,
        "inpaint_full_res_padding": padding, "inpainting_mask_invert": invert, "denoising_strength": 0.75,
        "steps": 3, "width": SIDE, "height": SIDE, "seed": 1, "sampler": "Euler",
    }  # fmt: skip
    created = client.post("/api/v1/jobs", json=body)
    assert created.status_code == 202, created.text
    job = client.get(created.json()["url"], params={"wait": 60}).json()
    assert job["status"] == "done", job
    picture = Image.open(io.BytesIO(client.get(job["images"][0]["url"]).content)).convert("RGB")
    _check(picture, job["infotexts"][0], combo)


def test_an_internal_failure_is_a_stable_500_with_the_traceback_in_the_log(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A bug inside the worker (here the pipeline raising an unexpected error that carries a path) reaches
    the client as A1111's 500 envelope with a stable message; the job records the same message and the
    server log keeps the traceback."""

    def broken(*_: object, **__: object) -> None:
        raise KeyError(f"secret {tmp_path}/weights.bin")

    monkeypatch.setattr(running_module, "run", broken)
    with caplog.at_level(logging.ERROR, logger="latentstudio.jobs.running"):
        response = client.post(
            "/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64}
        )
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "JobFailed"
    assert body["detail"].startswith(INTERNAL_ERROR)
    assert "KeyError" not in response.text
    assert "secret" not in response.text
    job = client.get("/api/v1/jobs", params={"limit": 1}).json()["items"][0]
    assert (job["status"], job["error"]) == ("failed", body["detail"])
    assert job["id"] in body["detail"]
    logged = [r for r in caplog.records if r.exc_info and job["id"] in r.getMessage()]
    assert logged, "the traceback is not in the server log"
    assert "secret" in str(logged[0].exc_info[1])
