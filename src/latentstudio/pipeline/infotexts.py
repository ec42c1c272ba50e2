"""The A1111 infotext of one generated image (``create_infotext`` semantics, reference §2.1)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from latentstudio import infotext
from latentstudio.pipeline.params import GenerationParams, TilingMode
from latentstudio.samplers import SamplerInfo
from latentstudio.samplers.noise import RngSource
from latentstudio.samplers.registry import schedule_overrides

if TYPE_CHECKING:
    from latentstudio.models.discovery import CheckpointInfo
    from latentstudio.models.loader import Components
    from latentstudio.models.manager import ModelManager


@dataclass(frozen=True)
class ModelIdentity:
    """How the infotext names the model: A1111's ``Model``, ``Model hash``, ``VAE``, ``VAE hash``."""

    name: str
    shorthash: str | None = None
    vae_name: str | None = None
    vae_hash: str | None = None


def model_identity(
    manager: ModelManager, info: CheckpointInfo, components: Components | None = None
) -> ModelIdentity:
    """The identity of a checkpoint as the manager knows it, and of the external VAE ``components`` were
    loaded with (if any): what the server's worker and the CLI both write."""
    vae_path = components.vae_path if components is not None else None
    return ModelIdentity(
        name=info.name_for_extra,
        shorthash=manager.entry(info).shorthash,
        vae_name=vae_path.name if vae_path is not None else None,
        vae_hash=manager.vae_shorthash(components) if components is not None else None,
    )


_NOT_EXTRA = (set(infotext.FIXED_KEYS) | set(infotext.TRAILING_KEYS)) - {"Schedule type"}


def extra_generation_params(parameters: Mapping[str, object]) -> dict[str, object]:
    """A1111's ``extra_generation_params`` of an image's ordered parameters (:func:`parameters`): every key
    but the fixed ones (``Schedule type`` stays: A1111 keeps it among the extra ones), values as they are."""
    return {key: value for key, value in parameters.items() if key not in _NOT_EXTRA}


def parameters(  # noqa: PLR0917 - one image's facts
    params: GenerationParams,
    identity: ModelIdentity,
    seed: int,
    subseed: int,
    schedule_label: str,
    sampler: SamplerInfo,
    extra_params: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The parameter line's keys and values, in A1111's fixed order (None values left out).

    No ``Version`` key: A1111 reads a missing version as "current", while ours would trigger its
    backward-compatibility flags for versions below 1.6.
    """
    variation = params.subseed_strength != 0
    eta = params.eta if params.eta is not None else (0.0 if params.sampler == "DDIM" else 1.0)
    fixed: dict[str, object] = {
        "Steps": params.steps,
        "Sampler": params.sampler,
        "Schedule type": schedule_label,
        "CFG scale": params.cfg_scale,
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        "Model hash": identity.shorthash,
        "Model": identity.name,
        "VAE hash": identity.vae_hash,
        "VAE": identity.vae_name,
        "Variation seed": subseed if variation else None,
        "Variation seed strength": params.subseed_strength if variation else None,
        "Seed resize from": _seed_resize(params),
        "Denoising strength": params.hires.denoising_strength
        if params.hires is not None
        else params.denoising_strength
        if params.is_img2img
        else None,
        "Clip skip": params.clip_skip if params.clip_skip > 1 else None,
        "ENSD": params.eta_noise_seed_delta
        if params.eta_noise_seed_delta and sampler.uses_ensd and eta != 0
        else None,
        "RNG": params.rng.value if params.rng is not RngSource.GPU else None,
        "Tiling": "True" if params.tiling is not TilingMode.NONE else None,
    }
    given = dict(extra_params or {})
    extra = {key: value for key, value in given.items() if key not in _AFTER_SAMPLING}
    extra.update(_start_keys(params))
    if params.sampler == "DDIM" and eta != 0:
        extra["Eta DDIM"] = eta
    elif params.sampler != "DDIM" and eta != 1.0:
        extra["Eta"] = eta
    for key, (name, default) in _CHURN.items():
        if getattr(params, name) != default:
            extra[key] = getattr(params, name)
    if params.tiling in (TilingMode.X, TilingMode.Y):  # ours: the tiling_axes option
        extra["Tiling axes"] = params.tiling.value
    extra.update({key: value for key, value in given.items() if key in _AFTER_SAMPLING})
    return infotext.ordered_params(fixed, extra)


# The sampler's own keys (A1111 Sampler.initialize), written when they differ from the default: A1111 writes
# them only for a value set by the option (it passes a request's value silently); ours for either.
_CHURN = {
    "Sigma churn": ("s_churn", 0.0), "Sigma tmin": ("s_tmin", 0.0), "Sigma tmax": ("s_tmax", 0.0),
    "Sigma noise": ("s_noise", 1.0),
}  # fmt: skip
_AFTER_SAMPLING = ("NGMS", "NGMS all steps", "Pad conds", "Pad conds v0")  # A1111 writes them last


def pass_keys(params: GenerationParams, events: Iterable[str]) -> dict[str, object]:
    """The infotext keys of what happened while sampling (:class:`CFGDenoiser`'s ``padded``): NGMS with its
    σ (and "NGMS all steps" with ``s_min_uncond_all``) when it skipped a pass, the padding flags."""
    happened = set(events)
    keys: dict[str, object] = {}
    if "NGMS" in happened:
        keys["NGMS"] = params.s_min_uncond
        if params.s_min_uncond_all:
            keys["NGMS all steps"] = True
    keys.update(dict.fromkeys(sorted(happened - {"NGMS"}), True))
    return keys


def _start_keys(params: GenerationParams) -> dict[str, object]:
    """A1111's keys for the start noise and the schedule, in its order: "Noise multiplier" (img2img),
    the schedule overrides either pass used, then "SGM noise multiplier" / "Extra noise"."""
    keys: dict[str, object] = {}
    if params.initial_noise_multiplier != 1.0:
        keys["Noise multiplier"] = params.initial_noise_multiplier
    passes = [(params.sampler, params.scheduler)]
    if params.hires is not None:
        passes.append((params.hires.sampler or params.sampler, params.hires.scheduler or params.scheduler))
    values = {"sigma_min": params.sigma_min, "sigma_max": params.sigma_max, "rho": params.rho}
    used: dict[str, float] = {}
    for sampler, scheduler in passes:
        used.update(schedule_overrides(sampler, scheduler, **values))
    names = {"sigma_min": "Schedule min sigma", "sigma_max": "Schedule max sigma", "rho": "Schedule rho"}
    keys.update({key: used[name] for name, key in names.items() if name in used})
    if params.sgm_noise_multiplier:
        keys["SGM noise multiplier"] = True
    if params.extra_noise > 0:
        keys["Extra noise"] = params.extra_noise
    return keys


def _seed_resize(params: GenerationParams) -> str | None:
    if params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0:
        return f"{params.seed_resize_from_w}x{params.seed_resize_from_h}"
    return None
