"""The native job API over real HTTP (uvicorn on a loopback port) with the tiny checkpoint."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from latentstudio.config import Settings
from latentstudio.models.families import Family
from tests.conftest import MakeTiny
from tests.serving import FAST, Served, models_root, serve, wait_job, wait_until

SLOW = {"steps": 150, "width": 64, "height": 64, "sampler": "Euler"}  # long enough to act on mid-run


@pytest.fixture(scope="module")
def server(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("api")
    models = models_root(make_tiny(Family.SD1).path, root)
    settings = Settings(models_dir=models, data_dir=root / "data", device="cpu", max_queue=3, preview_every=2)
    with serve(settings) as served:
        yield served


@pytest.fixture
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=60) as c:
        yield c
    server.jobs.interrupt()  # never leave a long job running into the next test
    for job in server.jobs.list(limit=50):
        if not job.status.terminal:
            server.jobs.cancel(job.id)
            server.jobs.wait(job.id, 60)


def _submit(client: httpx.Client, **payload: object) -> str:
    response = client.post("/api/v1/jobs", json=payload)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _running(client: httpx.Client, job_id: str, min_step: int = 1) -> dict[str, object]:
    view: dict[str, object] = {}

    def reached() -> bool:
        nonlocal view
        view = client.get(f"/api/v1/jobs/{job_id}").json()
        return view["status"] == "running" and int(view["step"]) >= min_step  # type: ignore[call-overload]

    wait_until(reached, 120)
    return view


def test_submit_get_list_and_fetch_images_by_id(client: httpx.Client) -> None:
    job_id = _submit(client, prompt="a red circle", seed=42, batch_size=2, **FAST)
    view = wait_job(client, job_id)
    assert view["status"] == "done", view
    assert [i["seed"] for i in view["images"]] == [42, 43]  # type: ignore[index, union-attr]
    assert view["params"]["seed"] == 42
    assert view["progress"] == 1.0
    for image in view["images"]:  # type: ignore[union-attr]
        response = client.get(image["url"])
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.headers["x-content-type-options"] == "nosniff"
        png = Image.open(BytesIO(response.content))
        assert png.size == (64, 64)
        assert png.info["parameters"] == image["infotext"]
        assert f"Seed: {image['seed']}" in image["infotext"]
    done = client.get("/api/v1/jobs", params={"status": "done", "limit": 5}).json()
    assert job_id in [j["id"] for j in done["items"]]
    assert done["total"] >= 1
    queued = client.get("/api/v1/jobs", params={"status": "queued"}).json()
    assert job_id not in [j["id"] for j in queued["items"]]
    assert client.get("/api/v1/jobs/0123456789abcdef0123456789abcdef").status_code == 404


def test_random_seed_is_resolved_and_recorded(client: httpx.Client) -> None:
    job_id = _submit(client, prompt="x", seed=-1, **FAST)
    view = client.get(f"/api/v1/jobs/{job_id}", params={"wait": 60}).json()  # long poll: one request
    assert view["status"] == "done"
    seed = view["params"]["seed"]  # type: ignore[index]
    assert 0 <= seed < 2**32
    assert view["images"][0]["seed"] == seed


def test_two_concurrent_jobs_both_succeed_with_their_seeds(client: httpx.Client) -> None:
    ids: dict[int, str] = {}

    def submit(seed: int) -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=60) as own:
            ids[seed] = _submit(own, prompt="a square", seed=seed, **FAST)

    threads = [threading.Thread(target=submit, args=(seed,)) for seed in (7, 1000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pixels = {}
    for seed, job_id in ids.items():
        view = wait_job(client, job_id)
        assert view["status"] == "done"
        image = view["images"][0]  # type: ignore[index]
        assert image["seed"] == seed
        assert f"Seed: {seed}," in image["infotext"]
        pixels[seed] = Image.open(BytesIO(client.get(image["url"]).content)).tobytes()
    assert pixels[7] != pixels[1000]
    again = wait_job(client, _submit(client, prompt="a square", seed=7, **FAST))
    repeat = Image.open(BytesIO(client.get(again["images"][0]["url"]).content))  # type: ignore[index]
    assert repeat.tobytes() == pixels[7]


def test_progress_rises_with_eta_and_preview_then_interrupt_keeps_the_image(
    client: httpx.Client, server: Served
) -> None:
    job_id = _submit(client, prompt="a circle", seed=1, **SLOW)
    first = _running(client, job_id, 1)
    later = _running(client, job_id, int(first["step"]) + 2)  # type: ignore[call-overload]
    assert 0 < first["progress"] < later["progress"] < 1  # type: ignore[operator]
    assert later["total"] == 150
    assert later["eta_seconds"] is not None
    progress = server.jobs.progress()
    assert progress.job_id == job_id
    assert progress.step >= 3
    assert progress.eta is not None
    assert progress.preview is not None
    assert progress.preview.size == (8, 8)
    view = client.post(f"/api/v1/jobs/{job_id}/interrupt").json()
    assert view["status"] == "done"
    assert view["interrupted"] is True
    assert int(view["step"]) < 150
    assert len(view["images"]) == 1


def test_cancel_a_queued_and_a_running_job(client: httpx.Client) -> None:
    running = _submit(client, prompt="a", seed=1, **SLOW)
    queued = _submit(client, prompt="b", seed=2, **FAST)
    _running(client, running)
    cancelled = client.delete(f"/api/v1/jobs/{queued}").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["images"] == []
    stopped = client.delete(f"/api/v1/jobs/{running}").json()
    assert stopped["status"] == "cancelled"
    assert stopped["images"] == []
    assert client.delete(f"/api/v1/jobs/{queued}").json()["status"] == "cancelled"  # idempotent
    after = wait_job(client, _submit(client, prompt="c", **FAST))
    assert after["status"] == "done"  # the worker goes on


def test_full_queue_answers_429_with_retry_after(client: httpx.Client) -> None:
    running = _submit(client, prompt="a", **SLOW)
    _running(client, running)
    waiting = [_submit(client, prompt=f"q{i}", **FAST) for i in range(3)]  # max_queue=3
    response = client.post("/api/v1/jobs", json={"prompt": "one too many", **FAST})
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert "queue is full" in response.json()["detail"]
    client.delete(f"/api/v1/jobs/{waiting[0]}")
    assert client.post("/api/v1/jobs", json={"prompt": "fits again", **FAST}).status_code == 202


def test_event_stream_reports_the_life_of_a_job(client: httpx.Client) -> None:
    events: list[tuple[str, dict[str, object]]] = []
    subscribed = threading.Event()
    job: dict[str, str] = {}

    def listen() -> None:
        with (
            httpx.Client(base_url=str(client.base_url), timeout=120) as own,
            own.stream("GET", "/api/v1/events") as stream,
        ):
            kind = ""
            for line in stream.iter_lines():
                subscribed.set()
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    events.append((kind, data))  # filtered below: the id is known only after the POST
                    if kind in ("done", "failed") and data["job_id"] == job.get("id"):
                        return

    thread = threading.Thread(target=listen)
    thread.start()
    assert subscribed.wait(30)
    response = client.post("/api/v1/jobs", json={"prompt": "events", "seed": 3, **FAST, "steps": 4})
    job["id"] = response.json()["id"]
    thread.join(120)
    events = [(k, d) for k, d in events if d["job_id"] == job["id"]]
    kinds = [k for k, _ in events]
    assert kinds == ["queued", "started", "step", "step", "step", "step", "done"]
    steps = [d for k, d in events if k == "step"]
    assert [d["step"] for d in steps] == [1, 2, 3, 4]
    assert steps[1]["preview"] is not None
    assert steps[0]["preview"] is None
    assert Image.open(BytesIO(base64.b64decode(steps[1]["preview"]))).format == "PNG"  # type: ignore[arg-type]
    assert len(events[-1][1]["image_ids"]) == 1  # type: ignore[arg-type]
    filtered = client.get(f"/api/v1/events?job_id={job['id']}")  # a finished job: one event, then the end
    assert "event: done" in filtered.text


def test_img2img_job_and_image_field_errors(client: httpx.Client, tmp_path: Path) -> None:
    buffer = BytesIO()
    Image.new("RGB", (80, 48), (10, 200, 30)).save(buffer, format="PNG")
    init = base64.b64encode(buffer.getvalue()).decode()
    payload = {"kind": "img2img", "prompt": "x", "seed": 5, "denoising_strength": 0.5, **FAST}
    view = wait_job(client, _submit(client, init_image="data:image/png;base64," + init, **payload))
    assert view["status"] == "done"
    assert view["kind"] == "img2img"
    assert view["params"]["denoising_strength"] == 0.5  # type: ignore[index]
    for bad, message in [
        ("not base64!", "base64"),
        ("https://example.com/cat.png", "URL"),
        (base64.b64encode(b"GIF89a garbage").decode(), "decode"),
    ]:
        response = client.post("/api/v1/jobs", json={**payload, "init_image": bad})
        assert response.status_code == 422
        detail = response.json()["detail"][0]
        assert detail["loc"][-1] == "init_image"
        assert message in detail["msg"]
    assert client.post("/api/v1/jobs", json={"kind": "img2img", "prompt": "x"}).status_code == 422


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 151}, "steps"),
        ({"width": 4096}, "width"),
        ({"width": 65}, "width"),
        ({"cfg_scale": "nan"}, "cfg_scale"),
        ({"batch_size": 16, "n_iter": 8}, "batch_size"),
        ({"seed": 2**40}, "seed"),
        ({"prompt": "x" * 20_001}, "prompt"),
        ({"sampler": "Nope"}, "sampler"),
        ({"scheduler": "Nope"}, "scheduler"),
        ({"checkpoint": "../../etc/passwd"}, "checkpoint"),
        ({"vae": "/etc/passwd"}, "vae"),
        ({"kind": "txt3img"}, "kind"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(
    client: httpx.Client, payload: dict[str, object], field: str
) -> None:
    started = time.monotonic()
    response = client.post("/api/v1/jobs", json={"prompt": "x", **payload})
    assert response.status_code == 422, response.text
    assert time.monotonic() - started < 1.0
    text = json.dumps(response.json()["detail"])
    assert field in text or (field == "batch_size" and "batch_size × n_iter" in text)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/images/../../jobs.sqlite3",
        "/api/v1/images/..%2f..%2fjobs.sqlite3",
        "/api/v1/images/%2e%2e%2fjobs.sqlite3",
        "/api/v1/images/0123456789abcdef0123456789abcdef",
        "/api/v1/images/..\\..\\jobs.sqlite3",
        "/api/v1/images/%2Fetc%2Fpasswd",
        "/api/v1/jobs/..%2f..%2fjobs.sqlite3",
    ],
)
def test_files_are_served_by_id_only(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert b"SQLite" not in response.content
    assert b"root:" not in response.content


def test_health_and_every_route_in_the_openapi_schema(client: httpx.Client, server: Served) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "detail": None}
    assert client.get("/readyz").status_code == 200
    schema = client.get("/openapi.json").json()
    paths = set(schema["paths"])
    expected = {
        "/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/interrupt",
        "/api/v1/images/{image_id}", "/api/v1/events", "/healthz", "/readyz",
    }  # fmt: skip
    assert expected <= paths
    routes = {getattr(r, "path", "") for r in server.app.routes if getattr(r, "include_in_schema", False)}
    assert routes <= paths


def test_hires_and_inpainting_jobs(client: httpx.Client) -> None:
    hires = {"prompt": "x", "seed": 3, **FAST, "hires": {"scale": 1.5, "steps": 2, "upscaler": "Lanczos"}}
    view = wait_job(client, _submit(client, **hires))
    assert view["status"] == "done", view
    image = Image.open(BytesIO(client.get(view["images"][0]["url"]).content))  # type: ignore[index]
    assert image.size == (96, 96)
    assert "Hires upscaler: Lanczos" in view["images"][0]["infotext"]  # type: ignore[index]

    def b64(picture: Image.Image) -> str:
        buffer = BytesIO()
        picture.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    init = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    payload = {
        "kind": "img2img",
        "prompt": "x",
        **FAST,
        "init_image": b64(init),
        "mask": b64(mask),
        "mask_blur": 0,
    }
    view = wait_job(client, _submit(client, **payload))
    assert view["status"] == "done", view
    out = np.asarray(Image.open(BytesIO(client.get(view["images"][0]["url"]).content)).convert("RGB"))  # type: ignore[index]
    assert (out[:16] == (200, 40, 40)).all()  # outside the mask: the init image
    bad = client.post("/api/v1/jobs", json={**payload, "mask": "not base64!"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"][-1] == "mask"
