"""A ControlNet unit over HTTP, as sd-webui-controlnet's API takes it (``internal_controlnet/args.py``
``ControlNetUnit``: field names, defaults, enum labels and the legacy aliases ``guidance``, ``lowvram``,
``input_image`` and Forge's ``mask_image``), shared by both doors: the A1111 door's
``alwayson_scripts.controlnet.args`` items and the native ``/api/v1/jobs`` ``control`` list.

Differences, deliberate: an unknown field is refused (the extension ignores it); a field whose feature is
not here (batch/merge input, IP-Adapter input, effective region masks, union control types, AnimateDiff
batches) is refused unless it has its default; an image is base64 only (the extension also opens a file
path the client names — never here); out-of-range values are refused instead of silently replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import Field, ValidationError, model_validator

from latentstudio.api.common import Base64Image, Finite, Name, StrictModel
from latentstudio.control.units import RESIZE_ALIASES, ControlMode, ControlResize, ControlUnit, HiresOption
from latentstudio.core import FieldError

Decode = Callable[[str, str], Image.Image]  # (base64, field name) → image, FieldError naming the field
_ALIASES = {"guidance": "guidance_end", "lowvram": "low_vram", "input_image": "image", "mask_image": "mask"}
_UNSUPPORTED_DEFAULTS: dict[str, object] = {  # features not here: accepted at their defaults only
    "input_mode": "simple", "batch_images": None, "batch_mask_dir": None, "effective_region_mask": None,
    "ipadapter_input": None, "union_control_type": "Unknown", "animatediff_batch": False,
    "batch_modifiers": [], "batch_image_files": [], "batch_keyframe_idx": None, "loopback": False,
}  # fmt: skip


class ControlNetUnitRequest(StrictModel):
    """One unit, the extension's fields and defaults (``enabled`` False: a unit must enable itself)."""

    enabled: bool = False
    module: Name = "none"
    model: Name = "None"
    weight: Finite = Field(default=1.0, ge=0.0, le=2.0)
    image: Base64Image | dict[str, Base64Image | None] | list[Base64Image | None] | None = None
    mask: Base64Image | None = None
    resize_mode: ControlResize | Literal[0, 1, 2] | str = ControlResize.CROP_AND_RESIZE
    low_vram: bool = False
    processor_res: int = Field(default=-1, ge=-1, le=16384)
    threshold_a: Finite = -1
    threshold_b: Finite = -1
    guidance_start: Finite = Field(default=0.0, ge=0.0, le=1.0)
    guidance_end: Finite = Field(default=1.0, ge=0.0, le=1.0)
    pixel_perfect: bool = False
    control_mode: ControlMode | Literal[0, 1, 2] = ControlMode.BALANCED
    hr_option: HiresOption = HiresOption.BOTH
    save_detected_map: bool = True
    advanced_weighting: Annotated[list[Finite], Field(max_length=13)] | None = None
    inpaint_crop_input_image: bool = True
    pulid_mode: Name = "Fidelity"
    is_ui: bool = False
    output_dir: Name = ""
    # refused unless at their defaults (_UNSUPPORTED_DEFAULTS)
    input_mode: Name = "simple"
    batch_images: Any = None
    batch_mask_dir: Name | None = None
    effective_region_mask: Any = None
    ipadapter_input: Any = None
    union_control_type: Name = "Unknown"
    animatediff_batch: bool = False
    batch_modifiers: list[Any] = Field(default_factory=list, max_length=0)
    batch_image_files: list[Any] = Field(default_factory=list, max_length=0)
    batch_keyframe_idx: Any = None
    loopback: bool = False

    @model_validator(mode="before")
    @classmethod
    def _legacy_aliases(cls, data: Any) -> Any:
        """The extension's ``legacy_field_alias`` and ``mask_alias``: both spellings at once is an error."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for alias, name in _ALIASES.items():
            if alias in out:
                if name in out and out[name] is not None:
                    raise ValueError(f"Conflict of field '{alias}' and '{name}'")
                out[name] = out.pop(alias)
        return out

    def to_unit(self, field: str, decode: Decode) -> ControlUnit:
        """The unit, images decoded; ``field`` is how the door names this unit (for errors)."""
        for name, default in _UNSUPPORTED_DEFAULTS.items():
            if getattr(self, name) != default:
                raise FieldError(f"{field}.{name}", f"not supported here (only {default!r})")
        image, mask = self._images(field, decode)
        resize = self.resize_mode
        if not isinstance(resize, ControlResize):
            resize = RESIZE_ALIASES.get(resize) or _enum(ControlResize, resize, f"{field}.resize_mode")
        mode = self.control_mode
        if not isinstance(mode, ControlMode):
            mode = list(ControlMode)[mode]
        weights = tuple(self.advanced_weighting) if self.advanced_weighting is not None else None
        return ControlUnit(
            module=self.module, model=self.model, image=image, mask=mask, weight=self.weight,
            resize_mode=resize, processor_res=self.processor_res, threshold_a=self.threshold_a,
            threshold_b=self.threshold_b, guidance_start=self.guidance_start, guidance_end=self.guidance_end,
            pixel_perfect=self.pixel_perfect, control_mode=mode, hr_option=self.hr_option,
            low_vram=self.low_vram, advanced_weighting=weights, save_detected_map=self.save_detected_map,
            inpaint_crop_input_image=self.inpaint_crop_input_image,
        )  # fmt: skip

    def _images(self, field: str, decode: Decode) -> tuple[Image.Image | None, Image.Image | None]:
        """``image`` as a string, ``{"image", "mask"}`` or ``[image, mask]``, and ``mask``."""
        image: str | None
        mask = self.mask
        if isinstance(self.image, dict):
            unknown = sorted(set(self.image) - {"image", "mask"})
            if unknown:
                raise FieldError(f"{field}.image", f"unknown keys {unknown}; expected image and mask")
            image, inner = self.image.get("image"), self.image.get("mask")
        elif isinstance(self.image, list):
            if not 1 <= len(self.image) <= 2:
                raise FieldError(f"{field}.image", "one image, or [image, mask]")
            image, inner = self.image[0], self.image[1] if len(self.image) == 2 else None
        else:
            image, inner = self.image, None
        if inner is not None and mask is not None:
            raise FieldError(f"{field}.mask", "Cannot specify both 'mask' and 'mask_image'!")
        mask = mask if mask is not None else inner
        if image is None:
            if mask is not None:
                raise FieldError(f"{field}.mask", "a mask needs the unit's image")
            return None, None
        picture = decode(image, f"{field}.image")
        return picture, decode(mask, f"{field}.mask") if mask is not None else None


def _enum(kind: type[ControlResize], value: object, field: str) -> ControlResize:
    try:
        return kind(str(value))
    except ValueError:
        allowed = ", ".join(repr(v.value) for v in kind)
        raise FieldError(field, f"unknown {value!r}; allowed: {allowed} (or 0, 1, 2)") from None


class NativeControlUnit(ControlNetUnitRequest):
    """A unit of the native ``/api/v1/jobs`` ``control`` list: the same fields, enabled unless it says not."""

    enabled: bool = True


def parse_units(
    args: Sequence[object], field: str, decode: Decode
) -> tuple[tuple[ControlUnit, ...], tuple[int, ...]]:
    """The enabled units of a list of unit objects (``None`` items are skipped, as the extension does),
    and the index in ``args`` of each; errors name ``<field>.<index>.<unit field>``."""
    requests: list[ControlNetUnitRequest | None] = []
    for i, raw in enumerate(args):
        if raw is not None and not isinstance(raw, Mapping):
            raise FieldError(f"{field}.{i}", "a ControlNet unit is an object of the extension's unit fields")
        try:
            requests.append(None if raw is None else ControlNetUnitRequest.model_validate(raw))
        except ValidationError as e:
            error = e.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise FieldError(f"{field}.{i}" + (f".{where}" if where else ""), error["msg"]) from None
    return enabled_units(requests, field, decode)


def enabled_units(
    requests: Sequence[ControlNetUnitRequest | None], field: str, decode: Decode
) -> tuple[tuple[ControlUnit, ...], tuple[int, ...]]:
    """The enabled units, images decoded, and each one's index in ``requests``."""
    units, indices = [], []
    for i, request in enumerate(requests):
        if request is not None and request.enabled:
            units.append(request.to_unit(f"{field}.{i}", decode))
            indices.append(i)
    return tuple(units), tuple(indices)
