"""The web UI's events take only files uploaded through the page (issue "Hostile input and hostile files").

Mounted with ``gr.mount_gradio_app``, Gradio 6.31 skipped its own "was this file uploaded?" check
(``processing_utils._check_allowed`` returns early unless ``Blocks.has_launched``, which only ``launch()``
sets), so ``/gradio_api/run/<name>`` and ``/gradio_api/queue/join`` read any file the server could read,
copied it into Gradio's cache and hashed ``/dev/zero`` forever on the event loop. Here every file and image
input of every UI event, over both routes, gets hostile paths and must answer with a refusal naming the
upload check, quickly, with ``/healthz`` answering throughout and nothing new in Gradio's cache.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from latentstudio.config import Settings
from latentstudio.ui.uploads import MAX_UPLOAD_BYTES, UploadError, mark_mounted, uploaded_file
from tests.serving import Served, serve

FILE_TYPES = {"file", "image", "imageeditor", "gallery"}
# What a refusal says: ours (latentstudio.ui.uploads) or, behind it, Gradio's own check's
REFUSALS = ("not a file uploaded through this page", "it was not uploaded by a user")
PROBE_SECONDS = 20  # a client timeout per probe: a hang fails the test instead of hanging it
INFOTEXT = "uploaded prompt\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 4242, Size: 8x8"


@dataclass(frozen=True)
class Env:
    served: Served
    cache: Path  # this server's Gradio upload folder (GRADIO_TEMP_DIR)
    root: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("uploads")
    cache = root / "gradio-cache"
    (root / "models").mkdir()
    settings = Settings(models_dir=root / "models", data_dir=root / "data", device="cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(cache))  # read when the Blocks is built and on every check
        with serve(settings) as served:
            yield Env(served, cache, root)


def _png(color: str = "red", infotext: str | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    if infotext is not None:
        info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def _file(path: str) -> dict[str, Any]:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def _value(kind: str, path: str) -> Any:
    """The input value of a component of type ``kind`` that names the file at ``path``."""
    if kind == "imageeditor":
        return {"background": _file(path), "layers": [_file(path)], "composite": _file(path), "id": None}
    if kind == "gallery":
        return [{"image": _file(path), "caption": None}]
    return _file(path)


@dataclass(frozen=True)
class Event:
    fn_index: int
    api_name: str
    types: list[str]
    defaults: list[Any]

    def data(self, position: int, path: str) -> list[Any]:
        values = list(self.defaults)
        values[position] = _value(self.types[position], path)
        return values


def _events(client: httpx.Client) -> list[Event]:
    """Every UI event with a file or image input, from the page's own config."""
    config = client.get("/config").json()
    components = {c["id"]: c for c in config["components"]}
    events = []
    for dep in config["dependencies"]:
        types = [components[i]["type"] for i in dep["inputs"]]
        if FILE_TYPES & set(types):
            defaults = [components[i]["props"].get("value") for i in dep["inputs"]]
            events.append(Event(dep["id"], dep["api_name"], types, defaults))
    return events


def _run(client: httpx.Client, event: Event, data: list[Any]) -> tuple[bool, str]:
    """Call the event by its name (``/gradio_api/run/<api_name>``): (success, output or error text)."""
    response = client.post(f"/gradio_api/run/{event.api_name}", json={"data": data}, timeout=PROBE_SECONDS)
    body = response.json()
    if response.status_code == 200:
        return True, json.dumps(body["data"], ensure_ascii=False)
    return False, str(body.get("error"))


def _join(client: httpx.Client, event: Event, data: list[Any]) -> tuple[bool, str]:
    """Call the event as the page does, through the queue by ``fn_index`` (``/gradio_api/queue/join``, then
    the session's event stream): (success, output or error text)."""
    session = uuid.uuid4().hex
    joined = client.post(
        "/gradio_api/queue/join",
        json={"data": data, "fn_index": event.fn_index, "session_hash": session, "event_data": None},
        timeout=PROBE_SECONDS,
    )
    joined.raise_for_status()
    event_id = joined.json()["event_id"]
    deadline = time.monotonic() + PROBE_SECONDS
    with client.stream(
        "GET", "/gradio_api/queue/data", params={"session_hash": session}, timeout=PROBE_SECONDS
    ) as stream:
        for line in stream.iter_lines():
            if time.monotonic() > deadline:
                break
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                output = message.get("output") or {}
                if message.get("success"):
                    return True, json.dumps(output.get("data"), ensure_ascii=False)
                return False, str(output.get("error"))
    raise AssertionError(f"no answer to {event.api_name} within {PROBE_SECONDS} s")


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")} if folder.exists() else set()


def _healthz(client: httpx.Client) -> float:
    start = time.monotonic()
    assert client.get("/healthz", timeout=5).status_code == 200
    return time.monotonic() - start


def _upload(client: httpx.Client, name: str, content: bytes) -> str:
    response = client.post("/gradio_api/upload", files={"files": (name, content, "image/png")})
    response.raise_for_status()
    return str(response.json()[0])


def test_uploaded_files_pass_through_both_routes(env: Env) -> None:
    """The control for the probes below: the same calls with an uploaded file do what the page does."""
    with httpx.Client(base_url=env.served.base, timeout=30) as client:
        events = {e.api_name: e for e in _events(client)}
        uploaded = _upload(client, "with-infotext.png", _png(infotext=INFOTEXT))
        assert Path(uploaded).resolve().is_relative_to(env.cache.resolve())
        for call in (_run, _join):
            ok, output = call(client, events["read_png"], [_file(uploaded)])
            assert ok, output
            assert "Seed: 4242" in output
            editor = events["track_editor"]
            ok, output = call(client, editor, editor.data(editor.types.index("imageeditor"), uploaded))
            assert ok, output
            assert "Image 8×8" in output


def _hostile_paths(env: Env) -> dict[str, str]:
    outside = env.root / "elsewhere" / "secret.png"  # an image outside the data dir
    outside.parent.mkdir(exist_ok=True)
    outside.write_bytes(_png("blue"))
    links = env.root / "links"
    links.mkdir(exist_ok=True)
    (links / "link.png").symlink_to(outside)
    env.cache.mkdir(parents=True, exist_ok=True)
    planted = env.cache / "planted"  # a symlink inside the cache (as if planted) to the outside image
    planted.mkdir(exist_ok=True)
    (planted / "link.png").symlink_to(outside)
    sqlite = env.served.app.state.services.settings.data_dir / "jobs.sqlite3"
    assert sqlite.is_file()
    return {
        "passwd": "/etc/passwd",
        "environ": "/proc/self/environ",
        "jobs.sqlite3": str(sqlite),
        "outside image": str(outside),
        "symlink in a temp dir": str(links / "link.png"),
        "symlink in the cache": str(planted / "link.png"),
        "dotdot from the cache": f"{env.cache}/planted/../../elsewhere/secret.png",
        "dotdot to /etc": f"{env.cache}/{'../' * 12}etc/passwd",
        "/dev/zero": "/dev/zero",
        "url": "https://example.invalid/secret.png",  # Gradio would download it into the cache
    }


def test_every_file_input_of_every_event_refuses_files_not_uploaded(env: Env) -> None:
    with httpx.Client(base_url=env.served.base, timeout=30) as client:
        events = _events(client)
        names = {e.api_name for e in events}
        # PNG Info's file, img2img's image / inpaint editor / upload pair, extras' image (and the editor)
        assert {"read_png", "png_to_img2img", "track_editor"} <= names
        assert sum(e.types.count("image") + e.types.count("imageeditor") for e in events) >= 6
        paths = _hostile_paths(env)
        before = _files(env.cache)
        slowest = 0.0
        for event in events:
            for position, kind in enumerate(event.types):
                if kind not in FILE_TYPES:
                    continue
                for label, path in paths.items():
                    for call in (_run, _join):
                        where = f"{call.__name__} {event.api_name}[{position}] ({kind}) <- {label}"
                        start = time.monotonic()
                        try:
                            ok, output = call(client, event, event.data(position, path))
                        except httpx.TimeoutException:
                            raise AssertionError(f"{where}: no answer in {PROBE_SECONDS} s") from None
                        took = time.monotonic() - start
                        assert not ok, f"{where}: accepted: {output[:300]}"
                        assert any(r in output for r in REFUSALS), f"{where}: {output[:300]}"
                        assert "root:" not in output
                        slowest = max(slowest, took)
                        health = _healthz(client)
                        assert health < 1.0, f"{where}: /healthz took {health:.2f} s"
        assert _files(env.cache) == before  # nothing was copied (or downloaded) into the cache
        assert slowest < PROBE_SECONDS
        for label in ("passwd", "jobs.sqlite3", "outside image", "symlink in the cache"):
            assert client.get(f"/gradio_api/file={paths[label]}").status_code == 403, label


def test_the_upload_check_refuses_what_is_not_an_uploaded_regular_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    good = cache / "abc" / "image.png"
    good.parent.mkdir(parents=True)
    good.write_bytes(_png())
    assert uploaded_file(str(good)) == good.resolve()
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png())
    (cache / "abc" / "link.png").symlink_to(outside)
    os.mkfifo(cache / "abc" / "fifo")  # opening it would block: it is refused from its stat
    big = cache / "abc" / "big.png"
    with big.open("wb") as f:
        f.truncate(MAX_UPLOAD_BYTES + 1)
    refused = [
        str(outside), str(cache / "abc" / "link.png"), str(cache / "abc" / "fifo"), str(cache / "abc"),
        str(cache), f"{cache}/abc/../abc/image.png", "/dev/zero", "/etc/passwd", "abc/image.png",
        "http://example.com/image.png", "", "bad\0path", str(cache / "missing.png"), None, 42,
    ]  # fmt: skip
    for path in refused:
        with pytest.raises(UploadError):
            uploaded_file(path)
    with pytest.raises(UploadError, match="larger than"):
        uploaded_file(str(big))


def test_marking_a_mounted_blocks_launched_turns_on_gradios_own_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first layer alone, on a plain ``gr.Blocks``: Gradio itself refuses a path it did not take in."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png())
    with gr.Blocks() as demo:
        file = gr.File(type="filepath")
        name = gr.Textbox()
        file.change(lambda p: Path(p).name if p else "", file, name, api_name="echo")
    mark_mounted(demo)
    app = gr.mount_gradio_app(FastAPI(), demo, path="/", ssr_mode=False)
    with TestClient(app) as client:
        response = client.post("/gradio_api/run/echo", json={"data": [_file(str(outside))]})
        assert response.status_code == 500
        assert "not uploaded by a user" in response.json()["error"]
        uploaded = client.post("/gradio_api/upload", files={"files": ("a.png", _png(), "image/png")}).json()
        response = client.post("/gradio_api/run/echo", json={"data": [_file(uploaded[0])]})
        assert response.json()["data"] == ["a.png"]
    assert not list((tmp_path / "cache").rglob("outside.png"))
