"""The web UI's events refuse what its controls would never send, at the edge, in one line naming the control
(issue "Hostile input and hostile files", found by ``bench/hostile.py``).

Before: ``NaN`` in "Sampling steps" reached ``int()`` in the handlers (500 "cannot convert float NaN to
integer"), ``1e999`` / ``NaN`` as the History page failed in Gradio's rounding with ``OverflowError`` /
``ValueError`` in the message, image inputs handed decompression bombs, zTXt bombs and text files to
Gradio's decoder (``DecompressionBombError``, ``UnidentifiedImageError`` in the message), a call with too
few inputs printed ``<gradio.components.textbox.Textbox object at 0x…>``, and an unknown ``api_name`` or
``fn_index`` was a plain-text "Internal Server Error". Every case goes over real HTTP, by name
(``/gradio_api/run/<api_name>``) and through the queue as the page does (``/gradio_api/queue/join``).
"""

from __future__ import annotations

import io
import json
import re
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image

from latentstudio.config import Settings
from tests.serving import Served, serve

TIMEOUT = 30
RAW = "\0raw\0"  # a placeholder replaced by raw JSON text (NaN, 1e999: not JSON values json.dumps writes)
LEAKS = re.compile(r"Traceback|\b[A-Z][A-Za-z0-9_]*(?:Error|Exception)\b|<class '|object at 0x")


@dataclass(frozen=True)
class Event:
    fn_index: int
    api_name: str
    labels: list[str]
    defaults: list[Any]

    def body(self, values: dict[str, Any] | None = None, raw: dict[str, str] | None = None) -> str:
        """The ``data`` array as JSON text: the page's defaults, ``values`` by label, ``raw`` JSON text by
        label."""
        data = list(self.defaults)
        for label, value in (values or {}).items():
            data[self.labels.index(label)] = value
        for label in raw or {}:
            data[self.labels.index(label)] = RAW + label
        text = json.dumps(data)
        for label, fragment in (raw or {}).items():
            text = text.replace(json.dumps(RAW + label), fragment)
        return text


@dataclass(frozen=True)
class Answer:
    ok: bool
    status: int  # the HTTP status (the queue's answers: the join's)
    text: str  # the data, or the error message
    title: bool  # Gradio's error carries a title only for a deliberate refusal (gr.Error)


def call_run(client: httpx.Client, event: Event, data: str) -> Answer:
    """The event called by name."""
    response = client.post(
        f"/gradio_api/run/{event.api_name}",
        content=f'{{"data": {data}}}',
        headers={"content-type": "application/json"},
    )
    body = response.json()
    if response.status_code == 200:
        return Answer(True, 200, json.dumps(body["data"], ensure_ascii=False), False)
    return Answer(False, response.status_code, str(body.get("error")), "title" in body)


def call_join(client: httpx.Client, event: Event, data: str) -> Answer:
    """The event called through the queue by ``fn_index``, then the session's event stream."""
    session = uuid.uuid4().hex
    body = (
        f'{{"data": {data}, "fn_index": {event.fn_index}, "session_hash": "{session}", "event_data": null}}'
    )
    joined = client.post("/gradio_api/queue/join", content=body, headers={"content-type": "application/json"})
    assert joined.status_code == 200, joined.text
    event_id = joined.json()["event_id"]
    deadline = time.monotonic() + TIMEOUT
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            assert time.monotonic() < deadline, f"no answer to {event.api_name}"
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                output = message.get("output") or {}
                if message.get("success"):
                    return Answer(True, 200, json.dumps(output.get("data"), ensure_ascii=False), False)
                return Answer(False, 200, str(output.get("error")), "title" in output)
    raise AssertionError(f"no answer to {event.api_name}")


CALLS: list[Callable[[httpx.Client, Event, str], Answer]] = [call_run, call_join]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("hostile-ui")
    (root / "models").mkdir()
    settings = Settings(models_dir=root / "models", data_dir=root / "data", device="cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio-cache"))
        with serve(settings) as running:
            yield running


@pytest.fixture(scope="module")
def events(served: Served) -> dict[str, Event]:
    """The page's events by api_name (``run``: txt2img, ``run_1``: img2img, ``run_2``: extras)."""
    config = httpx.get(f"{served.base}/config", timeout=TIMEOUT).json()
    components = {c["id"]: c for c in config["components"]}
    found = {}
    for dep in config["dependencies"]:
        inputs = [components[i] for i in dep["inputs"]]
        labels = [str(c["props"].get("label")) for c in inputs]
        defaults = [c["props"].get("value") for c in inputs]
        found[dep["api_name"]] = Event(dep["id"], dep["api_name"], labels, defaults)
    return found


def refused(client: httpx.Client, event: Event, data: str, *expected: str) -> None:
    """Both routes refuse ``data`` as a deliberate refusal (422 by name) saying each of ``expected``, with
    no exception class, repr or traceback; the server stays healthy."""
    for call in CALLS:
        where = f"{call.__name__} {event.api_name} {data[:120]}"
        answer = call(client, event, data)
        assert not answer.ok, f"{where}: accepted: {answer.text[:300]}"
        assert answer.title, f"{where}: not a deliberate refusal: {answer.text[:300]}"
        if call is call_run:
            assert answer.status == 422, where
        for text in expected:
            assert text in answer.text, f"{where}: {answer.text[:300]}"
        assert not LEAKS.search(answer.text), f"{where}: {answer.text[:300]}"
        assert "\n" not in answer.text, f"{where}: {answer.text[:300]}"
    assert client.get("/healthz").status_code == 200


def test_numbers_that_are_not_finite_or_out_of_range_are_refused_naming_the_control(
    served: Served, events: dict[str, Event]
) -> None:
    with httpx.Client(base_url=served.base, timeout=TIMEOUT) as client:
        txt2img, counter = events["run"], events["count"]
        small = {"Prompt": "a red circle", "Width": 64, "Height": 64, "Sampling steps": 2}
        for fragment in ("NaN", "Infinity", "-Infinity", "1e999", "1000000", "0", '"ten"', "null", "true"):
            data = txt2img.body(small, raw={"Sampling steps": fragment})
            refused(client, txt2img, data, "steps (Sampling steps): must be a number from 1 to 150")
        refused(
            client, txt2img, txt2img.body(small, raw={"Seed": "NaN"}), "seed (Seed): must be a finite number"
        )
        refused(client, txt2img, txt2img.body(small, raw={"CFG Scale": "-Infinity"}), "cfg_scale (CFG Scale)")
        refused(client, counter, '["a cat", NaN]', "steps (Sampling steps)", "from 1 to 150")
        for name in ("load", "delete"):
            for fragment in ("1e999", "NaN", "-Infinity", "0"):
                data = events[name].body(raw={"Page": fragment})
                refused(client, events[name], data, "page (Page): must be a number of at least 1")
        extras = events["run_2"]
        refused(
            client, extras, extras.body(raw={"Resize": "NaN"}), "upscaling_resize (Resize)", "from 1 to 8"
        )
        # the controls' choices, checkboxes and texts: what the page never sends, never Gradio's repr
        img2img = events["run_1"]
        data = img2img.body({"Resize mode": "<script>"})
        refused(
            client, img2img, data, "resize_mode (Resize mode): must be one of Just resize, Crop and resize"
        )
        refused(client, txt2img, txt2img.body({"Sampling method": ["x"]}), "sampler_name (Sampling method)")
        refused(
            client, txt2img, txt2img.body({"Enable": "maybe"}), "enable_hr (Enable): must be true or false"
        )
        refused(client, txt2img, txt2img.body({"Prompt": {"a": 1}}), "prompt (Prompt): must be text")
        # the controls' own values still work: the counter counts, History lists (a huge page is the last)
        for call in CALLS:
            answer = call(client, counter, '["a cat", 20]')
            assert answer.ok, answer.text
            assert "/75" in answer.text
            answer = call(client, events["load"], events["load"].body(raw={"Page": "9" * 400}))
            assert answer.ok, answer.text
            assert "Page 1 of 1" in answer.text


def test_a_wrong_number_of_inputs_is_refused_without_python_reprs(
    served: Served, events: dict[str, Event]
) -> None:
    with httpx.Client(base_url=served.base, timeout=TIMEOUT) as client:
        counter = events["count"]
        refused(client, counter, '["x"]', "wrong number of inputs: this event takes 2, got 1")
        refused(client, counter, '["x", 20, 3]', "wrong number of inputs: this event takes 2, got 3")
        refused(client, counter, "[]", "got 0")


def _png(size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png() -> bytes:
    """A tiny PNG whose header claims 100 000 × 100 000 pixels."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    idat = _chunk(b"IDAT", zlib.compress(b"\0" * 16))
    return b"\x89PNG\r\n\x1a\n" + header + idat + _chunk(b"IEND", b"")


def _ztxt_bomb_png() -> bytes:
    """A valid 8×8 PNG with a zTXt chunk inflating to 64 MB (after the image data: read when decoding)."""
    good = _png()
    return good[:-12] + _chunk(b"zTXt", b"parameters\0\0" + zlib.compress(b"a" * (64 << 20), 9)) + good[-12:]


def _gif_bomb() -> bytes:
    """A 1×1 GIF whose screen descriptor claims 65 535 × 65 535 pixels."""
    out = io.BytesIO()
    Image.new("P", (1, 1)).save(out, "GIF")
    gif = out.getvalue()
    return gif[:6] + struct.pack("<HH", 65535, 65535) + gif[10:]


HOSTILE_IMAGES = {
    "text as .png": (b"just some text, not an image", "not a PNG, JPEG, WebP, BMP or GIF image"),
    "EPS": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100000 100000\nshowpage\n", "not a PNG, JPEG"),
    "bomb 100k x 100k": (_bomb_png(), "image too large"),
    "GIF bomb": (_gif_bomb(), "image too large"),
    "48 MP 1-bit": (_png((8000, 6000), "1"), "image too large: 8000×6000 is more than 40000000 pixels"),
    "zTXt bomb": (_ztxt_bomb_png(), "cannot decode the image"),
}
# Every image input: (event, label, the name refusals give it, how the value holds the file)
IMAGE_INPUTS = [
    (
        "track_editor",
        "Image for inpainting with mask",
        "init_images (Image for inpainting with mask)",
        "editor",
    ),
    ("run_1", "Image for img2img", "init_images (Image for img2img)", "image"),
    ("run_1", "Image for inpainting with mask", "init_images (Image for inpainting with mask)", "editor"),
    ("run_1", "Image", "init_images (Image)", "image"),
    ("run_1", "Mask", "mask (Mask)", "image"),
    ("run_2", "Source", "image (Source)", "image"),
]


def _file(path: str, **extra: Any) -> dict[str, Any]:
    return {"path": path, "meta": {"_type": "gradio.FileData"}, **extra}


def _value(kind: str, file: dict[str, Any]) -> Any:
    return {"background": file, "layers": [file], "composite": file, "id": None} if kind == "editor" else file


def _upload(client: httpx.Client, content: bytes) -> str:
    response = client.post("/gradio_api/upload", files={"files": ("x.png", content, "image/png")})
    response.raise_for_status()
    return str(response.json()[0])


def test_image_inputs_refuse_bombs_and_files_that_are_not_images_before_decoding(
    served: Served, events: dict[str, Event]
) -> None:
    with httpx.Client(base_url=served.base, timeout=TIMEOUT) as client:
        uploads = {name: (_upload(client, content), says) for name, (content, says) in HOSTILE_IMAGES.items()}
        for api_name, label, name, kind in IMAGE_INPUTS:
            event = events[api_name]
            for path, says in uploads.values():
                refused(client, event, event.body({label: _value(kind, _file(path))}), f"{name}: {says}")
            # an uploaded file's data given inline instead (Gradio's image input would decode it)
            inline = _file(uploads["text as .png"][0], url="data:image/png;base64,AAAA")
            refused(client, event, event.body({label: _value(kind, inline)}), "inline data")
        # PNG Info reads the same files itself: its message box says why, naming the image
        read_png = events["read_png"]
        for path, says in uploads.values():
            for call in CALLS:
                answer = call(client, read_png, json.dumps([_file(path)]))
                assert answer.ok, answer.text
                assert f"**image**: {says}" in answer.text
                assert not LEAKS.search(answer.text), answer.text
        # a good image still goes through
        good = _upload(client, _png())
        editor = events["track_editor"]
        for call in CALLS:
            answer = call(client, editor, editor.body({IMAGE_INPUTS[0][1]: _value("editor", _file(good))}))
            assert answer.ok, answer.text
            assert "Image 8×8" in answer.text


def test_a_request_naming_no_event_is_a_4xx_json_answer(served: Served, events: dict[str, Event]) -> None:
    paste = events["paste"]
    with httpx.Client(base_url=served.base, timeout=TIMEOUT) as client:
        for route in ("run", "api", "call", "call/v2"):
            response = client.post(f"/gradio_api/{route}/no_such_event", json={"data": [1]})
            assert response.status_code == 404, (route, response.text)
            assert "api_name" in response.json()["detail"]
        joins = ("99999", "-1", "1e999", "NaN", "-Infinity", "true", "1.5", '"x"', '"0"', "[0]")
        for fragment in joins:
            body = f'{{"data": [""], "fn_index": {fragment}, "session_hash": "h"}}'
            response = client.post(
                "/gradio_api/queue/join", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 422, (fragment, response.text)
            detail = response.json()["detail"]
            assert detail[0]["loc"] == ["body", "fn_index"], (fragment, detail)
        # a fn_index in a call by name is looked up too
        response = client.post("/gradio_api/run/paste", json={"data": [""], "fn_index": 99999})
        assert response.status_code == 422, response.text
        # NaN / 1e999 where Gradio's schema wants something else: its 422, written as JSON
        for fragment in ('"trigger_id": NaN', '"trigger_id": 1e999', '"batched": NaN', '"session_hash": NaN'):
            body = f'{{"data": [""], "fn_index": {paste.fn_index}, {fragment}}}'
            for path in ("/gradio_api/queue/join", "/gradio_api/run/paste"):
                response = client.post(path, content=body, headers={"content-type": "application/json"})
                assert response.status_code == 422, (path, fragment, response.text)
                assert "detail" in response.json()
                assert not LEAKS.search(response.text), response.text
        # the control: the same routes with a real event answer
        assert call_run(client, paste, '["a cat\\nSteps: 3, Size: 64x64"]').ok
        assert call_join(client, paste, '["a cat\\nSteps: 3, Size: 64x64"]').ok
        # the page calls its unqueued events (the catalog's load) as /run/predict with their fn_index
        body = {"data": ["a cat\nSteps: 3, Size: 64x64"], "fn_index": paste.fn_index}
        response = client.post("/gradio_api/run/predict", json=body)
        assert response.status_code == 200, response.text
        assert client.get("/healthz").status_code == 200
