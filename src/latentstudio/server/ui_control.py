"""The ControlNet part of the web UI's backend: the preprocessors and model files a unit may pick, the units a
UI generation sends turned into the A1111 door's ``alwayson_scripts.controlnet.args`` (so they are read
and refused exactly as over HTTP), the detected-map preview, and the ``ControlNet N`` infotext entries a
pasted infotext carries.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import ValidationError

from latentstudio import infotext
from latentstudio.api.control_units import ControlNetUnitRequest, parse_units
from latentstudio.api.sdapi.convert import CONTROLNET
from latentstudio.control import hint, preprocessors
from latentstudio.control.library import ControlLibrary, ControlModelNotFoundError
from latentstudio.control.preprocess_ops import with_mask
from latentstudio.control.units import MAX_UNITS, ControlUnit, parse_infotext
from latentstudio.core import FieldError
from latentstudio.models.families import Family
from latentstudio.models.files import ModelFileError
from latentstudio.ui.backend import ControlInput, ControlModule, SliderSpec

ARGS = f"alwayson_scripts.{CONTROLNET}.args"  # how refusals name a UI unit: as the API request would
_ENTRY = re.compile(r"ControlNet (\d+)")


def control_modules(roots: Sequence[Path]) -> list[ControlModule]:
    """The preprocessors that need no weights or whose annotator files are in ``roots``, in the extension's
    order, with their sliders."""

    def spec(slider: preprocessors.Slider | None) -> SliderSpec | None:
        if slider is None:
            return None
        return SliderSpec(slider.label, slider.minimum, slider.maximum, slider.default, slider.step)

    out = []
    for name in preprocessors.module_list(roots=roots):
        p = preprocessors.find(name)
        out.append(ControlModule(name, spec(p.resolution), spec(p.threshold_a), spec(p.threshold_b)))
    return out


def control_models(library: ControlLibrary, family: Family | None) -> list[str]:
    """ "None", then the titles of the readable files of ``family`` (None: of every family)."""
    titles = ["None"]
    for file in library.files():
        try:
            info = library.info(file)
        except (ModelFileError, OSError):
            continue  # listed by /controlnet/model_list; a unit naming it gets the one-line error
        if family is None or info.family is family:
            titles.append(file.title)
    return titles


def units(
    controls: Sequence[ControlInput | None], max_pixels: int
) -> tuple[tuple[ControlUnit, ...], tuple[int, ...], str]:
    """The UI's units (None: disabled) read as the A1111 door reads ``alwayson_scripts.controlnet.args``:
    ``(enabled units, each one's index, the field that names them)``."""
    if len(controls) > MAX_UNITS:
        raise FieldError(ARGS, f"at most {MAX_UNITS} ControlNet units, got {len(controls)}")
    images: dict[str, Image.Image] = {}
    args: list[object] = []
    for i, control in enumerate(controls):
        if control is None:
            args.append(None)
            continue
        fields, image = control
        tokens: dict[str, str | None] = {"image": None, "mask": None}
        for name, picture in (("image", image), ("mask", fields.get("mask"))):
            if not isinstance(picture, Image.Image):
                continue
            if picture.width * picture.height > max_pixels:
                raise FieldError(f"{ARGS}.{i}.{name}", f"larger than {max_pixels} pixels")
            tokens[name] = f"ui-{name}-{i}"
            images[f"ui-{name}-{i}"] = picture
        args.append({**fields, "enabled": True, **tokens})

    def decode(token: str, field: str) -> Image.Image:
        return images[token]

    found, indices = parse_units(args, ARGS, decode)
    return found, indices, ARGS


def detect(
    fields: Mapping[str, Any], image: Image.Image, size: tuple[int, int], roots: Sequence[Path]
) -> Image.Image:
    """The detected map of ``image`` for a unit's ``fields`` (errors name the unit field; an inpaint
    preprocessor's map shows its ``mask`` half clear); ``roots``: where annotator files are."""
    mask = fields.get("mask")
    try:
        request = ControlNetUnitRequest.model_validate(
            {**fields, "enabled": True, "image": None, "mask": None}
        )
    except ValidationError as e:
        error = e.errors()[0]
        raise FieldError(".".join(str(p) for p in error["loc"]) or "unit", error["msg"]) from None
    unit = request.to_unit("unit", _no_images)  # no model needed: the preprocessor checks its sliders
    if preprocessors.find(unit.module).accepts_mask:
        masked = hint.array(mask) if isinstance(mask, Image.Image) else None
        try:
            picture = with_mask(hint.array(image), masked)
        except ValueError as e:
            raise FieldError("mask", str(e)) from None
    else:
        picture = hint.input_image(hint.array(image), None)
    detected = hint.detect_map(unit, picture, unit.resize_mode, size, roots=roots)
    return Image.fromarray(preprocessors.display(unit.module, detected))


def _no_images(data: str, field: str) -> Image.Image:
    raise FieldError(field, "the preview takes its image apart")


def pasted_units(text: str, library: ControlLibrary) -> dict[int, dict[str, Any]]:
    """The ``ControlNet N`` entries of an infotext (N < :data:`MAX_UNITS`) as unit fields by ``N``, the
    model named by its listed title where one matches; an entry that is not the extension's format is
    skipped, as the extension's paste skips it. As there, only the infotext's fields are restored (not
    ``enabled``: the control image is not in the infotext)."""
    out: dict[int, dict[str, Any]] = {}
    for key, value in infotext.parse(text).items():
        match = _ENTRY.fullmatch(key)
        if match is None or int(match.group(1)) >= MAX_UNITS or not isinstance(value, str):
            continue
        try:
            fields: dict[str, Any] = dict(parse_infotext(value))
        except ValueError:
            continue
        model = str(fields.get("model", "None"))
        if model != "None":
            with contextlib.suppress(ControlModelNotFoundError):  # else as written: the dropdown refuses it
                fields["model"] = library.find(model).title
        out[int(match.group(1))] = fields
    return out


__all__ = ["ARGS", "control_models", "control_modules", "detect", "pasted_units", "units"]
