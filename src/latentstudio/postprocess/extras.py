"""A1111 extras (``/sdapi/v1/extra-single-image``, ``extra-batch-images``) as pure functions over PIL images.

Contract for the server: build one :class:`ExtrasOptions` from the request (field names are A1111's),
decode the images, then call :func:`run_extras` (one image) or :func:`run_extras_batch` (a list, same
options) with the process's :class:`UpscalerRegistry` and :class:`FaceRestorers` (the job worker's: an
extras job runs there, like a generation); :func:`output_size` tells the result's size without any work.
Each result has the processed RGB image, the ``postprocessing`` infotext to store in its PNG text chunk,
and the input's ``parameters`` infotext (None if it had none) to keep beside it; :func:`html_info` makes
the response's ``html_info``. Errors: :class:`UpscalerNotFoundError` (unknown upscaler name; A1111
answers 500), :class:`FaceRestorerError` (restoration asked for without weights), ``ValueError`` for a
bad option; all are raised before any image is processed when they come from the options.

Order of operations, as A1111's postprocessing scripts: Upscale (order 1000), then GFPGAN (2000), then
CodeFormer (3000); ``upscale_first`` is accepted and ignored, as in A1111.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from latentstudio.infotext import quote
from latentstudio.postprocess.faces import FaceRestorers
from latentstudio.postprocess.upscalers import UpscalerRegistry, upscale


@dataclass(frozen=True)
class ExtrasOptions:
    """The processing fields of an extras request, with A1111's names and API defaults.

    ``resize_mode`` 0: scale by ``upscaling_resize``; 1: scale to ``upscaling_resize_w × _h`` (cover, then
    centre-crop onto a black canvas when ``upscaling_crop``). Visibilities and ``codeformer_weight`` are
    in [0, 1]; a visibility of 0 skips that step.
    """

    resize_mode: int = 0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscale_first: bool = False

    def __post_init__(self) -> None:
        if self.resize_mode not in (0, 1):
            raise ValueError(f"resize_mode must be 0 (scale by) or 1 (scale to), got {self.resize_mode}")
        if not self.upscaling_resize > 0:
            raise ValueError(f"upscaling_resize must be > 0, got {self.upscaling_resize}")
        if self.upscaling_resize_w < 1 or self.upscaling_resize_h < 1:
            raise ValueError("upscaling_resize_w and upscaling_resize_h must be ≥ 1")
        for name in ("extras_upscaler_2_visibility", "gfpgan_visibility", "codeformer_visibility"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.codeformer_weight <= 1.0:
            raise ValueError(f"codeformer_weight must be in [0, 1], got {self.codeformer_weight}")


@dataclass(frozen=True)
class ExtrasResult:
    """One processed image, its ``postprocessing`` infotext and the input's ``parameters`` (or None)."""

    image: Image.Image
    postprocessing: str
    parameters: str | None


def html_info(postprocessing: str) -> str:
    """A1111's ``html_info``: the infotext HTML-escaped inside ``<p>…</p>``."""
    return f"<p>{html.escape(postprocessing)}</p>"


def output_size(size: tuple[int, int], options: ExtrasOptions) -> tuple[int, int]:
    """The size :func:`run_extras` gives an image of ``size`` (face restoration keeps the size). A side is 0
    when the scale makes the image empty (``run_extras`` then raises ``ValueError``)."""
    width, height = size
    if options.upscaler_1 == "None":
        return size
    if options.resize_mode == 1:
        if options.upscaling_crop:
            return options.upscaling_resize_w, options.upscaling_resize_h
        scale = max(options.upscaling_resize_w / width, options.upscaling_resize_h / height)
    else:
        scale = float(options.upscaling_resize)
    return int(width * scale // 8 * 8), int(height * scale // 8 * 8)  # as upscalers.upscale(scale=)


def _format_info(info: dict[str, object]) -> str:
    """A1111: ``k: quote(v)`` joined by ``, ``; a key equal to its value is written alone; None dropped."""
    return ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in info.items() if v is not None)


def _check_names(options: ExtrasOptions, upscalers: UpscalerRegistry, faces: FaceRestorers) -> None:
    for name in (options.upscaler_1, options.upscaler_2):
        upscalers.find(name)
    if options.gfpgan_visibility > 0:
        faces.model("GFPGAN")
    if options.codeformer_visibility > 0:
        faces.model("CodeFormer")


def _upscale_step(
    image: Image.Image,
    name: str,
    options: ExtrasOptions,
    info: dict[str, object],
    upscalers: UpscalerRegistry,
) -> Image.Image:
    """A1111 ``ScriptPostprocessingUpscale.upscale`` for one upscaler (keys written into ``info``)."""
    if options.resize_mode == 1:
        width, height = options.upscaling_resize_w, options.upscaling_resize_h
        scale = max(width / image.width, height / image.height)
        info["Postprocess upscale to"] = f"{width}x{height}"
    else:
        scale = float(options.upscaling_resize)
        info["Postprocess upscale by"] = scale  # a float, as A1111 writes it ("2.0")
    result = upscale(image, name, scale=scale, registry=upscalers)
    if options.resize_mode == 1 and options.upscaling_crop:
        canvas = Image.new("RGB", (width, height))
        canvas.paste(result, box=(width // 2 - result.width // 2, height // 2 - result.height // 2))
        result = canvas
        info["Postprocess crop to"] = f"{width}x{height}"
    return result


def _process(
    image: Image.Image, options: ExtrasOptions, upscalers: UpscalerRegistry, faces: FaceRestorers
) -> tuple[Image.Image, dict[str, object]]:
    info: dict[str, object] = {}
    if options.upscaler_1 != "None":
        upscaled = _upscale_step(image, options.upscaler_1, options, info, upscalers)
        info["Postprocess upscaler"] = options.upscaler_1
        if options.upscaler_2 != "None" and options.extras_upscaler_2_visibility > 0:
            second = _upscale_step(image, options.upscaler_2, options, info, upscalers)
            upscaled = Image.blend(upscaled, second, options.extras_upscaler_2_visibility)
            info["Postprocess upscaler 2"] = options.upscaler_2
        image = upscaled
    if options.gfpgan_visibility > 0:
        restored = faces.restore(image, "GFPGAN")
        image = Image.blend(image, restored, options.gfpgan_visibility)
        info["GFPGAN visibility"] = round(options.gfpgan_visibility, 3)
    if options.codeformer_visibility > 0:
        restored = faces.restore(image, "CodeFormer", codeformer_weight=options.codeformer_weight)
        image = Image.blend(image, restored, options.codeformer_visibility)
        info["CodeFormer visibility"] = round(options.codeformer_visibility, 3)
        info["CodeFormer weight"] = round(options.codeformer_weight, 3)
    return image, info


def run_extras(
    image: Image.Image, options: ExtrasOptions, *, upscalers: UpscalerRegistry, faces: FaceRestorers
) -> ExtrasResult:
    """Process one image (converted to RGB, as A1111) → :class:`ExtrasResult`. See the module docstring."""
    return run_extras_batch([image], options, upscalers=upscalers, faces=faces)[0]


def run_extras_batch(
    images: Sequence[Image.Image],
    options: ExtrasOptions,
    *,
    upscalers: UpscalerRegistry,
    faces: FaceRestorers,
) -> list[ExtrasResult]:
    """Process each image with the same options, in order; names and weights are checked first."""
    _check_names(options, upscalers, faces)
    results = []
    for image in images:
        parameters = image.info.get("parameters")
        processed, info = _process(image.convert("RGB"), options, upscalers, faces)
        text = parameters if isinstance(parameters, str) else None
        results.append(ExtrasResult(processed, _format_info(info), text))
    return results
