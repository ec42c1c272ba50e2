"""GenerationParams from A1111's flat field names, for tests that read best in A1111's vocabulary:
``enable_hr`` with ``hr_*`` becomes ``hires``, ``mask`` with the mask fields becomes ``inpaint``."""

from __future__ import annotations

import dataclasses
from typing import Any

from latentstudio.pipeline.params import GenerationParams, Hires, Inpaint, ResolvedParams

HIRES_KEYS = {
    "hr_scale": "scale", "hr_resize_x": "resize_x", "hr_resize_y": "resize_y", "hr_upscaler": "upscaler",
    "hr_second_pass_steps": "steps", "hr_sampler": "sampler", "hr_scheduler": "scheduler",
    "hr_prompt": "prompt", "hr_negative_prompt": "negative_prompt", "hr_checkpoint": "checkpoint",
    "hr_denoising_strength": "denoising_strength",  # not A1111's: its hires pass has no strength of its own
}  # fmt: skip
INPAINT_KEYS = {
    "mask": "mask", "mask_blur": "blur", "inpainting_fill": "fill", "inpaint_full_res": "only_masked",
    "inpaint_full_res_padding": "padding", "inpainting_mask_invert": "invert", "mask_blur_y": "blur_y",
    "mask_round": "round_mask", "latent_mask": "latent_mask",
}  # fmt: skip


def flat_params(**kw: Any) -> GenerationParams:
    """A job from A1111's flat names; as in A1111, the hires pass runs at ``denoising_strength`` (0.75)
    unless ``hr_denoising_strength`` says otherwise."""
    hires = {HIRES_KEYS[k]: kw.pop(k) for k in list(kw) if k in HIRES_KEYS}
    inpaint = {INPAINT_KEYS[k]: kw.pop(k) for k in list(kw) if k in INPAINT_KEYS}
    if kw.pop("enable_hr", False):
        hires.setdefault("denoising_strength", kw.get("denoising_strength", 0.75))
        kw["hires"] = Hires(**hires)
    if inpaint.get("mask") is not None:
        kw["inpaint"] = Inpaint(**inpaint)
    return GenerationParams(**kw)


def flat_replace(params: GenerationParams, **changes: Any) -> ResolvedParams:
    """``params`` with A1111-named ``changes``, resolved again."""
    flat = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    hires, inpaint = flat.pop("hires"), flat.pop("inpaint")
    if hires is not None:
        flat["enable_hr"] = True
        flat.update({old: getattr(hires, new) for old, new in HIRES_KEYS.items()})
    if inpaint is not None:
        flat.update({old: getattr(inpaint, new) for old, new in INPAINT_KEYS.items()})
    return flat_params(**{**flat, **changes}).resolved()
