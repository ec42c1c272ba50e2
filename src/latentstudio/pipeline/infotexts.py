"""The A1111 infotext of one generated image (``create_infotext`` semantics, reference §2.1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from latentstudio import infotext
from latentstudio.pipeline.params import GenerationParams
from latentstudio.samplers import SamplerInfo
from latentstudio.samplers.noise import RngSource

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
    }
    extra: dict[str, object] = dict(extra_params or {})
    if params.sampler == "DDIM" and eta != 0:
        extra["Eta DDIM"] = eta
    elif params.sampler != "DDIM" and eta != 1.0:
        extra["Eta"] = eta
    if params.s_noise != 1.0:
        extra["Sigma noise"] = params.s_noise
    return infotext.ordered_params(fixed, extra)


def _seed_resize(params: GenerationParams) -> str | None:
    if params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0:
        return f"{params.seed_resize_from_w}x{params.seed_resize_from_h}"
    return None
