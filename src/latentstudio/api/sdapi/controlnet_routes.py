"""The sd-webui-controlnet extension's own routes, ``/controlnet/...``, as its API clients (Krita, Photoshop
and Blender bridges, scripts) call them: ``version``, ``module_list`` (with ``module_detail``), ``settings``,
``detect`` with the preprocessors that need no weights or whose annotator files are installed
(:mod:`latentstudio.control.preprocessors`) and
``model_list`` (the files found, named as the extension names them).

``detect`` takes the extension's body fields; -1 (its default) means a slider's default, and an out-of-range
value is a 422 naming the field where the extension would silently use the default. The units of
``alwayson_scripts.controlnet`` are read by :mod:`latentstudio.api.control_units`; ``control_types`` covers
the preprocessors that need no weights.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query
from PIL import Image
from pydantic import Field

from latentstudio.api.common import Base64Image, Finite, StrictModel
from latentstudio.api.imageio import decode_image, encode_png_base64
from latentstudio.api.state import ServicesDep
from latentstudio.config import MAX_IMAGES
from latentstudio.control import preprocessors
from latentstudio.control.units import MAX_UNITS
from latentstudio.core import FieldError

API_VERSION = 3  # the extension's external_code.get_api_version()

router = APIRouter(prefix="/controlnet", tags=["ControlNet extension compatible"])


class DetectRequest(StrictModel):
    """The body of the extension's ``POST /controlnet/detect``."""

    controlnet_module: str = Field(default="none", max_length=200)
    controlnet_input_images: list[Base64Image] = Field(default_factory=list, max_length=MAX_IMAGES)
    controlnet_processor_res: int = Field(default=-1, description="-1: the module's default")
    controlnet_threshold_a: Finite = Field(default=-1, description="-1: the module's default")
    controlnet_threshold_b: Finite = Field(default=-1, description="-1: the module's default")
    controlnet_masks: list[Base64Image] = Field(
        default_factory=list,
        max_length=MAX_IMAGES,
        description="One per input image for the inpaint modules (white: to be drawn); ignored by others.",
    )
    low_vram: bool = False


class DetectResponse(StrictModel):
    """``{images, info}``: one base64 PNG per input image; ``poses``: for an openpose module, the pose found
    in each image as the extension's JSON (absent for other modules, as there)."""

    images: list[str]
    info: str = "Success"
    poses: list[dict[str, Any]] | None = None


@router.get("/version", summary="The extension API's version")
def version() -> dict[str, int]:
    return {"version": API_VERSION}


@router.get("/settings", summary="How many ControlNet units a request may carry")
def settings() -> dict[str, int]:
    return {"control_net_unit_count": MAX_UNITS}


@router.get("/model_list", summary="ControlNet and T2I-Adapter files: 'name [hash]'")
def model_list(
    svc: ServicesDep,
    update: Annotated[bool, Query(description="Accepted; the folders are always read anew.")] = True,
) -> dict[str, list[str]]:
    """The files in ``models/ControlNet`` (and the extension's own models folder) as the extension lists
    them: the file's stem and A1111's legacy 8-hex hash, by file name."""
    return {"model_list": [file.title for file in svc.jobs.worker.controls.files()]}


@router.get("/module_list", summary="Preprocessors (modules) and their sliders")
def module_list(
    svc: ServicesDep,
    alias_names: Annotated[bool, Query(description="Display labels instead of module names.")] = False,
) -> dict[str, Any]:
    """``{module_list, module_detail}`` in the extension's order: the preprocessors that need no weights and
    those whose annotator files are installed; and ``unavailable``: the extension's other weight-needing
    ones, with the annotator files each would load."""
    roots = svc.jobs.worker.controls.annotator_roots
    return {
        "module_list": preprocessors.module_list(alias_names, roots),
        "module_detail": preprocessors.module_detail(alias_names, roots),
        "unavailable": preprocessors.unavailable(roots),
    }


@router.get("/control_types", summary="Control types: their preprocessors, models and defaults")
def control_types(svc: ServicesDep) -> dict[str, dict[str, dict[str, object]]]:
    """The extension's ``{control_types: {tag: {module_list, model_list, default_option, default_model}}}``
    over the preprocessors that need no weights and the listed model files."""
    controls = svc.jobs.worker.controls
    titles = [file.title for file in controls.files()]
    return {"control_types": preprocessors.control_types(titles, controls.annotator_roots)}


@router.post(
    "/detect",
    response_model=DetectResponse,
    response_model_exclude_none=True,
    summary="Run a preprocessor on images",
)
def detect(req: DetectRequest, svc: ServicesDep) -> DetectResponse:
    """Each input image through ``controlnet_module`` (its name or display label), as base64 PNGs."""
    try:
        module = preprocessors.find(req.controlnet_module)
    except FieldError as e:
        raise FieldError("controlnet_module", e.message) from None
    if not req.controlnet_input_images:
        raise FieldError("controlnet_input_images", "No image selected")
    if module.accepts_mask and len(req.controlnet_masks) != len(req.controlnet_input_images):
        message = f"Preprocessor {req.controlnet_module} requires `controlnet_masks` param."
        raise FieldError("controlnet_masks", f"{message} (one per input image)")
    images, poses = [], []
    for i, data in enumerate(req.controlnet_input_images):
        field = f"controlnet_input_images.{i}"
        pixels = svc.settings.max_image_pixels
        array = _decoded(data, field, pixels)
        mask = (
            _decoded(req.controlnet_masks[i], f"controlnet_masks.{i}", pixels)
            if module.accepts_mask
            else None
        )
        try:
            out, pose = preprocessors.detect_with_pose(
                req.controlnet_module, array, req.controlnet_processor_res, req.controlnet_threshold_a,
                req.controlnet_threshold_b, roots=svc.jobs.worker.controls.annotator_roots, mask=mask,
            )  # fmt: skip
        except FieldError as e:
            name = f"controlnet_masks.{i}" if e.field == "mask" else _FIELDS.get(e.field, field)
            raise FieldError(name, e.message) from None
        images.append(encode_png_base64(Image.fromarray(preprocessors.display(module.name, out)), None))
        poses += [pose] if pose is not None else []
    return DetectResponse(images=images, poses=poses or None)


def _decoded(data: str, field: str, max_pixels: int) -> np.ndarray:
    return np.asarray(decode_image(data, field, max_pixels=max_pixels), dtype=np.uint8)


_FIELDS = {
    "module": "controlnet_module",  # an annotator file missing or unusable
    "processor_res": "controlnet_processor_res",
    "threshold_a": "controlnet_threshold_a",
    "threshold_b": "controlnet_threshold_b",
}
