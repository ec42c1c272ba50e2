"""img2img resize modes exactly as A1111's ``images.resize_image`` (Lanczos; no upscaler model)."""

from __future__ import annotations

from PIL import Image

from latentstudio.pipeline.params import ResizeMode


def _lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), resample=Image.Resampling.LANCZOS)


def resize_image(image: Image.Image, width: int, height: int, mode: ResizeMode) -> Image.Image:
    """Fit ``image`` to ``width × height``: stretch, crop to fill, or resize and fill the borders by
    stretching the edge rows/columns. ``LATENT_UPSCALE`` keeps the image (floored to a multiple of 8):
    its latent is resized instead."""
    image = image.convert("RGB")
    if mode is ResizeMode.JUST_RESIZE:
        return _lanczos(image, width, height)
    if mode is ResizeMode.LATENT_UPSCALE:
        return image.crop((0, 0, image.width // 8 * 8, image.height // 8 * 8))
    ratio, src_ratio = width / height, image.width / image.height
    if mode is ResizeMode.CROP_AND_RESIZE:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
    else:
        src_w = width if ratio < src_ratio else image.width * height // image.height
        src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = _lanczos(image, src_w, src_h)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode is ResizeMode.RESIZE_AND_FILL:
        _fill_borders(result, resized, width, height, ratio, src_ratio)
    return result


def _fill_borders(  # noqa: PLR0917 - mirrors A1111's arithmetic
    result: Image.Image, resized: Image.Image, width: int, height: int, ratio: float, src_ratio: float
) -> None:
    """Stretch the first/last row (or column) of ``resized`` over the empty bands of ``result``."""
    src_w, src_h = resized.size
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            result.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            bottom = resized.resize((width, fill), box=(0, resized.height, width, resized.height))
            result.paste(bottom, box=(0, fill + src_h))
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            result.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            right = resized.resize((fill, height), box=(resized.width, 0, resized.width, height))
            result.paste(right, box=(fill + src_w, 0))
