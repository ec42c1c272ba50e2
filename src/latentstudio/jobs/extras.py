"""Extras jobs at submission: every name and size is checked before the job is queued, so the worker fails
only on what cannot be known without reading a weights file (corrupt, or of another architecture)."""

from __future__ import annotations

from latentstudio.core import FieldError
from latentstudio.jobs.model import ExtrasSpec
from latentstudio.postprocess.extras import output_size
from latentstudio.postprocess.faces import FaceRestorerError, FaceRestorers
from latentstudio.postprocess.upscalers import UpscalerNotFoundError, UpscalerRegistry

_FACE_FIELDS = (("gfpgan_visibility", "GFPGAN"), ("codeformer_visibility", "CodeFormer"))


def check_extras(
    spec: ExtrasSpec, *, upscalers: UpscalerRegistry, faces: FaceRestorers, max_pixels: int
) -> None:
    """Raise :class:`FieldError` naming the A1111 field: an unknown upscaler (the message lists the
    available ones), a face restorer asked for without usable weights, or a result that would be empty or
    larger than ``max_pixels``. Loads nothing; the upscaler folders are rescanned once on a miss."""
    options = spec.options
    for field in ("upscaler_1", "upscaler_2"):
        name = getattr(options, field)
        try:
            find_upscaler(upscalers, name)
        except UpscalerNotFoundError as e:
            raise FieldError(field, str(e)) from None
    for field, restorer in _FACE_FIELDS:
        if getattr(options, field) > 0:
            try:
                faces.check(restorer)
            except FaceRestorerError as e:
                raise FieldError(field, str(e)) from None
    field = "upscaling_resize_w" if options.resize_mode == 1 else "upscaling_resize"
    for number, image in enumerate(spec.images, start=1):
        width, height = output_size(image.size, options)
        source = f"image {number} ({image.width}×{image.height})"
        if width < 1 or height < 1:
            raise FieldError(field, f"{source} would be upscaled to nothing ({width}×{height})")
        if width * height > max_pixels:
            raise FieldError(field, f"{source} would become {width}×{height}, more than {max_pixels} pixels")


def find_upscaler(upscalers: UpscalerRegistry, name: str) -> None:
    """Raise :class:`UpscalerNotFoundError` unless ``name`` is an upscaler, after one rescan on a miss."""
    try:
        upscalers.find(name)
    except UpscalerNotFoundError:
        upscalers.refresh()  # a file added since the last scan is found without a restart
        upscalers.find(name)
