"""GenerationParams and ExtrasOptions ↔ JSON, exactly: every field, enums by value, tuples kept, floats
bit-exact.

Image fields (``init_image``, and any other field annotated with a PIL image) are not part of the JSON:
the store keeps their PNG bytes beside the row (:func:`input_pngs`); an extras job's images likewise, as
``images.0``, ``images.1``… with their ``parameters`` infotext (:func:`extras_input_pngs`). Unknown types
fail loud at encode time, so a new field of a type this codec does not know cannot be silently dropped
(tests round-trip every field).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
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
    """JSON of every field but the images (Python's float repr round-trips exactly)."""
    images = image_fields()
    owner = type(params).__name__
    data = {
        f.name: _encode(getattr(params, f.name), f"{owner}.{f.name}")
        for f in dataclasses.fields(params)
        if f.name not in images
    }
    return json.dumps(data, ensure_ascii=False, allow_nan=False, sort_keys=True)


def params_from_json(text: str, images: Mapping[str, Image.Image] | None = None) -> ResolvedParams:
    """The inverse of :func:`params_to_json` plus :func:`input_pngs` (decoded); fields missing from older
    rows take their defaults. The store holds only resolved parameters, so they come back as such."""
    values = _values(GenerationParams, text, set(images or {}))
    values.update(images or {})
    return ResolvedParams(**values)


def extras_from_json(text: str) -> ExtrasOptions:
    """The inverse of :func:`params_to_json` for an extras job's options."""
    return ExtrasOptions(**_values(ExtrasOptions, text, set()))


def _values(cls: type, text: str, image_names: set[str]) -> dict[str, Any]:
    data = json.loads(text)
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((set(data) | image_names) - known)
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
    """Lossless PNG bytes of every image field that is set (``init_image``, masks…)."""
    return {
        name: image_to_png(value) for name in image_fields() if (value := getattr(params, name)) is not None
    }


@cache
def image_fields() -> frozenset[str]:
    """Names of the GenerationParams fields annotated with a PIL image."""
    return frozenset(name for name, hint in _hints(GenerationParams).items() if _mentions_image(hint))


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


def _encode(value: object, name: str) -> object:
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
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(v, args[0]) for v in value)
        return tuple(_decode(v, a) for v, a in zip(value, args, strict=True))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
