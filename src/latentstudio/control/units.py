"""One ControlNet unit of a generation request, as sd-webui-controlnet's ``ControlNetUnit`` holds it
(``internal_controlnet/args.py``), and its infotext entry.

Field names, enum values and defaults are the extension's. Differences, deliberate: a value out of its
range is refused with a :class:`FieldError` naming ``control.<i>.<field>`` (the extension silently puts the
slider's default in its place); a unit names its model by any form the extension resolves (``"name
[hash]"``, the file stem, a unique part of it), checked by the door that builds the request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image

from latentstudio.control import preprocessors
from latentstudio.core import FieldError

MAX_UNITS = 3  # the extension's control_net_unit_count default (/controlnet/settings)


class ControlMode(StrEnum):
    """How the control signal and the prompt share the picture (the extension's ``ControlMode``)."""

    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"  # soft injection: deeper layers weaker
    CONTROL = "ControlNet is more important"  # soft injection, and the negative prompt's pass uncontrolled


class ControlResize(StrEnum):
    """How the control image is fitted to the picture (the extension's ``ResizeMode``)."""

    JUST_RESIZE = "Just Resize"
    CROP_AND_RESIZE = "Crop and Resize"  # "Inner Fit": scale to cover, crop the centre
    RESIZE_AND_FILL = "Resize and Fill"  # "Outer Fit": scale to fit, pad with the border's median colour


RESIZE_ALIASES = {  # what the extension's validator also accepts, and A1111's img2img resize_mode numbers
    "Inner Fit (Scale to Fit)": ControlResize.CROP_AND_RESIZE,
    "Outer Fit (Shrink to Fit)": ControlResize.RESIZE_AND_FILL,
    "Scale to Fit (Inner Fit)": ControlResize.CROP_AND_RESIZE,
    "Envelope (Outer Fit)": ControlResize.RESIZE_AND_FILL,
    0: ControlResize.JUST_RESIZE,
    1: ControlResize.CROP_AND_RESIZE,
    2: ControlResize.RESIZE_AND_FILL,
}


class HiresOption(StrEnum):
    """Which passes of a hires-fix job a unit guides (the extension's ``HiResFixOption``)."""

    BOTH = "Both"
    LOW_RES_ONLY = "Low res only"
    HIGH_RES_ONLY = "High res only"


@dataclass(frozen=True)
class ControlUnit:
    """One enabled unit. ``image`` None: the img2img init image (A1111's), fitted by the job's img2img
    resize mode as in the extension; ``mask`` (with ``image``): where it is neither all clear nor all
    opaque, the extension's "canvas scribble" input — the mask itself becomes the control image.
    ``processor_res``/``threshold_a``/``threshold_b`` -1: the module's defaults. ``guidance_start``/``_end``:
    the fraction of each pass's sampling steps the unit acts in. ``advanced_weighting``: one weight per
    control output (13 for an SD ControlNet, 4 for an adapter), replacing ``weight`` and the mode's scales.
    ``save_detected_map``: the job also returns the unit's detected map, fitted to each pass's size (the
    extension appends them to the response's images). ``inpaint_crop_input_image``: with "only masked"
    inpainting, the control image is cropped to the inpainted region as the job's picture is."""

    module: str = "none"
    model: str = "None"
    image: Image.Image | None = None
    mask: Image.Image | None = None
    weight: float = 1.0
    resize_mode: ControlResize = ControlResize.CROP_AND_RESIZE
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: ControlMode = ControlMode.BALANCED
    hr_option: HiresOption = HiresOption.BOTH
    low_vram: bool = False
    advanced_weighting: tuple[float, ...] | None = None
    save_detected_map: bool = True
    inpaint_crop_input_image: bool = True

    def validate(self, index: int) -> None:
        """Raise :class:`FieldError` naming ``control.<index>.<field>`` for the first invalid field."""
        name = f"control.{index}."
        try:
            preprocessors.find(self.module).settings(self.processor_res, self.threshold_a, self.threshold_b)
        except FieldError as e:
            raise FieldError(name + e.field, e.message) from None
        if self.model in ("", "None"):
            raise FieldError(name + "model", "You have not selected any ControlNet Model.")
        for field, value in (("weight", self.weight), ("guidance_start", self.guidance_start),
                             ("guidance_end", self.guidance_end)):  # fmt: skip
            high = 2.0 if field == "weight" else 1.0
            if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= high):
                raise FieldError(name + field, f"must be in [0, {high}], got {value!r}")
        if self.guidance_start > self.guidance_end:
            raise FieldError(
                name + "guidance_start",
                f"guidance_start({self.guidance_start}) > guidance_end({self.guidance_end})",
            )
        weights = self.advanced_weighting
        if weights is not None and not (
            0 < len(weights) <= 13 and all(math.isfinite(w) and abs(w) <= 10.0 for w in weights)
        ):
            raise FieldError(name + "advanced_weighting", "1 to 13 finite weights in [-10, 10]")

    def infotext(self) -> str:
        """The extension's ``ControlNetUnit.serialize``: ``"Module: canny, Model: …, Weight: 1.0, …"``,
        the parameters as the unit holds them once its module's defaults are filled in; "" where a value
        would contain ``,`` or ``:`` (the extension writes nothing then)."""
        res, a, b = unit_sliders(self)
        values = {
            "Module": self.module, "Model": self.model, "Weight": float(self.weight),
            "Resize Mode": self.resize_mode.value, "Processor Res": res, "Threshold A": a,
            "Threshold B": b, "Guidance Start": float(self.guidance_start),
            "Guidance End": float(self.guidance_end), "Pixel Perfect": self.pixel_perfect,
            "Control Mode": self.control_mode.value,
        }  # fmt: skip
        texts = {key: str(value) for key, value in values.items()}
        if any("," in text or ":" in text for text in texts.values()):
            return ""
        return ", ".join(f"{key}: {text}" for key, text in texts.items())


def unit_sliders(unit: ControlUnit) -> tuple[int | float, float, float]:
    """``(processor_res, threshold_a, threshold_b)`` as the extension's unit holds them after its bound
    check: a visible slider's value or default; for a hidden one (``PreprocessorParameter(visible=False)``:
    range [0, 1], value 0.5 — 512 for shuffle's resolution) the value if in [0, 1], else that default."""
    p = preprocessors.find(unit.module)

    def hidden(value: float, default: float) -> float:
        return value if 0.0 <= value <= 1.0 else default

    if p.resolution is not None:
        res: int | float = int(p.resolution.value("processor_res", unit.processor_res))
    else:
        res = hidden(unit.processor_res, 512.0 if p.name == "shuffle" else 0.5)
        res = int(res) if res == 512.0 else res
    a = (
        p.threshold_a.value("threshold_a", unit.threshold_a)
        if p.threshold_a
        else hidden(unit.threshold_a, 0.5)
    )
    b = (
        p.threshold_b.value("threshold_b", unit.threshold_b)
        if p.threshold_b
        else hidden(unit.threshold_b, 0.5)
    )
    return res, float(a), float(b)


def parse_infotext(text: str) -> dict[str, str | float | int | bool]:
    """One ``ControlNet N`` infotext value → unit fields (the extension's ``ControlNetUnit.parse``:
    ``"Resize Mode: Just Resize"`` → ``resize_mode="Just Resize"``; ``True``/``False``, ints and floats
    typed). Raises ValueError for text that is not ``key: value`` pairs."""
    fields: dict[str, str | float | int | bool] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition(": ")
        if not sep:
            raise ValueError(f"not a ControlNet unit entry: {item.strip()!r}")
        fields["_".join(word.lower() for word in key.split(" "))] = _typed(value)
    return fields


def _typed(value: str) -> str | float | int | bool:
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value
