"""Sampling: schedules, model wrappers, guidance, noise (seeds, RNG sources) and the sampler registry.

Samplers are pure functions in k-diffusion's convention (see :mod:`latentstudio.samplers.base`), registered
by A1111 display name in :data:`SAMPLERS` / :data:`SAMPLER_INFO`; schedules by A1111 label in
:data:`SCHEDULERS`; :func:`sigmas_for` picks the sigmas A1111 would use for a sampler, scheduler and steps.
"""

from latentstudio.samplers.base import Callback, Denoiser, NoiseSampler, StepInfo
from latentstudio.samplers.registry import (
    SAMPLER_INFO,
    SAMPLERS,
    SCHEDULER_INFO,
    SCHEDULERS,
    Sampler,
    SamplerInfo,
    ScheduledSigmas,
    SchedulerInfo,
    automatic_scheduler,
    resolve_sampler,
    resolve_scheduler,
    sampler_and_scheduler,
    sigmas_for,
)
from latentstudio.samplers.schedules import (
    model_sigmas_from_alphas,
    scaled_linear_alphas_cumprod,
    sigma_to_t,
    t_to_sigma,
)

__all__ = [
    "SAMPLERS",
    "SAMPLER_INFO",
    "SCHEDULERS",
    "SCHEDULER_INFO",
    "Callback",
    "Denoiser",
    "NoiseSampler",
    "Sampler",
    "SamplerInfo",
    "ScheduledSigmas",
    "SchedulerInfo",
    "StepInfo",
    "automatic_scheduler",
    "model_sigmas_from_alphas",
    "resolve_sampler",
    "resolve_scheduler",
    "sampler_and_scheduler",
    "scaled_linear_alphas_cumprod",
    "sigma_to_t",
    "sigmas_for",
    "t_to_sigma",
]
