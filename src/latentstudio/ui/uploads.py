"""Files a client names in a UI event: only files it uploaded through this page, never any other path, and
as images only what the server decodes safely.

Gradio 6.31 refuses an event input whose ``FileData`` path is outside its upload folder in
``processing_utils._check_allowed`` (called by ``async_move_files_to_cache`` from
``Blocks.preprocess_data``), but that check returns at once unless ``Blocks.has_launched`` is set, and only
``Blocks.launch()`` sets it: a Blocks mounted with ``gr.mount_gradio_app`` skipped it, so
``/gradio_api/run/<name>`` and ``/gradio_api/queue/join`` copied (after hashing: ``/dev/zero`` never ends,
on the event loop) any file the server could read into the cache and handed it to the handler. Three
layers close that: :func:`mark_mounted` turns Gradio's own check on,
:class:`~latentstudio.ui.inputs.GuardedBlocks` refuses a payload naming anything but an uploaded file (or
naming a URL, which Gradio would download) before Gradio touches it (:func:`check_payload`), and the
handlers that receive a path check it again with :func:`uploaded_image`. An uploaded file given to an
image input is checked from its header (:func:`check_image`) before Gradio decodes it.
"""

from __future__ import annotations

import stat
import warnings
from pathlib import Path, PurePath
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder
from PIL import Image, UnidentifiedImageError

# Larger than any upload the server's body limit lets through (50 MiB by default).
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
NOT_UPLOADED = "not a file uploaded through this page"
# The formats a page sends (the API's too): Pillow's other decoders are never reached from the UI (EPS
# would start Ghostscript where it is installed; rarer formats have the longer CVE lists).
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
NOT_AN_IMAGE = "not a PNG, JPEG, WebP, BMP or GIF image"
CORRUPT = "cannot decode the image: the data is truncated or corrupt"
TOO_LARGE = "image too large to decode safely"


class InputError(gr.Error):
    """A refused event input, shown to the user as it is (no traceback logged: it is the client's doing)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, print_exception=False)


class UploadError(InputError):
    """A refused file reference or uploaded file."""


def uploaded_file(path: object) -> Path:
    """``path`` resolved, when it names a regular file of at most :data:`MAX_UPLOAD_BYTES` inside Gradio's
    upload folder (symlinks followed; no ``..``); :class:`UploadError` otherwise. Nothing is opened."""
    if not isinstance(path, str) or not path or ".." in PurePath(path).parts:
        raise UploadError(NOT_UPLOADED)
    folder = Path(get_upload_folder()).resolve()
    try:
        resolved = Path(path).resolve(strict=True)
        info = resolved.stat()
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a NUL byte
        raise UploadError(NOT_UPLOADED) from None
    if not resolved.is_relative_to(folder) or not stat.S_ISREG(info.st_mode):
        raise UploadError(NOT_UPLOADED)
    if info.st_size > MAX_UPLOAD_BYTES:
        raise UploadError(f"the file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    return resolved


def check_image(file: Path, max_pixels: int) -> None:
    """Refuse (:class:`UploadError`) ``file`` unless its header is one of :data:`FORMATS` with at most
    ``max_pixels`` pixels; no pixel is decoded. Pillow's decompression-bomb warning is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(file, formats=FORMATS) as image:
                width, height = image.size
        except UnidentifiedImageError:
            raise UploadError(NOT_AN_IMAGE) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UploadError(TOO_LARGE) from None
        except (OSError, SyntaxError, ValueError):  # what some broken headers raise
            raise UploadError(CORRUPT) from None
    if width * height > max_pixels:
        raise UploadError(f"image too large: {width}×{height} is more than {max_pixels} pixels")


def uploaded_image(path: str, max_pixels: int) -> Image.Image:
    """An uploaded image (checked by :func:`uploaded_file` and :func:`check_image`), loaded;
    :class:`UploadError` for a refused path, a file that is not an image or one that does not decode."""
    file = uploaded_file(path)
    check_image(file, max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(file, formats=FORMATS) as image:
                image.load()
                return image.copy()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UploadError(TOO_LARGE) from None
        except (OSError, SyntaxError, ValueError):  # a bad chunk, a text chunk bomb, truncated data
            raise UploadError(CORRUPT) from None


def file_references(value: Any) -> list[dict[str, Any]]:
    """Every object with a ``path`` string in an event's input value, at any depth (walked without
    recursion, so deep nesting cannot crash it)."""
    found = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("path"), str):
                found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return found


def check_payload(value: Any) -> None:
    """Refuse (:class:`UploadError`) any file reference in an event's input value that
    :func:`uploaded_file` refuses, and any that carries its data inline (a ``data:`` URL, which Gradio's
    image input would decode instead of the file)."""
    for reference in file_references(value):
        uploaded_file(reference["path"])
        url = reference.get("url")
        if isinstance(url, str) and url.lstrip().lower().startswith("data:"):
            raise UploadError("inline data: upload the file through this page")


def mark_mounted(demo: gr.Blocks) -> None:
    """Turn on Gradio's own upload check for a mounted Blocks (see the module's docstring): what
    ``launch()`` would have set; the server that mounts it is what launches it."""
    demo.has_launched = True
