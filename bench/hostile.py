"""Hostile client: bad input to every generation endpoint and the UI's routes, an auth probe of every route,
and a bounded kill -9 loop, against a real ``latentstudio serve`` (issue "Hostile input and hostile files").

Run: ``python bench/hostile.py [--quick] [--kill-cycles N] [--parts corpus,auth,kill] [--json] [--keep]``
starts the server itself (``python -m latentstudio.cli serve --device cpu`` on a free loopback port with an
empty models folder, so the built-in 64×64 model, and made-up ``--api-auth`` credentials): ~5 minutes on
2 cores, ~2 with ``--quick`` (a third of the corpus, one kill cycle). ``--url http://host:port
[--auth user:pass]`` targets a running server instead (the kill -9 loop is then skipped, and the auth probe
needs ``--auth``).

1. **Corpus** (≥ 150 cases): wrong types, missing and unknown fields, NaN / Infinity / 1e999 (raw JSON text),
   huge and 5000-digit numbers, zero / negative / unaligned / over-limit sizes, steps, batches and prompts,
   900-deep nesting, bad base64, undecodable and hostile image files (decompression bombs, a zTXt bomb,
   hostile EXIF), a 60 MB body, path traversal in every field that names a file, unknown samplers and
   schedulers, hostile infotexts (pasted and in PNG text chunks), hostile prompt syntax, wrong content
   types and invalid UTF-8, sent to ``/sdapi/v1`` (txt2img, img2img, extras, png-info, options),
   ``/api/v1/jobs`` (txt2img, img2img, extras) and the web UI's events (``/gradio_api/run/<api_name>`` and
   ``/gradio_api/queue/join`` by ``fn_index``, found in ``/config``) with server file paths, URLs and
   hostile uploads in every file and image input. A case passes when: no 5xx (the UI's routes: Gradio's
   JSON error answer, never a bare 500), an API body is JSON (FastAPI's ``{"detail": ...}`` for a 4xx),
   no traceback, exception class name or Python repr in the body, nothing of ``/etc/passwd``, the server's
   environment or a canary file, a UI error is a ``gr.Error`` (Gradio adds no title to an unhandled
   exception), a file input that names no upload is refused, the answer comes within 30 s, and
   ``/healthz`` answers in < 1 s after the case and while it runs (pinged from a thread: a handler that
   blocks the event loop shows). A case valid by accident just runs (small sizes keep it fast); the jobs
   cases queued must not fail with an internal error (checked at the end, with the whole job store). A
   server that stops answering is killed and restarted so that the rest of the corpus still runs.
2. **Auth probe**: every method of every path in ``/openapi.json`` (path parameters filled with dummies)
   and the UI's routes (pages, config, info, queue, upload, files, SSE streams, websocket handshakes):
   no credentials and wrong credentials get 401 (a websocket: no handshake), right ones do not.
3. **kill -9 loop** (``--kill-cycles``, default 5): queue slow and fast jobs, SIGKILL the server mid-job,
   restart it on the same data dir: every accepted job still exists (earlier cycles' unchanged), the one
   that was running is failed "interrupted by a server restart" with no files, the queued ones complete
   in order, no ``.*.tmp`` file is left under ``<data-dir>/images``, and the server is ready again.

Exit status 1 when anything failed; each failure is one line. ``--json`` prints a machine-readable summary
as the last line of stdout (the report then goes to stderr).
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, PngImagePlugin

TIMEOUT = 30.0  # seconds per case: a hang is a failure, never a hang of this script
HEALTH_LIMIT = 1.0  # /healthz must answer within this after every case
RESTART_ERROR = "interrupted by a server restart"  # the README's wording (latentstudio.jobs.RESTART_ERROR)
SD, JOBS, RUN = "/sdapi/v1/", "/api/v1/jobs", "/gradio_api/run/"
TRAVERSALS = ["../../../../etc/passwd", "/etc/passwd", "..\\..\\..\\windows\\win.ini", "x/../../y\x00.pt"]
HUGE = "9" * 5000  # a 5000-digit integer (over Python's 4300-digit int parsing limit)
LEAKS = [
    (re.compile(r"Traceback \(most recent call last\)"), "a traceback"),
    (re.compile(r'File "[^"\n]+", line \d+'), "a traceback frame"),
    (re.compile(r"\b[A-Z][A-Za-z0-9_]*(?:Error|Exception)\b"), "an exception class name"),
    (re.compile(r"<class '|\bobject at 0x[0-9a-fA-F]+"), "a Python repr"),
    (re.compile(r"root:[^:\n]*:0:0:"), "/etc/passwd contents"),
]
HOSTILE_INFOTEXTS = [
    "a cat\nSteps: 2, Sampler: Euler, Size: 0x0, First pass size: 0x0",
    "a cat\nSteps: inf, Sampler: Euler, Size: 64x64",
    "a cat\nSteps: 2, Sampler: Euler, Seed: 1e999, Size: 64x64",
    "a cat\nSteps: 2, Sampler: Euler, Clip skip: inf, Size: 64x64",
    "a cat\nSteps: 2, Sampler: Euler, ENSD: 1e999, Size: 64x64",
    f"a cat\nSteps: 2, Sampler: Euler, Size: 64x64, First pass size: {HUGE}x1",
    "a cat\nSteps: nan, Sampler: Euler, CFG scale: nan, Size: 64x64",
    f"a cat\nSteps: 2, Sampler: Euler, Size: {HUGE}x64",
    "a cat\nSteps: -1, Sampler: ../../etc/passwd, Size: -64x-64, Model: ../../etc/passwd",
    "a cat\nSteps: 2, Size: 64x64, Hires upscale: inf, Denoising strength: nan, Hires steps: 1e999",
    "a cat\nSteps: 2, Sampler: Euler, Size: 64x64, Seed resize from: 0x0, Variation seed strength: -inf",
    "\n" * 1000 + "Steps: 2, Size: 64x64, " + "Key: value, " * 2000,
]
HOSTILE_PROMPTS = [
    "(a:1.2.3)",
    "(" * 10_000 + "a" + ")" * 10_000,
    "(" * 10_000 + "unbalanced",
    "[" * 10_000 + "a" + "]" * 10_000,
    "[a:b:1e999]",
    "[a:b:nan] [c:d:-inf]",
    "<lora:../../x:1>",
    "<lora:/etc/passwd:1> <hypernet:../../x:1>",
    "<lora:x:inf> <lora:y:1e999>",
    "[" + "|".join(f"w{i}" for i in range(5000)) + "]",
    " AND ".join(["a :1e999"] * 50),
    "a\x00b \u202e \ufeff" + "\U0001f600" * 100,
]


# -- images and hostile files ------------------------------------------------------------------------------


def b64(raw: bytes) -> str:
    """Base64 text of ``raw``."""
    return base64.b64encode(raw).decode("ascii")


def png(size: tuple[int, int] = (64, 64), text: str | None = None, mode: str = "RGB") -> bytes:
    """A PNG of ``size``, optionally with ``text`` in its ``parameters`` chunk."""
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("parameters", text)
    out = io.BytesIO()
    Image.new(mode, size, 0 if mode == "1" else (200, 40, 40)).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_chunk(image: bytes, kind: bytes, data: bytes) -> bytes:
    """A PNG with one more chunk just before its ``IEND``."""
    return image[:-12] + _chunk(kind, data) + image[-12:]


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width × height`` pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    return head + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b"")


def ztxt_bomb_png() -> bytes:
    """A valid 8×8 PNG with a zTXt ``parameters`` chunk that inflates to 64 MB."""
    return with_chunk(png((8, 8)), b"zTXt", b"parameters\0\0" + zlib.compress(b"a" * (64 << 20), 9))


def exif_jpeg(comment: bytes) -> bytes:
    """A JPEG whose EXIF UserComment is ``comment`` (A1111 reads infotexts from it)."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment
    out = io.BytesIO()
    Image.new("RGB", (16, 16)).save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


@functools.cache
def hostile_images() -> dict[str, str]:
    """Label → base64 image data that must be refused (or read) without a crash or a hang."""
    good = png()
    return {
        "not base64": "!!! not base64 !!!",
        "bad base64 data URL": "data:image/png;base64,@@@@",
        "text, not an image": b64(b"just some text, not an image"),
        "empty": "",
        "truncated PNG": b64(good[:60]),
        "PNG with a bad CRC": b64(good[:29] + b"\0\0\0\0" + good[33:]),
        "bomb 100k×100k": b64(bomb_png()),
        "bomb 100k×100k GIF": b64(b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00;"),
        "48 MP 1-bit PNG": b64(png((8000, 6000), mode="1")),
        "zTXt bomb": b64(ztxt_bomb_png()),
        "http URL": "http://169.254.169.254/latest/meta-data/",
        "file URL": "file:///etc/passwd",
        "path": "../../../../etc/passwd",
        "EPS header": b64(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100000 100000\nshowpage\n"),
    }


# -- cases -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request and what it must get. ``kind``: "api" (JSON, no 5xx), "gradio" (Gradio's JSON answer),
    "file" (a file route: no 5xx, no contents), "join" (a UI event through the queue; ``body`` holds
    ``__SESSION__``). ``expect``: the statuses allowed (None: any below 500). ``refuse``: a UI event
    that must not succeed."""

    name: str
    path: str
    body: bytes
    kind: str = "api"
    method: str = "POST"
    content_type: str | None = "application/json"
    expect: frozenset[int] | None = None
    refuse: bool = False


REFUSED = frozenset(range(400, 500))


def lines(text: str) -> list[str]:
    """The non-empty lines of ``text``, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def override(base: dict[str, Any], fragment: str) -> str:
    """``base`` as JSON text with one field set by a raw JSON fragment such as ``"cfg_scale": NaN``."""
    key, _ = json.JSONDecoder().raw_decode(fragment)
    rest = json.dumps({k: v for k, v in base.items() if k != key})
    return rest[:-1] + (", " if len(rest) > 2 else "") + fragment + "}"


def words(text: str) -> list[str]:
    """The whitespace-separated words of ``text``."""
    return text.split()


def nested(depth: int = 900) -> str:
    """A ``depth``-deep JSON array."""
    return "[" * depth + "]" * depth


def last_line(text: str) -> str:
    """A name for an infotext: its (parameters) line, shortened."""
    return label(text.rsplit("\n", 1)[-1], 56)


def label(fragment: str, limit: int = 40) -> str:
    """A short, one-line name for a case."""
    flat = fragment.encode("unicode_escape").decode("ascii")
    return flat if len(flat) <= limit else f"{flat[: limit - 1]}…({len(fragment)} chars)"


class Corpus:
    """Collects cases."""

    def __init__(self) -> None:
        self.cases: list[Case] = []

    def add(self, name: str, path: str, body: str | bytes, **kw: Any) -> None:
        """A case whose body is sent as it is (raw JSON text, invalid UTF-8, other content types)."""
        data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        self.cases.append(Case(name, path, data, **kw))

    def fields(
        self, path: str, base: dict[str, Any], fragments: list[str] | dict[str, str], **kw: Any
    ) -> None:
        """One case per fragment: ``base`` with that field replaced (named by the fragment or the key)."""
        short = path.rsplit("/", 1)[-1]
        named = fragments.items() if isinstance(fragments, dict) else [(label(f), f) for f in fragments]
        for name, fragment in named:
            self.add(f"{short} {name}", path, override(base, fragment), **kw)

    def images(
        self, path: str, base: dict[str, Any], key: str, wrap: str = "{}", refuse: bool = True
    ) -> None:
        """One case per hostile image, in ``base[key]`` (``wrap``: how the field holds one image), each
        refused (``refuse``) but an empty mask: that is no mask (A1111)."""
        for name, data in hostile_images().items():
            fragment = f"{json.dumps(key)}: {wrap.format(json.dumps(data))}"
            lenient = not refuse or (key == "mask" and data == "")
            self.fields(path, base, {f"{key} {name}": fragment}, expect=None if lenient else REFUSED)


T2I: dict[str, Any] = {"prompt": "a red cat", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"}
JOB: dict[str, Any] = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "sampler": "Euler"}
NUMBERS = lines(f"""
    "cfg_scale": NaN
    "cfg_scale": Infinity
    "cfg_scale": -Infinity
    "cfg_scale": 1e999
    "steps": NaN
    "steps": 1e999
    "steps": {HUGE}
    "steps": 0
    "steps": 151
    "steps": "ten"
    "steps": [2]
    "width": Infinity
    "width": {HUGE}
    "width": 0
    "width": -64
    "width": 100
    "width": 2056
    "width": 4096
    "height": 65
    "height": 99999
    "height": {{"a": 1}}
    "seed": 1e999
    "seed": {HUGE}
    "seed": 18446744073709551616
    "seed": "abc"
    "subseed": -1180591620717411303424
    "subseed_strength": NaN
    "eta": 1e999
    "s_noise": -Infinity
    "batch_size": 65
    "batch_size": 1.5
    "n_iter": 1e308
    "prompt": 123
    "prompt": ["a"]
    "no_such_field": 1
    "__proto__": {{}}
""")
SDAPI_FIELDS = lines(f"""
    "denoising_strength": NaN
    "hr_scale": Infinity
    "hr_second_pass_steps": 151
    "hr_resize_x": -8
    "firstphase_width": -1
    "styles": "framed"
    "override_settings": "x"
    "script_args": {{"a": 1}}
    "alwayson_scripts": []
    "enable_hr": "maybe"
    "sampler_name": 5
    "sampler_name": "Euler z"
    "sampler_name": null, "sampler_index": "../../x"
    "scheduler": "Nope"
    "enable_hr": true, "hr_sampler_name": "nope"
    "enable_hr": true, "hr_scheduler": "nope"
    "script_args": [{nested()}]
    "alwayson_scripts": {{"x": {nested()}}}
    "override_settings": {{"x": {nested()}}}
    "comments": {{"x": {nested()}}}
    "batch_size": 8, "n_iter": 9
    "width": 2048, "height": 2048, "batch_size": 64, "n_iter": 2
""")
NAMED = [  # (where the name goes, as a JSON fragment template)
    '"override_settings": {{"sd_model_checkpoint": {}}}',
    '"override_settings": {{"sd_vae": {}}}',
    '"enable_hr": true, "hr_upscaler": {}',
    '"enable_hr": true, "hr_checkpoint_name": {}',
    '"styles": [{}]',
    '"override_settings": {{{}: 1}}',
]


def sdapi_generation(c: Corpus) -> None:
    """Numbers, sizes, limits, types, names, nesting and prompts against txt2img (and img2img)."""
    t2i, img = SD + "txt2img", SD + "img2img"
    i2i = {**T2I, "init_images": ["data:image/png;base64," + b64(png())], "denoising_strength": 0.5}
    c.fields(t2i, T2I, NUMBERS + SDAPI_FIELDS, expect=REFUSED)
    c.fields(img, i2i, NUMBERS[::3] + SDAPI_FIELDS[-6:-2], expect=REFUSED)
    long = [f'"{key}": "{"x" * 20_001}"' for key in ("prompt", "negative_prompt", "hr_prompt")]
    c.fields(t2i, T2I, long, expect=REFUSED)
    c.fields(t2i, T2I, [n.format(json.dumps(t)) for n in NAMED for t in TRAVERSALS], expect=REFUSED)
    c.add("txt2img body 900-deep array", t2i, nested(), expect=REFUSED)
    c.add("txt2img body 100000-deep array", t2i, nested(100_000), expect=REFUSED)
    c.fields(t2i, T2I, [f'"prompt": {json.dumps(p)}' for p in HOSTILE_PROMPTS])
    c.fields(img, i2i, [f'"prompt": {json.dumps(p)}' for p in HOSTILE_PROMPTS[:4]])
    c.fields(t2i, T2I, ['"negative_prompt": "' + "(" * 10_000 + '"', '"prompt": "\\ud800"'])
    pasted = {f"infotext {last_line(text)}": f'"infotext": {json.dumps(text)}' for text in HOSTILE_INFOTEXTS}
    c.fields(t2i, T2I, pasted)
    c.fields(
        t2i, {}, {f"{name} alone": text for name, text in pasted.items()}
    )  # every value it names is used
    c.fields(t2i, T2I, {"infotext one line of 20000 chars": json.dumps({"infotext": "a" * 20_000})[1:-1]})
    c.fields(img, i2i, dict(list(pasted.items())[:4]))


def sdapi_images(c: Corpus) -> None:
    """img2img, extras and png-info with hostile images, numbers and names."""
    i2i = {**T2I, "init_images": ["data:image/png;base64," + b64(png())], "denoising_strength": 0.5}
    ext = {"image": b64(png()), "upscaler_1": "Lanczos", "upscaling_resize": 2}
    c.images(SD + "img2img", i2i, "init_images", "[{}]")
    c.images(SD + "img2img", i2i, "mask")
    c.images(SD + "extra-single-image", ext, "image")
    batch = {**ext, "imageList": []}
    del batch["image"]
    c.images(SD + "extra-batch-images", batch, "imageList", '[{{"data": {}, "name": "x.png"}}]')
    c.images(SD + "png-info", {}, "image", refuse=False)  # it reads text chunks, not necessarily pixels
    c.fields(
        SD + "txt2img",
        T2I,
        ['"firstpass_image": "!!!"', f'"firstpass_image": "{b64(bomb_png())}"'],
        expect=REFUSED,
    )
    c.fields(SD + "img2img", i2i, lines("""
        "init_images": "not a list"
        "init_images": []
        "init_images": null
        "init_images": ["a", "b"]
        "width": 77
        "resize_mode": 7
        "denoising_strength": 1.5
        "mask_blur": -1
        "inpainting_fill": 99
    """), expect=REFUSED)  # fmt: skip
    c.add(
        "img2img missing init_images", SD + "img2img", json.dumps({"prompt": "x", "steps": 2}), expect=REFUSED
    )
    c.fields(SD + "extra-single-image", ext, lines(f"""
        "upscaler_1": "../../../../etc/passwd"
        "upscaler_2": "/etc/passwd"
        "upscaling_resize": 0
        "upscaling_resize": -1
        "upscaling_resize": 100
        "upscaling_resize": 1e999
        "upscaling_resize_w": 0
        "upscaling_resize_w": 9000
        "upscaling_resize_h": {HUGE}
        "image": 123
        "codeformer_visibility": 1
        "gfpgan_visibility": NaN
    """), expect=REFUSED)  # fmt: skip
    c.fields(SD + "extra-single-image", ext, [f'"image": "{b64(png((20_000, 1)))}", "upscaling_resize": 8'])
    c.fields(SD + "extra-batch-images", batch, ['"imageList": {}', '"imageList": [null]'], expect=REFUSED)
    c.fields(SD + "png-info", {}, ['"image": [""]', f'"image": {nested()}', '"image": null'], expect=REFUSED)
    files = {f"chunk {last_line(text)}": png((8, 8), text) for text in HOSTILE_INFOTEXTS}
    files["iTXt invalid UTF-8"] = with_chunk(png((8, 8)), b"iTXt", b"parameters" + bytes(5) + b"\xff\xfe\xc3")
    files["tEXt 2 MB"] = with_chunk(png((8, 8)), b"tEXt", b"parameters" + bytes(1) + b"a" * (2 << 20))
    files["one-line infotext 20000 chars"] = png((8, 8), "a" * 20_000)
    files["EXIF UserComment odd UTF-16"] = exif_jpeg(b"UNICODE\0\xd8\x00\x00")
    files["EXIF UserComment invalid ASCII"] = exif_jpeg(b"ASCII\0\0\0\xff\xfe")
    files["EXIF UserComment 20000 chars"] = exif_jpeg(b"ASCII\0\0\0" + b"a" * 20_000)
    files["EXIF UserComment hostile"] = exif_jpeg(b"UNICODE\0" + HOSTILE_INFOTEXTS[1].encode("utf-16-be"))
    chunks = {name: f'"image": "{b64(data)}"' for name, data in files.items()}
    c.fields(SD + "png-info", {}, chunks, expect=frozenset({200}))


def sdapi_options(c: Corpus) -> None:
    """``POST /sdapi/v1/options`` with hostile names and numbers (last: accepted values would persist)."""
    names = [f'"{key}": {json.dumps(t)}' for key in ("sd_model_checkpoint", "sd_vae") for t in TRAVERSALS]
    c.fields(SD + "options", {}, names + lines(f"""
        "CLIP_stop_at_last_layers": NaN
        "CLIP_stop_at_last_layers": "abc"
        "CLIP_stop_at_last_layers": -5
        "CLIP_stop_at_last_layers": {nested()}
        "eta_noise_seed_delta": 1e999
        "eta_noise_seed_delta": {HUGE}
        "s_noise": Infinity
        "eta_ancestral": -Infinity
        "no_such_option": true
        "samples_format": "../x"
        "randn_source": "../../x"
        "../../../../etc/passwd": 1
    """), expect=REFUSED)  # fmt: skip
    c.add("options body list", SD + "options", "[1, 2]", expect=REFUSED)
    c.fields(SD + "options", {}, ['"outdir_samples": "/etc"'])  # stored, never used: images go to the store


def native_jobs(c: Corpus) -> None:
    """``POST /api/v1/jobs`` (txt2img, img2img, extras) and hostile query strings on the job routes."""
    img = {**JOB, "kind": "img2img", "init_image": b64(png())}
    ext = {"kind": "extras", "images": [b64(png())], "upscaler_1": "Lanczos"}
    names = [f'"{key}": {json.dumps(t)}' for key in ("checkpoint", "vae") for t in TRAVERSALS]
    names += [
        f'"hires": {{"{key}": {json.dumps(t)}}}' for key in ("upscaler", "checkpoint") for t in TRAVERSALS
    ]
    c.fields(JOBS, JOB, NUMBERS + names + lines(f"""
        "batch_size": 64, "n_iter": 2
        "prompt": "{"x" * 20_001}"
        "kind": "nope"
        "kind": 5
        "kind": {nested()}
        "sampler": "nope"
        "scheduler": "nope"
        "hires": {{"scale": NaN}}
        "hires": {{"steps": 151}}
        "hires": "x"
    """), expect=REFUSED)  # fmt: skip
    c.fields(JOBS, JOB, [f'"prompt": {json.dumps(p)}' for p in HOSTILE_PROMPTS[:6]])
    c.images(JOBS, img, "init_image")
    c.images(JOBS, img, "mask")
    c.images(JOBS, ext, "images", "[{}]")
    c.fields(JOBS, {**JOB, "kind": "img2img"}, ['"denoising_strength": 0.5'], expect=REFUSED)
    c.fields(
        JOBS,
        ext,
        ['"images": []', '"upscaler_1": "../../../../etc/passwd"', '"upscaling_resize": NaN'],
        expect=REFUSED,
    )
    gets = lines(f"""
        {JOBS}?limit=1e999
        {JOBS}?limit=-1
        {JOBS}?offset={HUGE}
        {JOBS}?status=../../x
        {JOBS}?limit=NaN
        {JOBS}/..%2f..%2fetc%2fpasswd
        {JOBS}/nope?wait=1e999
        {JOBS}/nope?wait=nan
        {JOBS}/{"x" * 5000}
        /api/v1/images/..%2f..%2fetc%2fpasswd
        /api/v1/images/%00
    """)
    for path in gets:
        c.add(f"GET {label(path)}", path, b"", method="GET", content_type=None, expect=REFUSED)


def transport(c: Corpus) -> None:
    """Wrong content types, invalid UTF-8, odd bodies and a 60 MB body on every POST route family."""
    body = json.dumps(T2I).encode()
    odd: list[tuple[str, bytes]] = [
        ("text/plain", body),
        ("application/x-www-form-urlencoded", b"prompt=x&steps=2"),
        ("multipart/form-data; boundary=b", b"--b\r\n\r\nx\r\n--b--"),
        ("application/json; charset=utf-16", body),
    ]
    for content in (b'{"prompt": "\xff\xfe"}', b"", b"null", b'"a string"', b"\xef\xbb\xbf" + body):
        odd.append(("application/json", content))
    for path in (
        SD + "txt2img",
        SD + "img2img",
        SD + "png-info",
        SD + "options",
        JOBS,
        SD + "extra-single-image",
    ):
        for content_type, content in odd:
            name = f"{content_type.split(';')[0]} {label(content.decode('latin-1'), 16)}"
            c.add(f"{path.rsplit('/', 1)[-1]} {name}", path, content, content_type=content_type)
    big = json.dumps({"prompt": "x" * (60 << 20)}).encode()
    for path in (SD + "txt2img", JOBS, SD + "png-info", RUN + "paste", "/gradio_api/upload"):
        kind = "gradio" if "gradio" in path else "api"
        c.add(f"60 MB body to {path}", path, big, expect=frozenset({413}), kind=kind)


def build_api_corpus() -> list[Case]:
    """Every API case, options last (an accepted value would change the settings of later cases)."""
    corpus = Corpus()
    for part in (sdapi_generation, sdapi_images, native_jobs, transport, sdapi_options):
        part(corpus)
    return corpus.cases


# -- the web UI's events -----------------------------------------------------------------------------------

FILE_TYPES = {"file", "image", "imageeditor", "gallery"}
# A case valid by accident runs: keep UI generations as small as the API cases' (the page defaults to 512²).
# The sampler stays the page's default: /config lists only it (the page loads the others).
SMALL = {"Prompt": "a red circle", "Sampling steps": 2, "Width": 64, "Height": 64}
JOIN = "/gradio_api/queue/join"


@dataclass(frozen=True)
class UiEvent:
    """One event of the page's ``/config``: its ``fn_index``, ``api_name`` and inputs."""

    fn_index: int
    api_name: str
    types: tuple[str, ...]
    labels: tuple[str, ...]
    defaults: tuple[Any, ...]

    def base(self) -> list[Any]:
        """The page's default inputs, a generation made small (64×64, 2 steps) where the event has one."""
        return [SMALL.get(name, value) for name, value in zip(self.labels, self.defaults, strict=True)]

    def data(self, name: str, value: Any) -> list[Any]:
        """The small defaults with the input labelled ``name`` set to ``value``."""
        values = self.base()
        values[self.labels.index(name)] = value
        return values

    def raw(self, position: int, fragment: str) -> str:
        """The small defaults as a JSON array with the input at ``position`` replaced by raw JSON text."""
        values = self.base()
        values[position] = "\0RAW\0"
        return json.dumps(values).replace(json.dumps("\0RAW\0"), fragment)


def ui_events(config: dict[str, Any]) -> dict[str, UiEvent]:
    """The page's events by ``api_name``."""
    components = {c["id"]: c for c in config["components"]}
    events = {}
    for dep in config["dependencies"]:
        inputs = [components[i] for i in dep["inputs"]]
        types = tuple(c["type"] for c in inputs)
        labels = tuple(str(c["props"].get("label")) for c in inputs)
        defaults = tuple(c["props"].get("value") for c in inputs)
        events[dep["api_name"]] = UiEvent(dep["id"], dep["api_name"], types, labels, defaults)
    return events


def file_data(path: str, *, url: str | None = None) -> dict[str, Any]:
    """A Gradio ``FileData`` naming ``path``."""
    value: dict[str, Any] = {"path": path, "meta": {"_type": "gradio.FileData"}}
    if url is not None:
        value["url"] = url
    return value


def input_value(kind: str, path: str) -> Any:
    """What an input of ``kind`` carries when it names the file at ``path``."""
    if kind == "imageeditor":
        layer = file_data(path)
        return {"background": layer, "layers": [layer], "composite": layer, "id": None}
    if kind == "gallery":
        return [{"image": file_data(path), "caption": None}]
    return file_data(path)


def gradio_case(c: Corpus, event: UiEvent, name: str, data: list[Any] | str, **kw: Any) -> None:
    """The event called by name (``/gradio_api/run/``) and through the queue by ``fn_index``, as the page."""
    text = json.dumps(data) if isinstance(data, list) else data
    c.add(
        f"ui run {event.api_name}: {name}", RUN + event.api_name, f'{{"data": {text}}}', kind="gradio", **kw
    )
    join = (
        f'{{"data": {text}, "fn_index": {event.fn_index}, "session_hash": "__SESSION__", "event_data": null}}'
    )
    c.add(f"ui join {event.api_name}: {name}", JOIN, join, kind="join", **kw)


@dataclass(frozen=True)
class UiContext:
    """What the UI cases need: the events, uploaded files (path by label) and hostile server paths."""

    events: dict[str, UiEvent]
    uploads: dict[str, str]
    paths: dict[str, str]


def ui_file_cases(c: Corpus, ui: UiContext) -> None:
    """Every file or image input of every event: server paths and URLs (refused), hostile uploads."""
    for event in ui.events.values():
        for position, kind in enumerate(event.types):
            if kind not in FILE_TYPES:
                continue
            for name, path in ui.paths.items():
                data = event.base()
                data[position] = input_value(kind, path)
                gradio_case(c, event, f"[{position}] {kind} <- {name}", data, refuse=True)
            for name, path in ui.uploads.items():
                data = event.base()
                data[position] = input_value(kind, path)
                gradio_case(c, event, f"[{position}] {kind} <- uploaded {name}", data)
    if "read_png" in ui.events:
        for url in ("http://169.254.169.254/latest/meta-data/", "file:///etc/passwd"):
            data = [file_data("x.png", url=url)]
            gradio_case(c, ui.events["read_png"], f"FileData url {url}", data, refuse=True)


UI_VALUES = [
    ("Sampling steps", 1e6),
    ("Sampling steps", -1),
    ("Width", 100),
    ("Width", 99_999),
    ("Height", 0),
    ("Seed", 10**30),
    ("Sampling method", TRAVERSALS[0]),
    ("Schedule type", "nope"),
    ("Batch count", 64),
    ("Clip skip", 99),
]


def ui_generation_cases(c: Corpus, ui: UiContext) -> None:
    """Hostile prompts, numbers and names in the txt2img and extras tabs' Generate events."""
    if "run" in ui.events:
        run = ui.events["run"]
        for prompt in HOSTILE_PROMPTS[:8] if "Prompt" in run.labels else ():
            gradio_case(c, run, f"prompt {label(prompt, 16)}", run.data("Prompt", prompt))
        for name, value in [(n, v) for n, v in UI_VALUES if n in run.labels]:  # the page may change
            gradio_case(c, run, f"{name}={value}", run.data(name, value))
        for fragment in ("NaN", "1e999", HUGE) if "Sampling steps" in run.labels else ():
            gradio_case(
                c, run, f"steps {label(fragment, 8)}", run.raw(run.labels.index("Sampling steps"), fragment)
            )
    if "run_2" in ui.events and "valid" in ui.uploads and "image" in ui.events["run_2"].types:
        extras = ui.events["run_2"]
        for name, value in [("Upscaler 1", TRAVERSALS[0]), ("Upscaler 2", "/etc/passwd"), ("Resize", 1e9)]:
            if name not in extras.labels:
                continue
            data = extras.data(name, value)
            data[extras.types.index("image")] = file_data(ui.uploads["valid"])
            gradio_case(c, extras, f"{name}={value}", data)


def ui_value_cases(c: Corpus, ui: UiContext) -> None:
    """Hostile values in the other events: paste, the token counter, history pages, the checkpoint."""
    ev = ui.events
    if "paste" in ev:
        for text in [*HOSTILE_INFOTEXTS, "a" * 20_000]:
            gradio_case(c, ev["paste"], f"infotext {last_line(text)}", [text])
    if "count" in ev:
        for prompt in HOSTILE_PROMPTS[:4]:
            gradio_case(c, ev["count"], f"prompt {label(prompt, 16)}", [prompt, 20])
        gradio_case(c, ev["count"], "steps NaN", '["x", NaN]')
        gradio_case(c, ev["count"], "too few inputs", ["x"])
    for page in ("load", "delete"):
        for fragment in ("1e999", "-1", HUGE[:400], "NaN") if page in ev else ():
            gradio_case(c, ev[page], f"page {label(fragment, 8)}", ev[page].raw(0, fragment))
    for name in TRAVERSALS[:2] if "set_checkpoint" in ev else ():
        gradio_case(c, ev["set_checkpoint"], f"checkpoint {name}", [name, None, None])


def ui_protocol_cases(c: Corpus, ui: UiContext) -> None:
    """Gradio's own routes abused: unknown names and indexes, bad bodies, file= and proxy= paths."""
    fn = ui.events["paste"].fn_index if "paste" in ui.events else 0
    c.add("ui run unknown api_name", RUN + "no_such_event", '{"data": [1]}', kind="gradio")
    for fragment in ("99999", "-1", '"x"', "1e999", "NaN", "null"):
        body = f'{{"data": [""], "fn_index": {fragment}, "session_hash": "h"}}'
        c.add(f"ui join fn_index {fragment}", JOIN, body, kind="gradio")
    for name, fragment in [("data not a list", "5"), ("900-deep data", nested())]:
        c.add(
            f"ui join {name}",
            JOIN,
            f'{{"data": {fragment}, "fn_index": {fn}, "session_hash": "h"}}',
            kind="gradio",
        )
    body = json.dumps({"data": [""], "fn_index": fn, "session_hash": "h" * 10_000})
    c.add("ui join session_hash 10000 chars", JOIN, body, kind="gradio")
    if "paste" in ui.events:
        odd = [("application/json", b'{"data": ["\xff\xfe"]}'), ("text/plain", b'{"data": ["x"]}')]
        odd += [("application/json", b""), ("application/json", f'{{"data": {nested()}}}'.encode())]
        for content_type, content in odd:
            name = f"ui run paste {content_type} {label(content.decode('latin-1'), 16)}"
            c.add(name, RUN + "paste", content, kind="gradio", content_type=content_type)
    gets = {f"file={name}": "/gradio_api/file=" + path for name, path in ui.paths.items()}
    for url in ("http://169.254.169.254/latest/meta-data/", "file:///etc/passwd", "http://127.0.0.1:22/"):
        gets[f"proxy={url}"] = "/gradio_api/proxy=" + url
    for name, path in gets.items():
        c.add(f"ui GET {name}", path, b"", method="GET", content_type=None, kind="file", expect=REFUSED)


def build_ui_corpus(ui: UiContext) -> list[Case]:
    """Every UI case."""
    corpus = Corpus()
    ui_generation_cases(corpus, ui)
    ui_value_cases(corpus, ui)
    ui_file_cases(corpus, ui)
    ui_protocol_cases(corpus, ui)
    return corpus.cases


# -- sending and judging -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a case got: the status (None: no answer), the body judged, all text scanned for leaks, and how
    to name the answer in a failure (``HTTP 422``, or the queue's ``process_completed`` event)."""

    status: int | None
    body: str
    scanned: str
    error: str | None = None
    answer: str = ""


def excerpt(text: str, limit: int = 160) -> str:
    """One line of at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def send(client: httpx.Client, case: Case) -> Outcome:
    """Send ``case`` (a fresh connection each: a 500 may leave a pooled one half-closed)."""
    if case.kind == "join":
        return send_join(client, case)
    headers = {"connection": "close"}
    if case.content_type is not None:
        headers["content-type"] = case.content_type
    try:
        response = client.request(case.method, case.path, content=case.body, headers=headers, timeout=TIMEOUT)
    except httpx.TimeoutException:
        return Outcome(None, "", "", f"no answer within {TIMEOUT:.0f} s")
    except httpx.TransportError as e:
        return Outcome(None, "", "", f"connection error: {e!r}")
    text = response.content.decode("utf-8", "replace")
    return Outcome(response.status_code, text, text)


def send_join(client: httpx.Client, case: Case) -> Outcome:
    """Join the queue as the page does, then read the session's event stream until the event completes."""
    session = uuid.uuid4().hex
    body = (case.body or b"").replace(b"__SESSION__", session.encode())
    deadline = time.monotonic() + TIMEOUT
    try:
        joined = client.post(
            "/gradio_api/queue/join",
            content=body,
            timeout=TIMEOUT,
            headers={"content-type": "application/json", "connection": "close"},
        )
        if joined.status_code != 200:
            return Outcome(joined.status_code, joined.text, joined.text)
        event_id = joined.json()["event_id"]
        lines: list[str] = []
        with client.stream(
            "GET", "/gradio_api/queue/data", params={"session_hash": session}, timeout=TIMEOUT
        ) as stream:
            for line in stream.iter_lines():
                lines.append(line)
                if time.monotonic() > deadline:
                    break
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                    output = message.get("output") or {}
                    answer = {"data": output.get("data")} if message.get("success") else output
                    name = "success" if message.get("success") else "error"
                    return Outcome(
                        200, json.dumps(answer), "\n".join(lines), answer=f"process_completed ({name})"
                    )
    except httpx.TimeoutException:
        pass
    except (httpx.TransportError, ValueError, KeyError) as e:
        return Outcome(None, "", "", f"queue protocol error: {e!r}")
    return Outcome(None, "", "", f"no process_completed within {TIMEOUT:.0f} s")


def leak(text: str, canaries: tuple[str, ...]) -> str | None:
    """What ``text`` leaks (a traceback, an exception class, a file's or the environment's contents)."""
    for pattern, what in LEAKS:
        found = pattern.search(text)
        if found:
            return f"{what} ({excerpt(found.group(0), 60)})"
    for canary in canaries:
        if canary and canary in text:
            return "a canary from the server's environment or a file outside its folders"
    return None


def judge(case: Case, outcome: Outcome, canaries: tuple[str, ...]) -> str | None:
    """Why ``case`` failed, or None."""
    if outcome.status is None:
        return outcome.error
    status, text = outcome.status, outcome.body
    problem = leak(outcome.scanned, canaries)
    if problem is None and case.expect is not None and status not in case.expect:
        problem = f"expected {describe(case.expect)}"
    if problem is None and case.kind != "file":
        problem = judge_json(case, status, text)
    if problem is None and case.kind == "file" and status >= 500:
        problem = "a server error"
    return None if problem is None else f"{outcome.answer or f'HTTP {status}'}, {problem}: {excerpt(text)}"


def judge_json(case: Case, status: int, text: str) -> str | None:
    """What is wrong with a JSON answer (API: FastAPI's shape; UI: Gradio's), or None."""
    try:
        value = json.loads(text)
    except ValueError:
        return "not JSON"
    if case.kind != "api":
        return judge_gradio(case, status, value)
    if status >= 500:
        return "a server error"
    if status < 400:  # a result: an object or array (A1111's POST /options answers null)
        return None if value is None or isinstance(value, dict | list) else "a 2xx that is no JSON object"
    return None if isinstance(value, dict) and "detail" in value else "a 4xx without FastAPI's detail"


def judge_gradio(case: Case, status: int, value: Any) -> str | None:
    """What is wrong with an answer of the UI's routes: Gradio's error (a ``gr.Error``: refused on purpose),
    our body limit's ``detail``, or data (which a case that must be refused must not get)."""
    if not isinstance(value, dict) or not value.keys() & {"error", "data", "detail", "event_id"}:
        return "not a Gradio answer"
    if "error" in value:  # Gradio adds a title to deliberate refusals (gr.Error) only
        return None if "title" in value else "an unhandled exception, not a gr.Error"
    if status >= 500:
        return "a server error"
    return "accepted" if case.refuse and "data" in value else None


def describe(statuses: frozenset[int]) -> str:
    """``4xx`` or the statuses."""
    return "4xx" if statuses == REFUSED else "/".join(map(str, sorted(statuses)))


class HealthMonitor:
    """Pings ``/healthz`` from a thread while cases run: a handler that blocks the event loop shows as a slow
    ping even when the server has recovered by the time the case's answer arrives."""

    def __init__(self, base: str, auth: tuple[str, str] | None) -> None:
        self.client = httpx.Client(base_url=base, auth=auth, timeout=10)
        self.since = time.monotonic()
        self.worst = 0.0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(0.25):
            start = time.monotonic()
            try:
                self.client.get("/healthz")
                took = time.monotonic() - start
            except httpx.TransportError:
                took = 10.0
            if start >= self.since:
                self.worst = max(self.worst, took)

    def reset(self) -> None:
        """Start a new window."""
        self.since, self.worst = time.monotonic(), 0.0

    def verdict(self) -> str | None:
        """Why the window failed (a ping slower than ``HEALTH_LIMIT``), or None."""
        return f"/healthz took {self.worst:.2f} s while the case ran" if self.worst >= HEALTH_LIMIT else None

    def close(self) -> None:
        """Stop pinging."""
        self.stopped.set()
        self.thread.join(15)
        self.client.close()


def check_health(client: httpx.Client) -> str | None:
    """Why ``/healthz`` is not fine (no answer, not 200, or slower than ``HEALTH_LIMIT``), or None."""
    start = time.monotonic()
    try:
        response = client.get("/healthz", timeout=5)
    except httpx.TransportError as e:
        return f"/healthz: no answer ({e!r})"
    took = time.monotonic() - start
    if response.status_code != 200:
        return f"/healthz: HTTP {response.status_code}"
    return f"/healthz took {took:.2f} s" if took >= HEALTH_LIMIT else None


# -- reporting ---------------------------------------------------------------------------------------------


@dataclass
class Part:
    """The result of one part: how many checks ran and which failed (one line each)."""

    name: str
    count: int = 0
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None
    units: int = 0  # routes probed, cycles completed

    def check(self, label: str, reason: str | None) -> None:
        """Count one check; record it when it failed."""
        self.count += 1
        if reason is not None:
            self.fail(f"{label}: {reason}")

    def fail(self, line: str) -> None:
        """Record a failure (printed at once)."""
        self.failures.append(line)
        log(f"  FAIL {line}")

    def as_json(self) -> dict[str, Any]:
        """The machine-readable summary of this part."""
        return {
            "count": self.count,
            "units": self.units,
            "failed": len(self.failures),
            "failures": self.failures,
            "skipped": self.skipped,
        }


OUT = sys.stdout


def log(line: str) -> None:
    """One line of the human-readable report."""
    print(line, file=OUT, flush=True)


# -- the server --------------------------------------------------------------------------------------------


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Launched:
    """A ``latentstudio serve`` process this script started (and restarts) on one data dir, with an empty
    models folder (the built-in model), a canary in its environment and its own Gradio cache."""

    def __init__(self, root: Path, name: str, credentials: str | None, canary: str) -> None:
        self.root, self.name, self.credentials, self.canary = root, name, credentials, canary
        self.data_dir = root / f"{name}-data"
        self.gradio_cache = root / f"{name}-gradio"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        (root / "models").mkdir(exist_ok=True)

    @property
    def auth(self) -> tuple[str, str] | None:
        """The (user, password) clients send, or None."""
        if self.credentials is None:
            return None
        user, _, password = self.credentials.split(",")[0].partition(":")
        return user, password

    def start(self) -> float:
        """Start the server and wait until ``/readyz`` is 200; the seconds that took."""
        self.starts += 1
        command = [sys.executable, "-m", "latentstudio.cli", "serve", "--port", str(self.port), "--device"]
        command += ["cpu", "--models-dir", str(self.root / "models"), "--data-dir", str(self.data_dir)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTSTUDIO_")}
        # one compute thread: on a shared 2-core machine spinning OpenMP threads only slow everything down
        env.update(
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            GRADIO_TEMP_DIR=str(self.gradio_cache),
            HOSTILE_CANARY=self.canary,
        )
        if self.credentials is not None:
            env["LATENTSTUDIO_API_AUTH"] = self.credentials  # not --api-auth: invisible in the process list
        started = time.monotonic()
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() - started > 240:
                self.stop()
                raise RuntimeError(f"the server did not become ready; its log:\n{self.log_tail()}")
            time.sleep(0.1)
        return time.monotonic() - started

    @property
    def log_path(self) -> Path:
        """The server's output (all its starts)."""
        return self.root / f"{self.name}-server.log"

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200."""
        try:
            return httpx.get(self.base + "/readyz", auth=self.auth, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(60)

    def stop(self) -> None:
        """SIGTERM (a clean stop), SIGKILL after 60 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Target:
    """The server under test: its URL and credentials, and the process when this script started it."""

    base: str
    auth: tuple[str, str] | None
    server: Launched | None = None
    canaries: tuple[str, ...] = ()
    extra_paths: dict[str, str] = field(default_factory=dict)  # server-side files to name (own server)

    @contextmanager
    def client(self) -> Iterator[httpx.Client]:
        """An HTTP client with the right credentials."""
        with httpx.Client(base_url=self.base, auth=self.auth, timeout=TIMEOUT) as http:
            yield http


def plant(root: Path, server: Launched) -> tuple[tuple[str, ...], dict[str, str]]:
    """A canary file outside every folder the server serves and a symlink to it planted in its Gradio
    cache; the canaries to look for in answers and the server-side paths to name."""
    token = secrets.token_hex(12)
    secret = root / "outside" / "secret.png"
    secret.parent.mkdir(exist_ok=True)
    secret.write_text(f"HOSTILE-FILE-CANARY-{token}")
    planted = server.gradio_cache / "planted"
    planted.mkdir(parents=True, exist_ok=True)
    link = planted / "link.png"
    if not link.is_symlink():
        link.symlink_to(secret)
    paths = {"a file outside": str(secret), "symlink in the cache": str(link)}
    paths |= {"jobs.sqlite3": str(server.data_dir / "jobs.sqlite3"), "data dir": str(server.data_dir)}
    return (server.canary, f"HOSTILE-FILE-CANARY-{token}"), paths


# -- part 1: the corpus ------------------------------------------------------------------------------------


def upload(http: httpx.Client, name: str, content: bytes) -> str | None:
    """Upload a file as the page does; its server path, or None when refused."""
    response = http.post("/gradio_api/upload", files={"files": (name, content, "image/png")}, timeout=TIMEOUT)
    return str(response.json()[0]) if response.status_code == 200 else None


def prepare_ui(http: httpx.Client, target: Target) -> UiContext | None:
    """The page's events, hostile uploads and hostile server paths; None without a UI."""
    config = http.get("/config", timeout=TIMEOUT)
    if config.status_code != 200:
        log(f"  no web UI (/config: HTTP {config.status_code}): UI cases skipped")
        return None
    files = {"valid": png(), "bomb 100k×100k": bomb_png(), "zTXt bomb": ztxt_bomb_png()}
    files |= {"text as .png": b"not an image at all", "hostile infotext": png((8, 8), HOSTILE_INFOTEXTS[5])}
    files["48 MP"] = png((8000, 6000), mode="1")
    uploads = {name: path for name, content in files.items() if (path := upload(http, "x.png", content))}
    paths = {p: p for p in ("/etc/passwd", "/proc/self/environ", "/dev/zero", "../../../../../../etc/passwd")}
    paths |= {"http URL": "http://169.254.169.254/latest/meta-data/", "file URL": "file:///etc/passwd"}
    paths |= target.extra_paths
    if "valid" in uploads:
        paths["cache/../"] = str(Path(uploads["valid"]).parent) + "/" + "../" * 12 + "etc/passwd"
    return UiContext(ui_events(config.json()), uploads, paths)


def run_corpus(target: Target, quick: bool) -> Part:
    """Part 1: every case, then the jobs the cases queued and the Gradio cache."""
    part = Part("corpus")
    with target.client() as http:
        ui = prepare_ui(http, target)
        cases = build_api_corpus() + (build_ui_corpus(ui) if ui else [])
        cases = cases[::3] if quick else cases  # every family keeps some of its cases, both UI routes too
        log(f"== corpus: {len(cases)} cases against {target.base}")
        queued: dict[str, str] = {}
        monitor = HealthMonitor(target.base, target.auth)
        try:
            for case in cases:
                monitor.reset()
                outcome = send(http, case)
                health = check_health(http)
                reasons = [judge(case, outcome, target.canaries), health, monitor.verdict()]
                reason = "; ".join(r for r in reasons if r) or None
                if target.server is not None and (not target.server.alive() or "no answer" in (health or "")):
                    reason = f"{reason}; {revive(target.server)}"
                part.check(case.name, reason)
                if case.path == JOBS and outcome.status == 202:
                    queued[json.loads(outcome.body)["id"]] = case.name
        finally:
            monitor.close()
        check_jobs(http, part, queued)
    if target.server is not None:
        part.check(
            "Gradio cache: no server file copied in", scan_cache(target.server.gradio_cache, target.canaries)
        )
    return part


def revive(server: Launched) -> str:
    """Restart a server that died or stopped answering (the rest of the corpus needs one); what happened."""
    what = (
        "stopped answering: killed and restarted" if server.alive() else f"died; log:\n{server.log_tail(12)}"
    )
    server.kill()
    server.start()
    return f"the server {what}"


def check_jobs(http: httpx.Client, part: Part, queued: dict[str, str]) -> None:
    """Each job a case queued ends, and not with an internal error; neither does any job in the store."""
    views = wait_terminal(http, list(queued))
    for job_id, name in queued.items():
        view = views[job_id]
        bad = view["status"] not in ("done", "failed", "cancelled") or "internal error" in str(view["error"])
        part.check(f"{name} → job", f"job {job_id} {view['status']}: {view['error']}" if bad else None)
    broken, offset = [], 0
    while True:
        page = http.get(JOBS, params={"limit": 100, "offset": offset}, timeout=TIMEOUT).json()
        broken += [
            f"{j['id']} ({j['source']}, {j['kind']})"
            for j in page["items"]
            if j["status"] == "failed" and "internal error" in str(j["error"])
        ]
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            break
    part.check(
        f"job store: {offset} jobs, none failed with an internal error",
        f"internal errors: {', '.join(broken)}" if broken else None,
    )


def scan_cache(cache: Path, canaries: tuple[str, ...]) -> str | None:
    """A file in the Gradio cache with a canary or ``/etc/passwd``'s contents, or None."""
    for path in cache.rglob("*") if cache.exists() else []:
        if path.is_symlink() or not path.is_file():
            continue
        head = path.read_bytes()[: 1 << 16].decode("utf-8", "replace")
        if any(c and c in head for c in canaries) or LEAKS[-1][0].search(head):
            return f"{path} holds a server file's contents"
    return None


# -- part 2: the auth probe --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One route to probe: ``method`` ``WS`` is a websocket handshake."""

    method: str
    path: str
    api: bool = False  # a route of /openapi.json (a 5xx with the right credentials fails too)


def api_probes(schema: dict[str, Any]) -> list[Probe]:
    """Every method of every path in the OpenAPI schema, path parameters filled with dummies."""
    probes = []
    for path, methods in schema["paths"].items():
        filled = re.sub(r"\{[^}]+\}", "hostile-probe", path)
        probes += [
            Probe(m.upper(), filled, api=True)
            for m in methods
            if m in ("get", "post", "put", "patch", "delete")
        ]
    return probes


UI_GETS = words("""
    / /config /gradio_api/info /gradio_api/openapi.json /gradio_api/queue/data?session_hash=p
    /gradio_api/heartbeat/p /gradio_api/upload_progress?upload_id=p /gradio_api/call/paste/p
    /gradio_api/file=/etc/passwd /gradio_api/startup-events /gradio_api/app_id /gradio_api/user
    /gradio_api/login_check /gradio_api/token /gradio_api/deep_link /theme.css /robots.txt /manifest.json
    /favicon.ico /static/x.js /assets/x.js /svelte/x.js /monitoring /gradio_api/proxy=http://example.invalid/
    /logout /docs /redoc /docs/oauth2-redirect /nope /gradio_api/nope
""")
UI_POSTS = words("""
    /gradio_api/queue/join /gradio_api/upload /gradio_api/run/paste /gradio_api/api/paste
    /gradio_api/call/paste /gradio_api/cancel /gradio_api/reset /login /gradio_api/stream/p
""")


def ui_probes(uploaded: str | None) -> list[Probe]:
    """The web UI's routes: pages, config, info, queue and its SSE streams, upload, files, websockets."""
    probes = [Probe("GET", p) for p in UI_GETS] + [Probe("POST", p) for p in UI_POSTS]
    if uploaded is not None:
        probes.append(Probe("GET", "/gradio_api/file=" + uploaded))
    # without a websocket library uvicorn answers an Upgrade as plain HTTP: still a request to guard
    return [*probes, Probe("WS", "/"), Probe("WS", "/gradio_api/queue/join"), Probe("WS", "/api/v1/events")]


def probe_body(probe: Probe, paste: int) -> dict[str, Any]:
    """Request arguments that do nothing much with the right credentials (mostly a 422)."""
    if probe.method != "POST":
        return {}
    if probe.path == "/gradio_api/upload":
        return {"files": {"files": ("p.png", png((8, 8)), "image/png")}}
    if probe.path == "/gradio_api/queue/join":
        return {"json": {"data": [""], "fn_index": paste, "session_hash": "p"}}
    if probe.path == "/login":
        return {"data": {"username": "x", "password": "y"}}
    return {"json": {"data": [""]} if "paste" in probe.path else []}


def probe_status(
    http: httpx.Client, probe: Probe, auth: tuple[str, str] | None, paste: int
) -> tuple[int, str]:
    """The status a probe gets (headers only: streams are closed at once) and its WWW-Authenticate."""
    if probe.method == "WS":
        return websocket_status(str(http.base_url), probe.path, auth), ""
    request = http.build_request(probe.method, probe.path, timeout=TIMEOUT, **probe_body(probe, paste))
    if auth is not None:
        request.headers["authorization"] = basic(auth)
    response = http.send(request, stream=True, auth=None)
    response.close()
    return response.status_code, response.headers.get("www-authenticate", "")


def basic(auth: tuple[str, str]) -> str:
    """An HTTP Basic ``Authorization`` header value."""
    return "Basic " + b64(f"{auth[0]}:{auth[1]}".encode())


def websocket_status(base: str, path: str, auth: tuple[str, str] | None) -> int:
    """The HTTP status of a websocket handshake (101: accepted)."""
    url = httpx.URL(base)
    head = [
        f"GET {path} HTTP/1.1",
        f"Host: {url.host}:{url.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
    ]
    head += [f"Sec-WebSocket-Key: {b64(os.urandom(16))}", "Sec-WebSocket-Version: 13"]
    if auth is not None:
        head.append(f"Authorization: {basic(auth)}")
    with socket.create_connection((url.host, url.port or 80), timeout=TIMEOUT) as s:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        reply = s.recv(4096)
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0


def run_auth(target: Target) -> Part:
    """Part 2: no and wrong credentials get 401 on every route, the right ones never do."""
    part = Part("auth")
    if target.auth is None:
        part.skipped = "no credentials (--auth) for a server given by --url"
        return part
    user, password = target.auth
    wrong = (user, password + "-wrong")
    with target.client() as http:
        schema = http.get("/openapi.json").json()
        config = http.get("/config")
        events = ui_events(config.json()) if config.status_code == 200 else {}
        paste = events["paste"].fn_index if "paste" in events else 0
        probes = api_probes(schema) + (ui_probes(upload(http, "p.png", png())) if events else [])
        if httpx.URL(target.base).scheme != "http":
            probes = [p for p in probes if p.method != "WS"]
        log(f"== auth: {len(probes)} routes × (no, wrong, right credentials)")
        for probe in probes:
            for label, auth in (
                ("no credentials", None),
                ("wrong password", wrong),
                ("right credentials", target.auth),
            ):
                part.check(
                    f"{probe.method} {probe.path} with {label}",
                    auth_verdict(http, probe, auth, target.auth, paste),
                )
    part.units = len(probes)
    return part


def auth_verdict(
    http: httpx.Client, probe: Probe, auth: tuple[str, str] | None, right: tuple[str, str], paste: int
) -> str | None:
    """Why one probe failed, or None."""
    try:
        status, challenge = probe_status(http, probe, auth, paste)
    except (httpx.TransportError, OSError) as e:
        return f"no answer ({e!r})"
    if auth == right:
        if status == 401 or (probe.api and status >= 500):
            return f"HTTP {status}"
        return None
    if probe.method == "WS":
        return f"handshake answered {status}" if status == 101 or 200 <= status < 300 else None
    if status != 401:
        return f"HTTP {status}, expected 401"
    return None if challenge.lower().startswith("basic") else "401 without WWW-Authenticate: Basic"


# -- part 3: the kill -9 loop ------------------------------------------------------------------------------

SLOW = {"prompt": "a large yellow star", "steps": 150, "width": 64, "height": 64, "sampler": "Euler"}
FAST = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "sampler": "Euler"}


def wait_running(http: httpx.Client, job_id: str, step: int) -> str | None:
    """Wait until the job runs at ``step`` or later; why it did not, or None."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        view = http.get(f"{JOBS}/{job_id}").json()
        if view["status"] == "running" and view["step"] >= step:
            return None
        if view["status"] not in ("queued", "running"):
            return f"job {job_id} ended ({view['status']}) before the kill"
        time.sleep(0.02)
    return f"job {job_id} did not reach step {step} within 180 s"


def wait_terminal(http: httpx.Client, ids: list[str], timeout: float = 300) -> dict[str, dict[str, Any]]:
    """The views of ``ids`` once all are terminal (or at the timeout)."""
    deadline = time.monotonic() + timeout
    views: dict[str, dict[str, Any]] = {}
    for job_id in ids:
        view = job_view(http, job_id)
        while view["status"] in ("queued", "running") and time.monotonic() < deadline:
            view = job_view(http, job_id)
        views[job_id] = view
    return views


def job_view(http: httpx.Client, job_id: str) -> dict[str, Any]:
    """A job's view (long-polled); a lost job shows as status ``missing``."""
    response = http.get(f"{JOBS}/{job_id}", params={"wait": 60}, timeout=90)
    if response.status_code == 200:
        return dict(response.json())
    return {"id": job_id, "status": f"missing (HTTP {response.status_code})", "error": None, "images": []}


@dataclass(frozen=True)
class Cycle:
    """One kill -9 cycle: its jobs in submission order and which one the kill hit."""

    label: str
    ids: list[str]
    target: int


def kill_cycle(server: Launched, number: int, seen: dict[str, str], part: Part) -> None:
    """Queue slow, fast, slow, fast; SIGKILL mid-job (the first slow one on odd cycles, the second on even
    ones, at a step that moves with the cycle); restart; check what survived."""
    with httpx.Client(base_url=server.base, timeout=TIMEOUT) as http:
        jobs = [{**job, "seed": 1000 * number + i} for i, job in enumerate([SLOW, FAST, SLOW, FAST])]
        ids = [http.post(JOBS, json=job).json()["id"] for job in jobs]
        cycle = Cycle(f"cycle {number + 1}", ids, 2 * (number % 2))
        step = 1 + (number * 37) % 100
        reason = wait_running(http, ids[cycle.target], step)
        part.check(f"{cycle.label}: job {cycle.target + 1} at step {step} when killed", reason)
        server.kill()
    try:
        took = server.start()
    except RuntimeError as e:
        part.check(f"{cycle.label}: ready again after kill -9", str(e))
        raise
    part.check(f"{cycle.label}: ready again after kill -9 ({took:.1f} s)", None)
    tmp = sorted(str(p) for p in (server.data_dir / "images").rglob(".*.tmp"))
    part.check(f"{cycle.label}: no .*.tmp under images", f"left: {tmp}" if tmp else None)
    with httpx.Client(base_url=server.base, timeout=TIMEOUT) as http:
        check_survivors(http, server, cycle, seen, part)


def check_survivors(
    http: httpx.Client, server: Launched, cycle: Cycle, seen: dict[str, str], part: Part
) -> None:
    """The killed job failed without files, the rest completed in order, earlier jobs are unchanged."""
    now = {job_id: job_view(http, job_id)["status"] for job_id in seen}
    lost = {job_id: status for job_id, status in now.items() if status != seen[job_id]}
    part.check(
        f"{cycle.label}: {len(seen)} earlier jobs unchanged", f"changed or lost: {lost}" if lost else None
    )
    views = wait_terminal(http, cycle.ids)
    killed = views[cycle.ids[cycle.target]]
    files = list((server.data_dir / "images" / killed["id"]).glob("*"))
    wrong = killed["status"] != "failed" or killed["error"] != RESTART_ERROR or files or killed["images"]
    found = f"{killed['status']}, {killed['error']!r}, files {files}"
    part.check(
        f"{cycle.label}: the killed job failed ({RESTART_ERROR!r}), no files", found if wrong else None
    )
    rest = [views[job_id] for n, job_id in enumerate(cycle.ids) if n != cycle.target]
    bad = [
        f"{v['id']} {v['status']} {v['error']}"
        for v in rest
        if v["status"] != "done" or len(v["images"]) != 1
    ]
    part.check(f"{cycle.label}: the other {len(rest)} jobs done with one image each", "; ".join(bad) or None)
    started = [v.get("started_at") or 0.0 for v in rest]
    in_order = started == sorted(started)
    part.check(f"{cycle.label}: jobs ran in submission order", None if in_order else f"started at {started}")
    image = http.get(rest[-1]["images"][0]["url"]) if rest[-1]["images"] else None
    ok = image is not None and image.status_code == 200 and image.content.startswith(b"\x89PNG")
    part.check(f"{cycle.label}: the last job's PNG is served", None if ok else "missing")
    seen.update({job_id: views[job_id]["status"] for job_id in cycle.ids})


def run_kill_loop(root: Path, cycles: int) -> Part:
    """Part 3: ``cycles`` kill -9 and restart cycles on one data dir."""
    part = Part("kill -9")
    server = Launched(root, "kill", None, secrets.token_hex(8))
    log(f"== kill -9: {cycles} cycles")
    seen: dict[str, str] = {}
    try:
        server.start()
        for cycle in range(cycles):
            kill_cycle(server, cycle, seen, part)
            part.units += 1
    except (RuntimeError, httpx.TransportError, KeyError, ValueError) as e:
        part.fail(f"kill loop stopped: {e!r}")
    finally:
        server.stop()
    return part


# -- main --------------------------------------------------------------------------------------------------


def summary_line(corpus: Part, auth: Part, kill: Part) -> str:
    """``hostile: N cases, P passed, F failed; auth: R routes x 3, F failed; kill -9: C cycles, F failed``."""
    failed = len(corpus.failures)
    shown = [
        (corpus, "hostile", f"{corpus.count} cases, {corpus.count - failed} passed, {failed} failed"),
        (auth, "auth", f"{auth.units} routes x 3, {len(auth.failures)} failed"),
        (kill, "kill -9", f"{kill.units} cycles, {len(kill.failures)} failed"),
    ]
    return "; ".join(f"{name}: {f'skipped ({p.skipped})' if p.skipped else text}" for p, name, text in shown)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start one on a free port)")
    parser.add_argument("--auth", help="user:pass the server wants (default with no --url: made up and set)")
    parser.add_argument(
        "--kill-cycles", type=int, default=None, help="kill -9 cycles (default 5; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="a third of the corpus and one kill cycle")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as stdout's last line")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (server logs, data)")
    parser.add_argument("--parts", default="corpus,auth,kill", help="which parts to run (default: all three)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the three parts; 0 when nothing failed."""
    global OUT  # noqa: PLW0603 - the report goes to stderr when stdout carries the JSON summary
    args = parse_args(argv)
    OUT = sys.stderr if args.json else sys.stdout
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="hostile-"))
    try:
        corpus, auth, kill = run_parts(args, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return report(corpus, auth, kill, time.monotonic() - started, args.json)


def run_parts(args: argparse.Namespace, root: Path) -> tuple[Part, Part, Part]:
    """The parts ``--parts`` names, against ``--url`` or a server started under ``root``."""
    parts = args.parts.split(",")
    corpus, auth = Part("corpus", skipped="--parts"), Part("auth", skipped="--parts")
    kill = Part("kill -9", skipped="--url" if args.url else "--parts")
    if "corpus" in parts or "auth" in parts:
        with target_for(args, root) as target:
            if "corpus" in parts:
                corpus = run_corpus(target, args.quick)
            if "auth" in parts:
                auth = run_auth(target)
    if "kill" in parts and not args.url:
        kill = run_kill_loop(
            root, args.kill_cycles if args.kill_cycles is not None else (1 if args.quick else 5)
        )
    return corpus, auth, kill


@contextmanager
def target_for(args: argparse.Namespace, root: Path) -> Iterator[Target]:
    """``--url`` (with ``--auth``), or a server started with made-up credentials (or ``--auth``'s)."""
    if args.url:
        user, _, password = (args.auth or "").partition(":")
        target = Target(args.url.rstrip("/"), (user, password) if args.auth else None)
        try:
            httpx.get(target.base + "/healthz", auth=target.auth, timeout=10)
        except httpx.TransportError as e:
            raise SystemExit(f"hostile: cannot reach {target.base}: {e}") from None
        yield target
        return
    server = Launched(
        root, "main", args.auth or f"hostile:pa:ss-{secrets.token_hex(6)}", secrets.token_hex(12)
    )
    log(f"starting the server ({root}); ready in {server.start():.1f} s")
    try:
        canaries, paths = plant(root, server)
        yield Target(server.base, server.auth, server, canaries, paths)
    finally:
        server.stop()


def report(corpus: Part, auth: Part, kill: Part, seconds: float, as_json: bool) -> int:
    """Print the per-part counts and the summary line; the exit status."""
    for part in (corpus, auth, kill):  # each failure was printed as it happened ("FAIL ...")
        failed = len(part.failures)
        counts = f"{part.count} checks, {part.count - failed} passed, {failed} failed"
        log(f"{part.name}: {f'skipped ({part.skipped})' if part.skipped else counts}")
    line = summary_line(corpus, auth, kill)
    log(f"{line} ({seconds:.0f} s)")
    if as_json:
        parts = {p.name: p.as_json() for p in (corpus, auth, kill)}
        print(json.dumps({"summary": line, "seconds": round(seconds, 1), **parts}), flush=True)
    return 1 if corpus.failures or auth.failures or kill.failures else 0


if __name__ == "__main__":
    sys.exit(main())
