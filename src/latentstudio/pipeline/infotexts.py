"""The A1111 infotext of one generated image (``create_infotext`` semantics, reference §2.1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from latentstudio import infotext
from latentstudio.pipeline.params import GenerationParams
from latentstudio.samplers import SamplerInfo
from latentstudio.samplers.noise import RngSource


@dataclass(frozen=True)
class ModelIdentity:
    """How the infotext names the model: A1111's ``Model``, ``Model hash``, ``VAE``, ``VAE hash``."""

    name: str
    shorthash: str | None = None
    vae_name: str | None = None
    vae_hash: str | None = None


def create(  # noqa: PLR0917 - one image's facts
    params: GenerationParams,
    identity: ModelIdentity,
    seed: int,
    subseed: int,
    schedule_label: str,
    sampler: SamplerInfo,
    extra_params: Mapping[str, object] | None = None,
) -> str:
    """Prompt, ``Negative prompt: …`` and the parameter line, keys in A1111's fixed order.

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
        "Denoising strength": params.denoising_strength if params.is_img2img or params.enable_hr else None,
        "Clip skip": params.clip_skip if params.clip_skip > 1 else None,
        "ENSD": params.eta_noise_seed_delta
        if params.eta_noise_seed_delta and sampler.uses_ensd and eta != 0
        else None,
        "RNG": params.rng.value if params.rng is not RngSource.GPU else None,
    }
    extra: dict[str, object] = dict(extra_params or {})
    if params.sampler == "DDIM" and eta != 0:
        extra["Eta DDIM"] = eta
    elif params.sampler != "DDIM" and eta != 1.0:
        extra["Eta"] = eta
    if params.s_noise != 1.0:
        extra["Sigma noise"] = params.s_noise
    return infotext.format(params.prompt, params.negative_prompt, infotext.ordered_params(fixed, extra))


def _seed_resize(params: GenerationParams) -> str | None:
    if params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0:
        return f"{params.seed_resize_from_w}x{params.seed_resize_from_h}"
    return None
