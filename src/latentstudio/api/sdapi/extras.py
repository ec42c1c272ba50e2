"""The A1111 extras request → an extras job, its finished job → the response; and ``png-info``.

``extra-single-image`` / ``extra-batch-images`` queue an :class:`~latentstudio.jobs.ExtrasSpec` on the job
service (checked there: unknown upscalers, face restoration without weights and oversized results are 422s
naming the field) and the worker runs ``postprocess.extras.run_extras`` with its upscalers (the built-in
ones and model files from ``models/ESRGAN``, ``models/RealESRGAN``, …) and face restorers (GFPGAN,
CodeFormer). The PNGs it writes keep the source's ``parameters`` and carry the ``postprocessing`` text;
they are returned as written.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from latentstudio.pipeline.images import INFOTEXT_KEY
from latentstudio.postprocess.extras import html_info as _html_info

_IGNORED_INFO = {
    "dpi", "exif", "loop", "background", "timestamp", "duration", "progressive", "progression",
    "icc_profile", "chromaticity", "photoshop",
}  # fmt: skip
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286


def html_info(texts: Sequence[str]) -> str:
    """A1111's ``html_info``: the last image's ``postprocessing`` text, HTML-escaped inside ``<p>``."""
    return _html_info(texts[-1] if texts else "")


def encode(png: bytes) -> str:
    """A written PNG as A1111 returns it: bare base64."""
    return base64.b64encode(png).decode("ascii")


def _user_comment(image: Image.Image) -> str | None:
    """The EXIF UserComment A1111 writes into JPEG / WebP (piexif's "UNICODE" or "ASCII" encodings)."""
    raw = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes):
        return None
    decoders: dict[bytes, Callable[[bytes], str]] = {
        b"UNICODE\0": lambda b: b.decode("utf-16-be", errors="replace"),
        b"ASCII\0\0\0": lambda b: b.decode("ascii", errors="replace"),
    }
    for prefix, decode in decoders.items():
        if raw.startswith(prefix):
            return decode(raw[len(prefix) :])
    return None


def png_info(image: Image.Image) -> tuple[str, dict[str, Any]]:
    """A1111 ``read_info_from_image``: the infotext ('' if none) and the other plain info entries."""
    items = {
        k: v
        for k, v in image.info.items()
        if isinstance(k, str) and isinstance(v, str | int | float | bool) and not k.startswith("jfif")
    }
    text = items.pop(INFOTEXT_KEY, None)
    if "exif" in image.info:
        text = _user_comment(image) or text
    for key in _IGNORED_INFO:
        items.pop(key, None)
    return (text if isinstance(text, str) else ""), items
