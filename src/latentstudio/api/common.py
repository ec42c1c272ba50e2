"""Request pieces both front doors stand on: the A1111 ``/sdapi/v1`` (:mod:`latentstudio.api.sdapi`) and the
native ``/api/v1`` (:mod:`latentstudio.api.native`, :mod:`latentstudio.api.schemas`) import these and never
each other (DESIGN "Imports flow one way"): the base64 image field, the strict request base, A1111's extras
fields and the extras job they make, and A1111's flat names of the inpainting fields both doors take.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated, Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from latentstudio.jobs import ExtrasSpec
from latentstudio.postprocess.extras import ExtrasOptions

MAX_BASE64 = 70_000_000  # characters: the 50 MB body limit is the real bound
INPAINT_FIELDS = {  # a pipeline.params.Inpaint field (as a FieldError names it) → A1111's flat request field
    "inpaint.mask": "mask", "inpaint.blur": "mask_blur", "inpaint.fill": "inpainting_fill",
    "inpaint.only_masked": "inpaint_full_res", "inpaint.padding": "inpaint_full_res_padding",
    "inpaint.invert": "inpainting_mask_invert", "inpaint.blur_y": "mask_blur_y",
    "inpaint.round_mask": "mask_round", "inpaint.latent_mask": "latent_mask",
}  # fmt: skip

Finite = Annotated[float, Field(allow_inf_nan=False)]
Name = Annotated[str, Field(max_length=1000)]
Base64Image = Annotated[
    str, Field(max_length=MAX_BASE64, description="Base64 image, optionally a data: URL.")
]


class StrictModel(BaseModel):
    """Refuse unknown fields (a field we do not know could change the picture); a ``null`` for a field
    with a non-null default means that default (A1111 declares every field Optional; clients send nulls)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {
            k: v
            for k, v in data.items()
            if v is not None or k not in fields or fields[k].is_required() or fields[k].default is None
        }


class ExtrasBase(StrictModel):
    """The upscaling fields of ``extra-single-image`` / ``extra-batch-images``."""

    resize_mode: int = Field(default=0, ge=0, le=1, description="0: scale by, 1: scale to.")
    show_extras_results: bool = True
    gfpgan_visibility: Finite = Field(default=0.0, ge=0.0, le=1.0)
    codeformer_visibility: Finite = Field(default=0.0, ge=0.0, le=1.0)
    codeformer_weight: Finite = Field(default=0.0, ge=0.0, le=1.0)
    upscaling_resize: Finite = Field(default=2.0, gt=0.0, le=8.0)
    upscaling_resize_w: int = Field(default=512, ge=1, le=8192)
    upscaling_resize_h: int = Field(default=512, ge=1, le=8192)
    upscaling_crop: bool = True
    upscaler_1: Name = "None"
    upscaler_2: Name = "None"
    extras_upscaler_2_visibility: Finite = Field(default=0.0, ge=0.0, le=1.0)
    upscale_first: bool = False


_OPTIONS = frozenset(f.name for f in dataclasses.fields(ExtrasOptions))


def extras_spec(req: ExtrasBase, images: Sequence[Image.Image], source: str = "sdapi") -> ExtrasSpec:
    """The extras job for a request's decoded images (``show_extras_results`` has no effect here)."""
    return ExtrasSpec(ExtrasOptions(**req.model_dump(include=set(_OPTIONS))), tuple(images), source=source)
