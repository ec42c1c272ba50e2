"""Bad input to ``/sdapi/v1`` over real HTTP: every case is a 4xx naming the field (where one is to blame),
nothing is queued, the server stays up and the next normal job succeeds."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import MakeTiny
from tests.sdapi_support import (
    EXTRAS_BASE,
    IMG2IMG_BASE,
    TXT2IMG_BASE,
    bomb_png_b64,
    build_root,
    generate,
    init_image_b64,
)
from tests.serving import Served, serve

TRAVERSAL = "../../../../etc/passwd"
NOT_AN_IMAGE = base64.b64encode(b"just some text, not an image").decode()
T, I, E = "txt2img", "img2img", "extra-single-image"  # noqa: E741


def _txt(**fields: Any) -> dict[str, Any]:
    return {**TXT2IMG_BASE, **fields}


def _img(**fields: Any) -> dict[str, Any]:
    return {**IMG2IMG_BASE, "init_images": [init_image_b64()], **fields}


def _ext(**fields: Any) -> dict[str, Any]:
    return {**EXTRAS_BASE, "image": init_image_b64(), **fields}


# (endpoint, JSON body or raw text, the field the 422 names; None: a 4xx that names no single field)
CASES: list[tuple[str, Any, str | None]] = [
    # sizes, steps, numbers
    (T, _txt(width=4096), "width"),
    (T, _txt(height=0), "height"),
    (T, _txt(width=100), "width"),
    (T, _txt(steps=151), "steps"),
    (T, _txt(steps=-1), "steps"),
    (T, '{"prompt": "x", "cfg_scale": NaN}', "cfg_scale"),
    (T, '{"prompt": "x", "cfg_scale": Infinity}', "cfg_scale"),
    (T, '{"prompt": "x", "s_noise": -Infinity}', "s_noise"),
    (T, _txt(subseed_strength=2), "subseed_strength"),
    (T, _txt(eta=-1), "eta"),
    (T, _txt(batch_size=65), "batch_size"),
    (T, _txt(batch_size=8, n_iter=9), ""),
    (T, _txt(seed=2**64), "seed"),
    (T, _txt(prompt="x" * 20_001), "prompt"),
    (T, _txt(negative_prompt="x" * 20_001), "negative_prompt"),
    (T, '{"prompt": "\\ud800"}', "prompt"),
    # wrong types and shapes
    (T, _txt(steps="ten"), "steps"),
    (T, _txt(width=[64]), "width"),
    (T, _txt(styles="framed"), "styles"),
    (T, _txt(override_settings="CLIP_stop_at_last_layers=2"), "override_settings"),
    (T, _txt(no_such_field=1), "no_such_field"),
    (T, "this is not json", None),
    (T, "[1, 2, 3]", None),
    # names: unknown and path traversal in every field that names something
    (T, _txt(sampler_name="Euler z"), "sampler_name"),
    (T, _txt(sampler_name=TRAVERSAL), "sampler_name"),
    (T, _txt(sampler_index=TRAVERSAL), "sampler_index"),
    (T, _txt(scheduler=TRAVERSAL), "scheduler"),
    (T, _txt(styles=[TRAVERSAL]), "styles"),
    (T, _txt(override_settings={"sd_model_checkpoint": TRAVERSAL}), "override_settings.sd_model_checkpoint"),
    (
        T,
        _txt(override_settings={"sd_model_checkpoint": "/etc/passwd"}),
        "override_settings.sd_model_checkpoint",
    ),
    (T, _txt(override_settings={"sd_vae": TRAVERSAL}), "override_settings.sd_vae"),
    (T, _txt(override_settings={TRAVERSAL: 1}), f"override_settings.{TRAVERSAL}"),
    (T, _txt(script_name=TRAVERSAL), "script_name"),
    (T, _txt(refiner_checkpoint=TRAVERSAL), "refiner_checkpoint"),
    (T, _txt(alwayson_scripts={TRAVERSAL: {"args": []}}), f"alwayson_scripts.{TRAVERSAL}"),
    (T, {"infotext": "a\nSteps: 999, Sampler: Euler, Seed: 1"}, "infotext"),
    # features that would change the picture
    (T, _txt(enable_hr=True, hr_checkpoint_name=TRAVERSAL), "hr_checkpoint_name"),
    (T, _txt(enable_hr=True, hr_scheduler=TRAVERSAL), "hr_scheduler"),
    (T, _txt(s_churn=500.0, sampler_index="Euler"), "s_churn"),  # out of range
    (T, _txt(override_settings={"skip_early_cond": 0.5}), "override_settings.skip_early_cond"),
    # images
    (I, _img(init_images=["not base64 at all!!"]), "init_images.0"),
    (I, _img(init_images=["data:image/png;base64,@@@@"]), "init_images.0"),
    (I, _img(init_images=[NOT_AN_IMAGE]), "init_images.0"),
    (I, _img(init_images=[bomb_png_b64()]), "init_images.0"),
    (I, _img(init_images=["http://169.254.169.254/latest/meta-data"]), "init_images.0"),
    (I, _img(init_images=["file:///etc/passwd"]), "init_images.0"),
    (I, _img(init_images=[TRAVERSAL]), "init_images.0"),
    (I, _img(init_images=[""]), "init_images.0"),
    (I, _img(mask=TRAVERSAL), "mask"),
    (I, _img(resize_mode=7), "resize_mode"),
    (I, _img(denoising_strength=1.5), "denoising_strength"),
    (E, _ext(image="%%%"), "image"),
    (E, _ext(image=bomb_png_b64()), "image"),
    (E, _ext(upscaler_1=TRAVERSAL), "upscaler_1"),
    (E, _ext(upscaler_2="R-ESRGAN 4x+"), "upscaler_2"),
    (E, _ext(upscaling_resize=0), "upscaling_resize"),
    (E, _ext(upscaling_resize=100), "upscaling_resize"),
    (E, _ext(codeformer_visibility=1), "codeformer_visibility"),
    ("extra-batch-images", {**EXTRAS_BASE, "imageList": [{"data": NOT_AN_IMAGE}]}, "imageList.0.data"),
    ("png-info", {"image": NOT_AN_IMAGE}, "image"),
    ("png-info", {"image": bomb_png_b64(20_000, 20_000)}, "image"),
    # settings
    ("options", {"sd_model_checkpoint": TRAVERSAL}, "sd_model_checkpoint"),
    ("options", {"sd_vae": TRAVERSAL}, "sd_vae"),
    ("options", {"outdir_samples": 5}, "outdir_samples"),
    ("options", {"no_such_option": True}, "no_such_option"),
    ("options", [1, 2], None),
]


@pytest.fixture(scope="module")
def server(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(build_root(make_tiny, tmp_path_factory.mktemp("sdapi-bad"))) as served:
        yield served


@pytest.fixture(scope="module")
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=60) as c:
        yield c


def _post(client: httpx.Client, endpoint: str, body: Any) -> httpx.Response:
    if isinstance(body, str):
        headers = {"content-type": "application/json"}
        return client.post(
            f"/sdapi/v1/{endpoint}", content=body.encode("utf-8", "surrogatepass"), headers=headers
        )
    return client.post(f"/sdapi/v1/{endpoint}", json=body)


@pytest.mark.parametrize(
    ("endpoint", "body", "field"), CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)]
)
def test_bad_input_is_4xx(
    server: Served, client: httpx.Client, endpoint: str, body: Any, field: str | None
) -> None:
    queued = server.jobs.count()
    response = _post(client, endpoint, body)
    assert 400 <= response.status_code < 500, response.text[:500]
    if field is not None:
        assert response.status_code == 422
        detail = response.json()["detail"][0]
        assert ".".join(str(p) for p in detail["loc"][1:]) == field, detail
        assert detail["msg"]
    assert "root:" not in response.text  # never a file's contents
    assert server.jobs.count() == queued  # nothing was queued


def test_a_60_mb_body_is_refused(client: httpx.Client) -> None:
    body = json.dumps({"prompt": "x" * (60 * 1024 * 1024)})
    response = client.post("/sdapi/v1/txt2img", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_the_server_is_still_up_and_generates(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    body = generate(client, "txt2img", {**TXT2IMG_BASE, "seed": 1234})
    assert body["info"]["seed"] == 1234
    assert len(body["images"]) == 1
