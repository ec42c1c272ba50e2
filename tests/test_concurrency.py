"""No request holds a server thread while a job runs: 100 ``/sdapi/v1/txt2img`` calls held open on jobs that
a test gate blocks leave ``/sdapi/v1/progress``, ``/healthz`` and the UI page answering, then all complete.
Model maintenance (unload, refresh) runs on the worker thread, between jobs.

Real HTTP against the real app (uvicorn on a loopback port); the jobs are made to wait by a
``threading.Event`` in front of the pipeline (monkeypatched in this process), never by timing.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from latentstudio.config import Settings
from latentstudio.jobs import JobStatus
from latentstudio.jobs import running as running_module
from latentstudio.models.families import Family
from latentstudio.models.manager import ModelManager
from latentstudio.pipeline.run import run as pipeline_run
from tests.conftest import MakeTiny
from tests.sdapi_support import TXT2IMG_BASE, decode
from tests.serving import Served, models_root, serve, wait_until

CALLS = 100  # well past AnyIO's default thread pool (40 tokens)
ANSWER_WITHIN = 1.0  # seconds, for each probe of progress / health / the UI page
PROBES = ("/sdapi/v1/progress?skip_current_image=true", "/healthz", "/")
GATE_LIMIT = 300.0  # a gated job gives up after this long (only if a test forgot to open the gate)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every generation waits for this event before it runs the pipeline (opened at the end regardless)."""
    opened = threading.Event()

    def gated_run(*args: Any, **kwargs: Any) -> Any:
        if not opened.wait(GATE_LIMIT):
            raise RuntimeError("the test never opened the gate")
        return pipeline_run(*args, **kwargs)

    monkeypatch.setattr(running_module, "run", gated_run)
    yield opened
    opened.set()


@pytest.fixture
def served(make_tiny: MakeTiny, tmp_path: Path, gate: threading.Event) -> Iterator[Served]:
    models = models_root(make_tiny(Family.SD1).path, tmp_path)
    settings = Settings(models_dir=models, data_dir=tmp_path / "data", device="cpu", max_queue=2 * CALLS)
    with serve(settings) as running:
        try:
            yield running
        finally:
            gate.set()  # let held calls finish so the server can stop


async def _probe(client: httpx.AsyncClient, waiting: str) -> None:
    """Each probe path answers 200 within :data:`ANSWER_WITHIN` seconds."""
    for path in PROBES:
        started = time.monotonic()
        try:
            response = await asyncio.wait_for(client.get(path), ANSWER_WITHIN)
        except TimeoutError:
            pytest.fail(f"{path} did not answer within {ANSWER_WITHIN} s while {waiting}")
        elapsed = time.monotonic() - started
        if elapsed > ANSWER_WITHIN / 4:  # shown with a failure: how close the slow answers came
            print(f"{path}: {elapsed:.2f} s while {waiting}")
        assert response.status_code == 200, (path, response.text[:200])
        assert elapsed < ANSWER_WITHIN, path


async def _hundred_calls(served: Served, gate: threading.Event) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with (
        httpx.AsyncClient(base_url=served.base, timeout=600, limits=limits) as calls,
        httpx.AsyncClient(base_url=served.base, timeout=30) as probes,
    ):
        tasks = [
            asyncio.create_task(calls.post("/sdapi/v1/txt2img", json={**TXT2IMG_BASE, "seed": seed}))
            for seed in range(CALLS)
        ]
        deadline = time.monotonic() + 120
        while served.jobs.count() < CALLS:  # every call reached the server and queued its job
            await _probe(probes, f"{served.jobs.count()} of {CALLS} calls are queued")
            assert time.monotonic() < deadline, f"only {served.jobs.count()} of {CALLS} jobs were queued"
            await asyncio.sleep(0.1)
        for _ in range(5):  # all of them held open on the gated jobs
            await _probe(probes, f"{CALLS} calls wait on their jobs")
            await asyncio.sleep(0.1)
        assert not any(task.done() for task in tasks)
        assert served.jobs.count(JobStatus.DONE) == 0
        gate.set()
        while not all(task.done() for task in tasks):  # and while they run and complete
            await _probe(probes, f"{sum(not t.done() for t in tasks)} calls are still open")
            await asyncio.sleep(0.1)
        return [task.result() for task in tasks]


def test_a_hundred_waiting_calls_leave_the_server_answering(served: Served, gate: threading.Event) -> None:
    responses = asyncio.run(_hundred_calls(served, gate))
    for response in responses:
        assert response.status_code == 200, response.text[:300]
        (image,) = response.json()["images"]
        assert decode(image).size == (64, 64)
    assert served.jobs.count(JobStatus.DONE) == CALLS


def _record_threads(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """Wrap ``ModelManager.<name>`` so that each call records the thread it ran on."""
    threads: list[str] = []
    real: Callable[..., None] = getattr(ModelManager, name)

    def recorded(self: ModelManager, *args: Any, **kwargs: Any) -> None:
        threads.append(threading.current_thread().name)
        real(self, *args, **kwargs)

    monkeypatch.setattr(ModelManager, name, recorded)
    return threads


def _in_background(served: Served, path: str, payload: dict[str, Any] | None) -> dict[str, Any]:
    """POST ``path`` from a thread of its own (own client); ``["response"]`` once it answers."""
    result: dict[str, Any] = {}

    def call() -> None:
        with httpx.Client(base_url=served.base, timeout=120) as client:
            result["response"] = client.post(path, json=payload)

    result["thread"] = threading.Thread(target=call)
    result["thread"].start()
    return result


def test_unload_and_refresh_run_on_the_worker_between_jobs(
    served: Served, gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    unloads = _record_threads(monkeypatch, "unload")
    refreshes = _record_threads(monkeypatch, "refresh")
    worker = f"latentstudio-worker-{served.jobs.worker.manager.device}"
    with httpx.Client(base_url=served.base, timeout=120) as client:
        assert client.post("/sdapi/v1/unload-checkpoint").json() == {}  # idle worker: done at once
        assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
        assert (unloads, refreshes) == ([worker], [worker])

        # while a job runs, an unload waits for it (the job's weights are never dropped under it)
        job = _in_background(served, "/sdapi/v1/txt2img", TXT2IMG_BASE)
        wait_until(lambda: served.jobs.count(JobStatus.RUNNING) == 1, 60)
        _hang_up(served, "/sdapi/v1/txt2img", TXT2IMG_BASE)  # a client gone: its job still runs
        wait_until(lambda: served.jobs.count(JobStatus.QUEUED) == 1, 60)
        unloaded = _in_background(served, "/sdapi/v1/unload-checkpoint", None)
        unloading = unloaded["thread"]
        for _ in range(5):
            assert client.get("/healthz").status_code == 200
            time.sleep(0.1)
        assert unloading.is_alive()
        assert len(unloads) == 1
        gate.set()
        job["thread"].join(120)
        unloading.join(120)
    assert job["response"].status_code == 200
    assert unloaded["response"].json() == {}
    assert unloads == [worker, worker]
    wait_until(lambda: served.jobs.count(JobStatus.DONE) == 2, 120)  # the hung-up call's job too
    assert served.jobs.count(JobStatus.CANCELLED) == 0


def _hang_up(served: Served, path: str, payload: dict[str, Any]) -> None:
    """POST ``path`` and close the connection without reading the answer."""
    body = json.dumps(payload).encode()
    host, port = served.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        conn.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
