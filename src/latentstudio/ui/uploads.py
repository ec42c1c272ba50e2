"""Files a client names in a UI event: only files it uploaded through this page, never any other path.

Gradio 6.31 refuses an event input whose ``FileData`` path is outside its upload folder in
``processing_utils._check_allowed`` (called by ``async_move_files_to_cache`` from
``Blocks.preprocess_data``), but that check returns at once unless ``Blocks.has_launched`` is set, and only
``Blocks.launch()`` sets it: a Blocks mounted with ``gr.mount_gradio_app`` skipped it, so
``/gradio_api/run/<name>`` and ``/gradio_api/queue/join`` copied (after hashing: ``/dev/zero`` never ends,
on the event loop) any file the server could read into the cache and handed it to the handler. Three
layers close that here: :func:`mark_mounted` turns Gradio's own check on, :class:`GuardedBlocks` refuses a
payload naming anything but an uploaded file (or naming a URL, which Gradio would download) before Gradio
touches it, and the handlers that receive a path check it again with :func:`uploaded_image`.
"""

from __future__ import annotations

import stat
import warnings
from pathlib import Path, PurePath
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder
from PIL import Image

# Larger than any upload the server's body limit lets through (50 MiB by default).
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
NOT_UPLOADED = "not a file uploaded through this page"


class UploadError(gr.Error):
    """A refused file reference (shown to the user; no traceback logged: it is the client's doing)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, print_exception=False)


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


def uploaded_image(path: str) -> Image.Image:
    """An uploaded image (checked by :func:`uploaded_file`), loaded; Pillow's decompression-bomb limit is
    an error. :class:`UploadError` for a refused path, ``OSError`` for a file that is not an image."""
    file = uploaded_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(file) as image:
                image.load()
                return image.copy()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise OSError(f"too large to decode safely ({e})") from None
        except (SyntaxError, ValueError) as e:  # what some broken files raise instead of OSError
            raise OSError(str(e)) from None


def check_payload(value: Any) -> None:
    """Refuse (:class:`UploadError`) any file reference in an event's input value that
    :func:`uploaded_file` refuses: every object with a ``path`` string, at any depth (walked without
    recursion, so deep nesting cannot crash it)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("path"), str):
                uploaded_file(item["path"])
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


class GuardedBlocks(gr.Blocks):
    """``gr.Blocks`` whose events refuse a file reference that is not an upload of this page, before
    Gradio moves, hashes or downloads anything (``preprocess_data`` is where every route's inputs go)."""

    async def preprocess_data(
        self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False
    ) -> Any:
        if not explicit_call:  # an explicit call is Python code calling the Blocks, not a client
            check_payload(inputs)
        return await super().preprocess_data(block_fn, inputs, state, explicit_call)


def mark_mounted(demo: gr.Blocks) -> None:
    """Turn on Gradio's own upload check for a mounted Blocks (see the module's docstring): what
    ``launch()`` would have set; the server that mounts it is what launches it."""
    demo.has_launched = True
