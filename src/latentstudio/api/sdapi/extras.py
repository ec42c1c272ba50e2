"""Extras (``extra-single-image`` / ``extra-batch-images``) with the built-in upscalers, and ``png-info``.

Upscaling follows A1111's ``Upscaler.upscale`` and its "Upscale" postprocessing step (reference §1.9, §7):
the target is the scaled size rounded down to a multiple of 8; the upscaler is applied until the image is
at least that large, then resized to it exactly with Lanczos; "scale to" (``resize_mode`` 1) scales by
``max(w/W, h/H)`` and centre-crops onto a black canvas when ``upscaling_crop``; a second upscaler is blended
in with ``extras_upscaler_2_visibility``. Only "None", "Lanczos" and "Nearest" exist until model upscalers
land (issue 9): other names, and face restoration (GFPGAN / CodeFormer visibility > 0), are refused with 422
(A1111 answers an unknown upscaler with a 500).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from io import BytesIO
from typing import Any

from PIL import Image, PngImagePlugin

from latentstudio import infotext
from latentstudio.api.errors import InputError
from latentstudio.api.sdapi.models import ExtrasBase
from latentstudio.pipeline.images import INFOTEXT_KEY

UPSCALERS: dict[str, Image.Resampling | None] = {
    "None": None,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
POSTPROCESSING_KEY = "postprocessing"
_IGNORED_INFO = {
    "dpi", "exif", "loop", "background", "timestamp", "duration", "progressive", "progression",
    "icc_profile", "chromaticity", "photoshop",
}  # fmt: skip
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286


def _upscaler(name: str, field: str) -> Image.Resampling | None:
    if name not in UPSCALERS:
        allowed = ", ".join(UPSCALERS)
        raise InputError(field, f"unknown upscaler {name!r}; allowed: {allowed} (model upscalers: issue 9)")
    return UPSCALERS[name]


def check_request(req: ExtrasBase) -> None:
    """Refuse what this server cannot do (face restoration, unknown upscalers) before any decoding."""
    if req.gfpgan_visibility > 0:
        raise InputError("gfpgan_visibility", "face restoration (GFPGAN) is not supported; use 0")
    if req.codeformer_visibility > 0:
        raise InputError("codeformer_visibility", "face restoration (CodeFormer) is not supported; use 0")
    _upscaler(req.upscaler_1, "upscaler_1")
    _upscaler(req.upscaler_2, "upscaler_2")


def _scale(image: Image.Image, resample: Image.Resampling, scale: float, max_pixels: int) -> Image.Image:
    """A1111 ``Upscaler.upscale`` for a plain resampling upscaler."""
    dest_w, dest_h = int(image.width * scale) // 8 * 8, int(image.height * scale) // 8 * 8
    if dest_w < 1 or dest_h < 1:
        raise InputError("upscaling_resize", f"the result would be empty ({dest_w}×{dest_h})")
    if dest_w * dest_h > max_pixels:
        raise InputError("upscaling_resize", f"the result {dest_w}×{dest_h} is more than {max_pixels} pixels")
    for attempt in range(3):
        if image.width >= dest_w and image.height >= dest_h and (attempt > 0 or scale != 1):
            break
        before = image.size
        image = image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)
        if image.size == before:
            break
    if image.size != (dest_w, dest_h):
        image = image.resize((dest_w, dest_h), resample=Image.Resampling.LANCZOS)
    return image


def _upscale_step(
    image: Image.Image, req: ExtrasBase, resample: Image.Resampling, info: dict[str, object], max_pixels: int
) -> Image.Image:
    """One upscaler run with the request's mode ("scale by" / "scale to" with optional crop)."""
    width, height = req.upscaling_resize_w, req.upscaling_resize_h
    if req.resize_mode == 1:
        scale = max(width / image.width, height / image.height)
        info["Postprocess upscale to"] = f"{width}x{height}"
    else:
        scale = req.upscaling_resize
        info["Postprocess upscale by"] = scale
    result = _scale(image, resample, scale, max_pixels)
    if req.resize_mode == 1 and req.upscaling_crop:
        canvas = Image.new("RGB", (width, height))
        canvas.paste(result, box=(width // 2 - result.width // 2, height // 2 - result.height // 2))
        result = canvas
        info["Postprocess crop to"] = f"{result.width}x{result.height}"
    return result


def postprocess(image: Image.Image, req: ExtrasBase, max_pixels: int) -> tuple[Image.Image, str]:
    """The upscaled image (keeping the source's ``parameters`` and adding a ``postprocessing`` entry) and
    its postprocessing infotext."""
    info: dict[str, object] = {}
    source_info = {k: v for k, v in image.info.items() if isinstance(v, str)}
    first = _upscaler(req.upscaler_1, "upscaler_1")
    result = image.copy()
    if first is not None:
        result = _upscale_step(image, req, first, info, max_pixels)
        info["Postprocess upscaler"] = req.upscaler_1
        second = _upscaler(req.upscaler_2, "upscaler_2")
        if second is not None and req.extras_upscaler_2_visibility > 0:
            other = _upscale_step(image, req, second, info, max_pixels)
            if other.mode != result.mode:
                other = other.convert(result.mode)
            result = Image.blend(result, other, req.extras_upscaler_2_visibility)
            info["Postprocess upscaler 2"] = req.upscaler_2
    text = ", ".join(k if k == v else f"{k}: {infotext.quote(v)}" for k, v in info.items())
    result.info = {**source_info, POSTPROCESSING_KEY: text}
    return result, text


def html_info(text: str) -> str:
    """A1111 ``plaintext_to_html``: escaped lines joined by ``<br>`` inside ``<p>``."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def encode_png(image: Image.Image) -> str:
    """Base64 PNG keeping the ``parameters`` and ``postprocessing`` text entries (A1111 keeps every text
    entry; those two are the ones it writes)."""
    chunks = PngImagePlugin.PngInfo()
    for key in (INFOTEXT_KEY, POSTPROCESSING_KEY):
        value = image.info.get(key)
        if isinstance(value, str) and value:
            chunks.add_text(key, value)
    buffer = BytesIO()
    image.save(buffer, format="PNG", pnginfo=chunks)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


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
