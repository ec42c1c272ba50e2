"""The ``infotext`` request field (A1111 §1.6 step 2): fill the fields the request did not set from a pasted
infotext, and turn its setting keys into ``override_settings`` where they differ from the current options.

As A1111: ``Model hash`` never switches the model (``disable_weights_auto_swap`` is on by default), and
``Seed resize from`` pastes width into ``seed_resize_from_h`` and height into ``seed_resize_from_w`` (A1111's
paste fields are swapped; reproduced so the same request gives the same picture). Hires keys turn on
``enable_hr`` and fill the ``hr_*`` fields of a txt2img request; a ``Hires prompt`` or ``Hires negative
prompt`` equal to the main one reads as "" (A1111's parse, unless ``infotext_styles`` is "Ignore"). Styles
are not extracted from the prompts (no style store is passed), so a pasted prompt keeps its styles' text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from latentstudio import infotext
from latentstudio.api.sdapi import options as opts
from latentstudio.api.sdapi.models import GenerationRequest, Txt2ImgRequest
from latentstudio.core import FieldError

R = TypeVar("R", bound=GenerationRequest)
Cast = Callable[[object], object]


def _float(value: object) -> float:
    """A finite number (``inf``, ``nan`` and ``1e999`` are ValueErrors, as every unusable value)."""
    number = float(str(value))
    if not math.isfinite(number):
        raise ValueError(f"{str(value)[:40]!r} is not a finite number")
    return number


def _int(value: object) -> int:
    return int(_float(value))


def _bool(value: object) -> bool:
    return value is True or str(value).strip().lower() == "true"


def _str(value: object) -> str:
    return str(value)


FIELDS: dict[str, tuple[str, Cast]] = {
    "Prompt": ("prompt", _str),
    "Negative prompt": ("negative_prompt", _str),
    "Steps": ("steps", _int),
    "Sampler": ("sampler_name", _str),
    "Schedule type": ("scheduler", _str),
    "CFG scale": ("cfg_scale", _float),
    "Seed": ("seed", _int),
    "Size-1": ("width", _int),
    "Size-2": ("height", _int),
    "Variation seed": ("subseed", _int),
    "Variation seed strength": ("subseed_strength", _float),
    "Seed resize from-1": ("seed_resize_from_h", _int),  # sic: A1111's swapped paste fields
    "Seed resize from-2": ("seed_resize_from_w", _int),
    "Denoising strength": ("denoising_strength", _float),
    "Face restoration": ("restore_faces", lambda v: True),
    "Hires upscale": ("hr_scale", _float),
    "Hires upscaler": ("hr_upscaler", _str),
    "Hires steps": ("hr_second_pass_steps", _int),
    "Hires resize-1": ("hr_resize_x", _int),
    "Hires resize-2": ("hr_resize_y", _int),
    "Hires checkpoint": ("hr_checkpoint_name", _str),
    "Hires sampler": ("hr_sampler_name", _str),
    "Hires schedule type": ("hr_scheduler", _str),
    "Hires prompt": ("hr_prompt", _str),
    "Hires negative prompt": ("hr_negative_prompt", _str),
}
"""Infotext key → request field (only for fields the request did not set)."""

SETTINGS: dict[str, str] = {
    "Clip skip": "CLIP_stop_at_last_layers",
    "RNG": "randn_source",
    "ENSD": "eta_noise_seed_delta",
    "Emphasis": "emphasis",
    "Eta": "eta_ancestral",
    "Eta DDIM": "eta_ddim",
    "Sigma noise": "s_noise",
    "Sigma churn": "s_churn",
    "Sigma tmin": "s_tmin",
    "Sigma tmax": "s_tmax",
    "NGMS": "s_min_uncond",
    "NGMS all steps": "s_min_uncond_all",
    "Pad conds": "pad_cond_uncond",
    "Pad conds v0": "pad_cond_uncond_v0",
    "Old prompt editing timelines": "use_old_scheduling",
    "VAE": "sd_vae",
    "Tiling": "tiling",
    "Tiling axes": "tiling_axes",  # ours
    "Noise multiplier": "initial_noise_multiplier",
    "Extra noise": "img2img_extra_noise",
    "Token merging ratio": "token_merging_ratio",
    "Schedule min sigma": "sigma_min",
    "Schedule max sigma": "sigma_max",
    "Schedule rho": "rho",
    "Discard penultimate sigma": "always_discard_next_to_last_sigma",
    "SGM noise multiplier": "sgm_noise_multiplier",
    "Skip Early CFG": "skip_early_cond",
    "Conditional mask weight": "inpainting_mask_weight",
    "VAE Encoder": "sd_vae_encode_method",
    "VAE Decoder": "sd_vae_decode_method",
    "Downcast alphas_cumprod": "use_downcasted_alpha_bar",
}
"""Infotext key → A1111 option (``OptionInfo(infotext=…)``)."""

_HIRES_KEYS = ("Hires upscale", "Hires upscaler", "Hires resize-1")


def _cast_option(key: str, value: object) -> object:
    default = opts.CATALOG[key].default
    if isinstance(default, bool):
        return _bool(value)
    if isinstance(default, int):
        return _int(value)
    if isinstance(default, float):
        return _float(value)
    return _str(value)


def _fields(parsed: Mapping[str, object], req: GenerationRequest) -> dict[str, Any]:
    updates: dict[str, Any] = {}
    for key, (name, cast) in FIELDS.items():
        if key in parsed and name in type(req).model_fields and name not in req.model_fields_set:
            updates[name] = cast(parsed[key])
    hires = "Denoising strength" in parsed and any(k in parsed for k in _HIRES_KEYS)
    if isinstance(req, Txt2ImgRequest) and hires and "enable_hr" not in req.model_fields_set:
        updates["enable_hr"] = True
    return updates


def _settings(parsed: Mapping[str, object], current: Mapping[str, opts.Value]) -> dict[str, object]:
    overrides: dict[str, object] = {}
    for key, option in SETTINGS.items():
        if key in parsed:
            value = _cast_option(option, parsed[key])
            if value != current.get(option):
                overrides[option] = value
    if "Tiling" in parsed and "Tiling axes" not in parsed and current.get("tiling_axes") != "both":
        overrides["tiling_axes"] = "both"  # A1111's tiling wraps both axes (tiling_axes is ours)
    return overrides


def apply_infotext(req: R, current: Mapping[str, opts.Value]) -> R:
    """``req`` with its ``infotext`` pasted (unchanged when there is none); ``current``: the stored options.

    Raises :class:`FieldError` (field ``infotext``) when a value cannot be converted or breaks a limit.
    """
    if not req.infotext:
        return req
    parsed = infotext.parse(req.infotext, style_mode=str(current.get("infotext_styles", "Apply if any")))
    try:
        updates = _fields(parsed, req)
        pasted = _settings(parsed, current)
    except ValueError as e:
        raise FieldError("infotext", f"a value cannot be used: {e}") from None
    overrides = {**pasted, **(req.override_settings or {})}
    data = {**req.model_dump(), **updates, "override_settings": overrides or req.override_settings}
    try:
        return type(req).model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise FieldError("infotext", f"pasted {where}: {first.get('msg', 'invalid')}") from None
