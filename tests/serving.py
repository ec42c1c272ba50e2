"""Helpers for API tests: a models folder with the tiny checkpoint, and the real app served by uvicorn on
a free loopback port in a background thread (real HTTP, real lifespan)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from latentstudio.config import Settings
from latentstudio.jobs import JobService
from latentstudio.server import build_app

FAST = {"steps": 3, "width": 64, "height": 64, "sampler": "Euler"}


def models_root(tiny_checkpoint: Path, root: Path) -> Path:
    """``root/models/Stable-diffusion/tiny.safetensors`` (a copy of the tiny checkpoint)."""
    target = root / "models" / "Stable-diffusion" / "tiny.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny_checkpoint, target)
    return root / "models"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Served:
    """A running server: its base URL and the app (``app.state.services`` for white-box checks)."""

    base: str
    app: FastAPI

    @property
    def jobs(self) -> JobService:
        return self.app.state.services.jobs  # type: ignore[no-any-return]


@contextmanager
def serve(settings: Settings, *, ready: bool = True) -> Iterator[Served]:
    """The app on ``http://127.0.0.1:<port>``; waits for /readyz (or only for the socket, ``ready=False``)."""
    port = free_port()
    app = build_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: server.started, 60)
        if ready:
            auth = _auth(settings)
            wait_until(lambda: httpx.get(f"{base}/readyz", auth=auth).status_code == 200, 120)
        yield Served(base, app)
    finally:
        server.should_exit = True
        thread.join(60)


def _auth(settings: Settings) -> tuple[str, str] | None:
    if settings.api_auth is None:
        return None
    user, _, password = settings.api_auth.get_secret_value().split(",")[0].partition(":")
    return user, password


def wait_until(condition: object, timeout: float, interval: float = 0.02) -> None:
    """Poll ``condition()`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, object]:
    """Poll a job until it is terminal; its JSON view."""
    view: dict[str, object] = {}

    def terminal() -> bool:
        nonlocal view
        view = client.get(f"/api/v1/jobs/{job_id}").json()
        return view["status"] in ("done", "failed", "cancelled")

    wait_until(terminal, timeout, 0.05)
    return view
