"""Extras as jobs, over real HTTP: ``extra-single-image`` / ``extra-batch-images`` with model upscalers (tiny
random-weight ESRGAN files built here) give what ``run_extras`` gives, appear on ``/api/v1/jobs`` as kind
``extras``, are refused at submission with the field named, fail loud in the worker on a bad face restorer
file, survive a restart while queued, and reach the web UI's backend."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from safetensors.torch import save_file

from latentstudio.config import Settings
from latentstudio.core import FieldError
from latentstudio.jobs import ExtrasSpec, JobService, JobStatus
from latentstudio.models.families import Family
from latentstudio.models.manager import ModelManager
from latentstudio.pipeline.images import png_bytes
from latentstudio.postprocess.extras import ExtrasOptions, run_extras, run_extras_batch
from latentstudio.postprocess.faces import FaceRestorers
from latentstudio.postprocess.upscalers import UpscalerRegistry
from latentstudio.server.ui_backend import SdapiBackend
from tests.conftest import MakeTiny
from tests.esrgan_files import random_esrgan_state
from tests.sdapi_support import EXTRAS_BASE, decode, refused_field
from tests.serving import Served, models_root, serve

MAX_PIXELS = 300_000
PARAMETERS = "a cat «ü»\nSteps: 20, Sampler: Euler, Seed: 1, Size: 24x16"


def _upscaler_files(models: Path) -> Path:
    """``models/ESRGAN/{4x,2x}-Tiny.safetensors`` and, as ``models/GFPGAN``'s weights, an ESRGAN file (a
    face restorer that is present but of the wrong architecture)."""
    for folder in ("ESRGAN", "GFPGAN"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    save_file(random_esrgan_state(seed=3), models / "ESRGAN" / "4x-Tiny.safetensors")
    save_file(random_esrgan_state(scale=2, seed=4), models / "ESRGAN" / "2x-Tiny.safetensors")
    save_file(random_esrgan_state(seed=5), models / "GFPGAN" / "GFPGANv1.4.safetensors")
    return models


@pytest.fixture(scope="module")
def server(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("extras")
    models = _upscaler_files(models_root(make_tiny(Family.SD1).path, root))
    settings = Settings(models_dir=models, data_dir=root / "data", device="cpu", max_image_pixels=MAX_PIXELS)
    with serve(settings) as served:
        yield served


@pytest.fixture
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=300) as c:
        yield c


def _models(server: Served) -> Path:
    return Path(server.app.state.services.settings.models_dir)


def _source(
    width: int = 24, height: int = 16, seed: int = 0, parameters: str | None = PARAMETERS
) -> Image.Image:
    pixels = bytes((seed * 31 + i * 7) % 251 for i in range(width * height * 3))
    image = Image.frombytes("RGB", (width, height), pixels)
    if parameters:
        image.info["parameters"] = parameters
    return image


def _b64(image: Image.Image) -> str:
    """Base64 PNG keeping the ``parameters`` text."""
    return base64.b64encode(png_bytes(image, image.info.get("parameters"))).decode("ascii")


def _direct(server: Served, images: list[Image.Image], **options: Any) -> list[Image.Image]:
    """``run_extras`` called directly with a fresh registry over the same folders."""
    models = _models(server)
    results = run_extras_batch(
        images, ExtrasOptions(**options), upscalers=UpscalerRegistry(models), faces=FaceRestorers(models)
    )
    return [r.image for r in results]


def _newest_job(client: httpx.Client) -> dict[str, Any]:
    page = client.get("/api/v1/jobs", params={"limit": 1}).json()
    return dict(page["items"][0])


@pytest.mark.parametrize("scale", [2, 4])
def test_single_image_with_a_model_upscaler_runs_as_a_job(
    client: httpx.Client, server: Served, scale: int
) -> None:
    source = _source()
    body = {**EXTRAS_BASE, "upscaler_1": "4x-Tiny", "upscaling_resize": scale, "image": _b64(source)}
    response = client.post("/sdapi/v1/extra-single-image", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    image = decode(result["image"])
    assert image.size == (24 * scale, 16 * scale)
    assert (
        image.tobytes()
        == _direct(server, [source], upscaler_1="4x-Tiny", upscaling_resize=scale)[0].tobytes()
    )
    text = f"Postprocess upscale by: {float(scale)}, Postprocess upscaler: 4x-Tiny"
    assert result["html_info"] == f"<p>{text}</p>"
    assert (image.info["parameters"], image.info["postprocessing"]) == (PARAMETERS, text)
    job = _newest_job(client)
    assert (job["kind"], job["status"], job["source"], job["params"]) == ("extras", "done", "sdapi", None)
    assert job["extras"]["upscaler_1"] == "4x-Tiny"
    assert (job["extras"]["upscaling_resize"], job["extras"]["images"]) == (scale, 1)
    assert (job["step"], job["total"], job["infotexts"]) == (1, 1, [text])
    assert job["images"][0]["seed"] == -1
    served = client.get(job["images"][0]["url"])
    assert served.content == base64.b64decode(result["image"])  # the response is the PNG the job wrote


def test_batch_with_two_upscalers_blended(client: httpx.Client, server: Served) -> None:
    sources = [_source(24, 16, seed=1), _source(16, 32, seed=2, parameters=None)]
    options = {"upscaler_1": "2x-Tiny", "upscaler_2": "Lanczos", "extras_upscaler_2_visibility": 0.5}
    body = {
        **EXTRAS_BASE, **options, "upscaling_resize": 3,
        "imageList": [{"data": _b64(s), "name": f"{i}.png"} for i, s in enumerate(sources)],
    }  # fmt: skip
    response = client.post("/sdapi/v1/extra-batch-images", json=body)
    assert response.status_code == 200, response.text
    images = [decode(b64) for b64 in response.json()["images"]]
    expected = _direct(server, sources, **options, upscaling_resize=3)
    assert [i.size for i in images] == [(72, 48), (48, 96)]
    assert [i.tobytes() for i in images] == [e.tobytes() for e in expected]
    assert images[0].info["parameters"] == PARAMETERS
    assert "parameters" not in images[1].info
    assert response.json()["html_info"] == (
        "<p>Postprocess upscale by: 3.0, Postprocess upscaler: 2x-Tiny, Postprocess upscaler 2: Lanczos</p>"
    )
    job = _newest_job(client)
    assert (job["kind"], job["step"], job["total"], job["extras"]["images"]) == ("extras", 2, 2, 2)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1", "available: None, Lanczos, Nearest, 2x-Tiny, 4x-Tiny"),
        ({"upscaler_2": "../ESRGAN/4x-Tiny"}, "upscaler_2", "could not find upscaler named"),
        ({"codeformer_visibility": 0.5}, "codeformer_visibility", "CodeFormer needs its weights"),
        ({"upscaler_1": "4x-Tiny", "upscaling_resize": 8}, "upscaling_resize", f"more than {MAX_PIXELS}"),
    ],
)
def test_refused_before_queueing_with_the_field_named(
    client: httpx.Client, server: Served, change: dict[str, Any], field: str, message: str
) -> None:
    jobs = server.jobs.count()
    for endpoint, images in (
        ("extra-single-image", {"image": _b64(_source(128, 96))}),
        ("extra-batch-images", {"imageList": [{"data": _b64(_source(128, 96))}]}),
    ):
        response = client.post(f"/sdapi/v1/{endpoint}", json={**EXTRAS_BASE, **images, **change})
        assert refused_field(response) == field
        assert message in response.json()["detail"][0]["msg"]
    assert server.jobs.count() == jobs  # nothing was queued
    empty = client.post("/sdapi/v1/extra-batch-images", json={**EXTRAS_BASE, "imageList": []})
    assert refused_field(empty) == "imageList"


def test_the_native_job_api_queues_extras_with_a_job_id(client: httpx.Client, server: Served) -> None:
    """``POST /api/v1/jobs`` with kind ``extras``: 202 and a job id at once, the job's images are what
    ``run_extras`` makes; refusals name the field (``images.N`` for a bad picture) and queue nothing."""
    sources = [_source(24, 16, seed=6), _source(16, 24, seed=7, parameters=None)]
    options = {"upscaler_1": "2x-Tiny", "upscaling_resize": 2}
    body = {"kind": "extras", "images": [_b64(s) for s in sources], **options}
    created = client.post("/api/v1/jobs", json=body)
    assert created.status_code == 202, created.text
    job = client.get(created.json()["url"], params={"wait": 60}).json()
    assert (job["kind"], job["status"], job["source"], job["params"]) == ("extras", "done", "api", None)
    assert (job["extras"]["images"], job["extras"]["upscaler_1"], job["total"]) == (2, "2x-Tiny", 2)
    got = [Image.open(io.BytesIO(client.get(i["url"]).content)) for i in job["images"]]
    expected = _direct(server, sources, **options)
    assert [g.size for g in got] == [(48, 32), (32, 48)]
    assert [g.convert("RGB").tobytes() for g in got] == [e.tobytes() for e in expected]
    assert got[0].info["parameters"] == PARAMETERS

    jobs = server.jobs.count()
    bad = [
        ({**body, "upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1"),
        ({**body, "images": [body["images"][0], "bm90IGFuIGltYWdl"]}, "images.1"),
        ({**body, "images": []}, "extras.images"),  # pydantic's errors name the kind too
        ({**body, "upscaling_crop": "sideways"}, "extras.upscaling_crop"),
    ]
    for payload, field in bad:
        assert refused_field(client.post("/api/v1/jobs", json=payload)) == field
    unknown = client.post("/api/v1/jobs", json={**body, "kind": "inpaint"})
    assert "kind must be txt2img, img2img or extras" in unknown.text
    assert server.jobs.count() == jobs


def test_face_restoration_runs_in_the_worker(client: httpx.Client) -> None:
    """GFPGAN's folder holds an ESRGAN file: accepted at submission (weights present), then the worker loads
    it for the job and the job fails naming the mismatch (a real GFPGAN is the slow test below)."""
    body = {**EXTRAS_BASE, "image": _b64(_source()), "gfpgan_visibility": 0.5}
    response = client.post("/sdapi/v1/extra-single-image", json=body)
    assert response.status_code == 500
    assert "holds a ESRGAN model, not GFPGAN" in response.json()["detail"]
    job = _newest_job(client)
    assert (job["kind"], job["status"], job["extras"]["gfpgan_visibility"]) == ("extras", "failed", 0.5)
    assert "holds a ESRGAN model, not GFPGAN" in job["error"]
    assert "FaceRestorerError" not in job["error"]  # the user's message, never a Python class name


def test_listings_and_the_ui_backend(client: httpx.Client, server: Served) -> None:
    upscalers = client.get("/sdapi/v1/upscalers").json()
    assert [(u["name"], u["model_name"], u["scale"]) for u in upscalers] == [
        ("None", None, 4.0), ("Lanczos", None, 4.0), ("Nearest", None, 4.0), ("2x-Tiny", "ESRGAN", 2.0),
        ("4x-Tiny", "ESRGAN", 4.0),
    ]  # fmt: skip
    assert [f["name"] for f in client.get("/sdapi/v1/face-restorers").json()] == ["GFPGAN"]
    assert client.get("/sdapi/v1/realesrgan-models").json() == []
    backend = SdapiBackend(server.app.state.services)
    catalog = backend.catalog()
    assert list(catalog.upscalers) == [u["name"] for u in upscalers]
    assert list(catalog.face_restorers) == ["GFPGAN"]
    source = _source()
    image, text = backend.extras(source, {"upscaler_1": "4x-Tiny", "upscaling_resize": 2})
    assert image.tobytes() == _direct(server, [source], upscaler_1="4x-Tiny")[0].tobytes()
    assert text == "Postprocess upscale by: 2.0, Postprocess upscaler: 4x-Tiny"
    assert (_newest_job(client)["source"], _newest_job(client)["kind"]) == ("ui", "extras")
    with pytest.raises(FieldError) as refused:
        backend.extras(source, {"upscaler_1": "nope"})
    assert refused.value.field == "upscaler_1"
    with pytest.raises(FieldError, match="not GFPGAN") as failed:
        backend.extras(source, {"gfpgan_visibility": 1.0})
    assert failed.value.field == "job"


def test_a_queued_extras_job_survives_a_restart_and_needs_no_checkpoint(tmp_path: Path) -> None:
    models = _upscaler_files(tmp_path / "models")  # no checkpoint at all
    settings = Settings(models_dir=models, data_dir=tmp_path / "data", device="cpu", builtin_model=False)
    source = _source(parameters=PARAMETERS)
    options = ExtrasOptions(upscaler_1="4x-Tiny", upscaling_resize=2.5)
    before = JobService(settings, ModelManager(settings))  # never started: the job stays queued
    job_id = before.submit(ExtrasSpec(options, (source,))).id
    before.stop()
    after = JobService(settings, ModelManager(settings))
    after.start()
    try:
        record = after.wait(job_id, 120)
        assert record.status is JobStatus.DONE, record.error
        with Image.open(after.image_path(record.images[0].id)) as written:
            written.load()
            expected = run_extras(
                source, options, upscalers=UpscalerRegistry(models), faces=FaceRestorers(models)
            )
            assert written.tobytes() == expected.image.tobytes()
            assert written.size == (56, 40)
            assert written.info["parameters"] == PARAMETERS
            assert written.info["postprocessing"] == expected.postprocessing == record.images[0].infotext
    finally:
        after.stop()


@pytest.mark.slow
def test_gfpgan_over_http_with_full_size_random_weights(client: httpx.Client, server: Served) -> None:
    """A real GFPGANv1Clean architecture (≈ 80 M random parameters) through the job: the result equals
    ``run_extras`` called directly."""
    import torch
    from spandrel.architectures.GFPGAN import GFPGAN

    models = _models(server)
    path = models / "GFPGAN" / "GFPGANv1.4.safetensors"
    original = path.read_bytes()
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in GFPGAN().state_dict().items()}, path)
    try:
        source = _source(64, 48)
        body = {**EXTRAS_BASE, "upscaler_1": "None", "image": _b64(source), "gfpgan_visibility": 0.4}
        response = client.post("/sdapi/v1/extra-single-image", json=body)
        assert response.status_code == 200, response.text
        image = decode(response.json()["image"])
        expected = _direct(server, [source], gfpgan_visibility=0.4)[0]
        assert image.size == (64, 48)
        assert image.tobytes() == expected.tobytes()
        assert response.json()["html_info"] == "<p>GFPGAN visibility: 0.4</p>"
    finally:
        path.write_bytes(original)
