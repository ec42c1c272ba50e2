"""GenerationParams and ExtrasOptions ↔ JSON, exactly: every field, nested parts as objects, enums by
value, tuples kept, floats bit-exact.

Image fields (``init_image``, ``inpaint.mask``: any field annotated with a PIL image) are not part of the
JSON: the store keeps their PNG bytes beside the row, by dotted name (:func:`input_pngs`); an extras job's
images likewise, as ``images.0``, ``images.1``… with their ``parameters`` infotext
(:func:`extras_input_pngs`). Unknown types fail loud at encode time, so a new field of a type this codec
does not know cannot be silently dropped (tests round-trip every field).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from enum import Enum
from functools import cache
from io import BytesIO
from typing import Any

from PIL import Image

from latentstudio.pipeline.images import png_bytes, read_infotext
from latentstudio.pipeline.params import GenerationParams, ResolvedParams
from latentstudio.postprocess.extras import ExtrasOptions

_EXTRAS_IMAGE = "images."  # input field prefix of an extras job's images (then the index)


def params_to_json(params: GenerationParams | ExtrasOptions) -> str:
    """JSON of every field but the images, nested parts as objects (Python's float repr round-trips
    exactly)."""
    data = _encode_fields(params, type(params).__name__)
    return json.dumps(data, ensure_ascii=False, allow_nan=False, sort_keys=True)


def params_from_json(text: str, images: Mapping[str, Image.Image] | None = None) -> ResolvedParams:
    """The inverse of :func:`params_to_json` plus :func:`input_pngs` (decoded); fields missing from older
    rows take their defaults, and rows from before ``hires``/``inpaint`` were nested are read as they
    meant. The store holds only resolved parameters, so they come back as such."""
    data, pictures = _upgrade_flat(json.loads(text), dict(images or {}))
    for name, image in pictures.items():
        *owner, field = name.split(".")
        part = _part(data, owner)
        if not isinstance(part, dict):
            raise ValueError(f"stored input image {name!r} belongs to no stored field")
        part[field] = image
    return ResolvedParams(**_decode_fields(GenerationParams, data))


def extras_from_json(text: str) -> ExtrasOptions:
    """The inverse of :func:`params_to_json` for an extras job's options."""
    return ExtrasOptions(**_decode_fields(ExtrasOptions, json.loads(text)))


def _part(data: object, path: Sequence[str]) -> object:
    """The stored part a dotted image name's owner path leads to: fields of nested parts, and indices
    into tuples of parts (``control.0``); None where there is none."""
    for key in path:
        if isinstance(data, list) and key.isdigit() and int(key) < len(data):
            data = data[int(key)]
        elif isinstance(data, dict):
            data = data.get(key)
        else:
            return None
    return data


_FLAT_HIRES = {  # schema v2 rows: the flat hires fields → Hires
    "hr_scale": "scale", "hr_resize_x": "resize_x", "hr_resize_y": "resize_y", "hr_upscaler": "upscaler",
    "hr_second_pass_steps": "steps", "hr_sampler": "sampler", "hr_scheduler": "scheduler",
    "hr_prompt": "prompt", "hr_negative_prompt": "negative_prompt", "hr_checkpoint": "checkpoint",
}  # fmt: skip
_FLAT_INPAINT = {  # schema v2 rows: the flat mask fields → Inpaint (the mask image was stored as "mask")
    "mask_blur": "blur", "inpainting_fill": "fill", "inpaint_full_res": "only_masked",
    "inpaint_full_res_padding": "padding", "inpainting_mask_invert": "invert",
}  # fmt: skip


def _upgrade_flat(
    data: dict[str, Any], images: dict[str, Image.Image]
) -> tuple[dict[str, Any], dict[str, Image.Image]]:
    """A row queued by a version with flat ``enable_hr``/``hr_*`` and mask fields, in today's shape (the
    hires pass shared ``denoising_strength`` then); a row of today's shape is returned as it is."""
    hires = {new: data.pop(old) for old, new in _FLAT_HIRES.items() if old in data}
    if data.pop("enable_hr", False):
        data["hires"] = {**hires, "denoising_strength": data.get("denoising_strength", 0.75)}
    inpaint = {new: data.pop(old) for old, new in _FLAT_INPAINT.items() if old in data}
    if "mask" in images:
        images["inpaint.mask"] = images.pop("mask")
        data["inpaint"] = inpaint
    return data, images


def _decode_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """``cls``'s constructor arguments from stored ``data`` (nested parts and images included)."""
    hints = _hints(cls)
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"stored parameters have fields this version does not know: {', '.join(unknown)}")
    return {name: _decode(value, hints[name]) for name, value in data.items()}


def extras_input_pngs(images: Sequence[Image.Image]) -> dict[str, bytes]:
    """An extras job's images as lossless PNGs that keep their ``parameters`` infotext, in order."""
    return {f"{_EXTRAS_IMAGE}{i}": png_bytes(image, read_infotext(image)) for i, image in enumerate(images)}


def extras_images(inputs: Mapping[str, Image.Image]) -> tuple[Image.Image, ...]:
    """The inverse of :func:`extras_input_pngs` (decoded), in the submitted order."""
    unknown = sorted(name for name in inputs if not name.startswith(_EXTRAS_IMAGE))
    if unknown:
        raise ValueError(f"stored extras inputs this version does not know: {', '.join(unknown)}")
    return tuple(inputs[name] for name in sorted(inputs, key=lambda n: int(n[len(_EXTRAS_IMAGE) :])))


def input_pngs(params: GenerationParams) -> dict[str, bytes]:
    """Lossless PNG bytes of every image that is set, by dotted field name (``init_image``,
    ``inpaint.mask``)."""
    return {name: image_to_png(image) for name, image in _images(params, "")}


def _images(part: object, prefix: str) -> Iterator[tuple[str, Image.Image]]:
    for f in dataclasses.fields(part):  # type: ignore[arg-type]
        value = getattr(part, f.name)
        items = enumerate(value) if isinstance(value, tuple) else ()
        if isinstance(value, Image.Image):
            yield prefix + f.name, value
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _images(value, f"{prefix}{f.name}.")
        for i, item in items:  # a tuple of parts (ControlNet units): "control.0.image"
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                yield from _images(item, f"{prefix}{f.name}.{i}.")


def _mentions_image(hint: Any) -> bool:
    if isinstance(hint, type) and issubclass(hint, Image.Image):
        return True
    return any(_mentions_image(arg) for arg in typing.get_args(hint))


def image_to_png(image: Image.Image) -> bytes:
    """Lossless PNG bytes of an init image (mode kept; metadata dropped)."""
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _encode_fields(part: Any, owner: str) -> dict[str, object]:
    """A dataclass's fields as JSON values, but the image fields (stored beside the row)."""
    cls: type = type(part)
    hints = _hints(cls)
    return {
        f.name: _encode(getattr(part, f.name), f"{owner}.{f.name}")
        for f in dataclasses.fields(part)
        if not _mentions_image(hints[f.name])
    }


def _encode(value: object, name: str) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encode_fields(value, name)
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple | list):
        return [_encode(v, name) for v in value]
    raise TypeError(f"{name}: cannot store a {type(value).__name__} in the job store")


def _decode(value: object, hint: Any) -> object:  # noqa: PLR0911 - one return per kind of type
    """Rebuild ``value`` as the annotated type: enums from values, tuples from lists, X | None."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _decode(value, options[0]) if len(options) == 1 else value
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return hint(**_decode_fields(hint, value))
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(v, args[0]) for v in value)
        return tuple(_decode(v, a) for v, a in zip(value, args, strict=True))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
