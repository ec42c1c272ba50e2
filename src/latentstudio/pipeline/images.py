"""Images in and out: tensor ↔ PIL, PNGs written atomically with the infotext, A1111 output naming.

A1111 layout: ``outputs/txt2img-images/YYYY-MM-DD/NNNNN-SEED.png`` where NNNNN continues the highest
number already in the folder. Files appear whole (temp file + fsync + rename) or not at all.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from latentstudio.models.families import Family

INFOTEXT_KEY = "parameters"
POSTPROCESSING_KEY = "postprocessing"  # what an extras job did (A1111's key)
_NUMBERED = re.compile(r"^(\d+)-")


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Decoded images ``[B, 3, H, W]`` in [-1, 1] → RGB PIL images (A1111: clamp((x+1)/2), ×255, round)."""
    unit = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    array = (unit.permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """An init image as RGB: A1111 ``images.flatten`` composites a transparent image onto
    ``img2img_background_color`` (``background``, "#rrggbb"); any mode with transparency is composited
    (LA and palette images too, which A1111 converts with their hidden colours showing)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background)
        canvas.paste(rgba, mask=rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def from_pil(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → ``[1, 3, H, W]`` float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None] * 2.0 - 1.0


def png_bytes(image: Image.Image, infotext: str | None, *, postprocessing: str | None = None) -> bytes:
    """PNG encoding with the infotext in a ``parameters`` text chunk (iTXt when non-Latin-1, as PIL does)
    and, for extras results, A1111's ``postprocessing`` chunk; empty texts are left out."""
    info = PngImagePlugin.PngInfo()
    for key, text in ((INFOTEXT_KEY, infotext), (POSTPROCESSING_KEY, postprocessing)):
        if text:
            info.add_text(key, text)
    buffer = BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _write_temp(folder: Path, name: str, data: bytes) -> Path:
    """A fully written, fsynced hidden temp file in ``folder`` (same file system as the target)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the whole file or none (temp + fsync + rename)."""
    tmp = _write_temp(path.parent, path.name, data)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def next_number(folder: Path) -> int:
    """A1111's ``get_next_sequence_number``: one past the highest ``NNNNN-`` prefix in ``folder``."""
    if not folder.is_dir():
        return 0
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=-1) + 1


def save_image(
    image: Image.Image, outdir: Path, seed: int, infotext: str | None, *, day: date | None = None
) -> Path:
    """Save as ``outdir/YYYY-MM-DD/NNNNN-SEED.png`` with its infotext; returns the path."""
    folder = outdir / (day or date.today()).isoformat()
    tmp = _write_temp(folder, "image.png", png_bytes(image, infotext))
    try:
        with _folder_lock(folder):  # number + rename as one step across threads and processes
            path = folder / f"{next_number(folder):05d}-{seed}.png"
            os.replace(tmp, path)
        return path
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder/.latentstudio.lock`` (a no-op where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: numbering is then only safe within one writer
        yield
        return
    with (folder / ".latentstudio.lock").open("a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_infotext(image: Image.Image) -> str | None:
    """The ``parameters`` chunk of a PNG (or the EXIF UserComment A1111 writes for JPEG/WebP: not yet)."""
    value = image.info.get(INFOTEXT_KEY)
    return value if isinstance(value, str) else None


def latent_preview(latent: torch.Tensor, family: Family) -> Image.Image:
    """A cheap linear latent → RGB approximation (A1111 "Approx cheap") of the first image in the batch."""
    coefficients = _PREVIEW_SDXL if family in (Family.SDXL, Family.SDXL_REFINER) else _PREVIEW_SD
    weights = torch.tensor(coefficients, dtype=torch.float32)
    if latent.shape[1] != weights.shape[0]:
        weights = torch.ones(latent.shape[1], 3) / math.sqrt(latent.shape[1])
    rgb = torch.einsum("chw,cr->rhw", latent[0].float().cpu(), weights)
    return to_pil(rgb[None])[0]


_PREVIEW_SD = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
_PREVIEW_SDXL = [
    [0.3448, 0.4168, 0.4395],
    [-0.1953, -0.0290, 0.0250],
    [0.1074, 0.0886, -0.0163],
    [-0.3730, -0.2499, -0.2088],
]
