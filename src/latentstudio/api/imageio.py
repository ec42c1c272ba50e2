"""Images over HTTP: base64 in (bounded, never fetched from a URL), base64 PNG out (with infotext).

Decoding checks the pixel count from the header before decoding any pixel, and Pillow's own
decompression-bomb guard stays on; only the :data:`FORMATS` clients send are opened. Every failure is an
:class:`FieldError` naming the field (4xx).
"""

from __future__ import annotations

import base64
import binascii
import re
import warnings
from io import BytesIO

from PIL import Image, ImageOps, UnidentifiedImageError

from latentstudio.core import FieldError
from latentstudio.pipeline.images import png_bytes

# The formats clients send (A1111's UIs and plugins): Pillow's other decoders are never reached from HTTP
# (EPS would start Ghostscript where it is installed; rarer formats have the longer CVE lists).
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
_DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


def decode_image(data: str, field: str, *, max_pixels: int) -> Image.Image:
    """A base64 image (an optional ``data:image/...;base64,`` prefix is stripped) as a loaded RGB/RGBA
    PIL image. URLs are refused: this server never fetches anything."""
    text = data.strip()
    if text.lower().startswith(("http://", "https://", "ftp://", "file:")):
        raise FieldError(field, "image URLs are not fetched; send the image as base64")
    text = _DATA_URL.sub("", text, count=1)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(field, "not valid base64") from None
    if not raw:
        raise FieldError(field, "empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(BytesIO(raw), formats=FORMATS)
            width, height = opened.size
            if width * height > max_pixels:
                raise FieldError(field, f"{width}×{height} is more than {max_pixels} pixels")
            opened.load()
            image: Image.Image = ImageOps.exif_transpose(opened)
    except FieldError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise FieldError(field, f"image too large to decode safely ({e})") from None
    except UnidentifiedImageError:
        raise FieldError(field, f"cannot decode the image: not {', '.join(FORMATS)} data") from None
    except (OSError, SyntaxError, ValueError):
        raise FieldError(field, "cannot decode the image: the data is truncated or corrupt") from None
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "transparency" in image.info or image.mode in ("LA", "PA") else "RGB")
    return image


def encode_png_base64(image: Image.Image, infotext: str | None) -> str:
    """A PNG with the infotext in its ``parameters`` chunk, as bare base64 (A1111's format)."""
    return base64.b64encode(png_bytes(image, infotext)).decode("ascii")
