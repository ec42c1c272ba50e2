"""The sampler registry keyed by A1111 display names (reference/a1111-compat.md §5.1), the scheduler table
keyed by A1111 labels, and sigma selection. Both tables live here because each needs the other ("Automatic"
is the sampler's own schedule; a sampler lists its scheduler's name); :mod:`~latentstudio.samplers.schedules`
holds the schedule functions themselves.

A1111 silently falls back to a default for unknown sampler or scheduler names; here they raise ``ValueError``
listing the valid names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from latentstudio.core import FieldError
from latentstudio.samplers import dpm_solver, dpmpp, euler, heun, lcm, lms, restart, timestep, unipc
from latentstudio.samplers.schedules import (
    Schedule,
    align_your_steps,
    beta,
    ddim,
    exponential,
    karras,
    kl_optimal,
    normal,
    polyexponential,
    sgm_uniform,
    simple,
    uniform,
)


def automatic(
    n: int, sigma_min: float, sigma_max: float, *, model_sigmas: Tensor | None = None, **options: Any
) -> Tensor:
    """A1111's "Automatic" without a sampler: the model's own discrete schedule (Uniform). Per sampler it
    means that sampler's default schedule (DPM++ 2M: Karras, …), which :func:`sigmas_for` resolves first."""
    return uniform(n, sigma_min, sigma_max, model_sigmas=model_sigmas)


@dataclass(frozen=True)
class SchedulerInfo:
    """A1111's scheduler table row (``/sdapi/v1/schedulers``) and our implementation of it."""

    name: str
    label: str
    function: Schedule
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: tuple[str, ...] = ()


SCHEDULER_INFO: dict[str, SchedulerInfo] = {
    info.label: info
    for info in (
        SchedulerInfo("automatic", "Automatic", automatic),
        SchedulerInfo("uniform", "Uniform", uniform, need_inner_model=True),
        SchedulerInfo("karras", "Karras", karras, default_rho=7.0),
        SchedulerInfo("exponential", "Exponential", exponential),
        SchedulerInfo("polyexponential", "Polyexponential", polyexponential, default_rho=1.0),
        SchedulerInfo(
            "sgm_uniform", "SGM Uniform", sgm_uniform, need_inner_model=True, aliases=("SGMUniform",)
        ),
        SchedulerInfo("kl_optimal", "KL Optimal", kl_optimal),
        SchedulerInfo("align_your_steps", "Align Your Steps", align_your_steps),
        SchedulerInfo("simple", "Simple", simple, need_inner_model=True),
        SchedulerInfo("normal", "Normal", normal, need_inner_model=True),
        SchedulerInfo("ddim", "DDIM", ddim, need_inner_model=True),
        SchedulerInfo("beta", "Beta", beta, need_inner_model=True),
    )
}
"""All A1111 schedulers by label, in A1111's order."""

SCHEDULERS: dict[str, Schedule] = {label: info.function for label, info in SCHEDULER_INFO.items()}
"""The schedules by A1111 label. "Automatic" depends on the sampler: :func:`sigmas_for` resolves it; called
here, without a sampler, it is the model's own schedule, Uniform."""


def resolve_scheduler(name: str) -> str:
    """The A1111 label for a scheduler label, name or alias (case-insensitive): "sgm_uniform" → "SGM Uniform".

    Raises ``ValueError`` listing the valid labels for an unknown name.
    """
    wanted = name.strip().lower()
    for info in SCHEDULER_INFO.values():
        if wanted in {info.label.lower(), info.name, *(alias.lower() for alias in info.aliases)}:
            return info.label
    raise ValueError(f"unknown scheduler {name!r}; valid: {', '.join(SCHEDULER_INFO)}")


Sampler = Callable[..., Tensor]
"""``fn(model, x, sigmas, *, noise_sampler=None, callback=None, **options) -> Tensor`` (see samplers.base)."""


@dataclass(frozen=True)
class SamplerInfo:
    """One sampler: A1111's name, aliases and options, and what our implementation needs.

    ``scheduler``: A1111's ``options['scheduler']`` label (what "Automatic" means for it), or None; then
    ``native_schedule`` applies: the model's own discrete schedule (Uniform), or for DDIM and PLMS the
    "DDIM" timesteps that A1111's timestep samplers use.
    ``brownian_noise``: A1111 gives it a Brownian-tree noise sampler. DPM++ SDE needs one to be correct: its
    two draws per step must be increments of one Brownian path (independent draws inflate the noise).
    ``stochastic``: draws noise with its default options, so it needs a ``noise_sampler``.
    ``timestep``: an A1111 timestep sampler (its eta option is ``eta_ddim``, default 0, infotext "Eta DDIM").
    ``extra_params``: the options of A1111's ``sampler_extra_params`` table it passes to this sampler
    (``s_churn``/``s_tmin``/``s_tmax``/``s_noise``); others, though the function may take them, stay default.
    """

    name: str
    function: Sampler
    aliases: tuple[str, ...] = ()
    scheduler: str | None = None
    second_order: bool = False
    discard_next_to_last_sigma: bool = False
    uses_ensd: bool = False
    brownian_noise: bool = False
    stochastic: bool = False
    timestep: bool = False
    native_schedule: str = "Uniform"
    extra_options: tuple[tuple[str, str], ...] = ()
    extra_params: tuple[str, ...] = ()

    @property
    def automatic(self) -> str:
        """The schedule label "Automatic" resolves to for this sampler."""
        return self.native_schedule if self.scheduler is None else self.scheduler

    def takes(self, option: str) -> bool:
        """Whether the sampler function has the keyword ``option`` (``eta``, ``s_noise``, ``s_churn``…)."""
        return option in inspect.signature(self.function).parameters

    @property
    def options(self) -> dict[str, str | bool]:
        """A1111's ``options`` dict of this sampler (as ``/sdapi/v1/samplers`` lists it)."""
        flags = ("second_order", "discard_next_to_last_sigma", "uses_ensd", "brownian_noise")
        out: dict[str, str | bool] = {}
        if self.scheduler is not None:
            out["scheduler"] = resolve_scheduler_name(self.scheduler)
        out.update({flag: True for flag in flags if getattr(self, flag)})
        out.update(dict(self.extra_options))
        return out


def resolve_scheduler_name(label: str) -> str:
    """A1111's internal scheduler name for a label ("Karras" → "karras")."""
    return SCHEDULER_INFO[resolve_scheduler(label)].name


_S = SamplerInfo
_CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")  # A1111 sampler_extra_params: euler, heun, dpm_2
_NOISE = ("s_noise",)  # dpm_fast, dpm_2_ancestral, dpmpp_2s_ancestral, dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde
SAMPLER_INFO: dict[str, SamplerInfo] = {
    info.name: info
    for info in (
        _S("DPM++ 2M", dpmpp.sample_dpmpp_2m, ("k_dpmpp_2m",), "Karras"),
        _S(
            "DPM++ SDE",
            dpmpp.sample_dpmpp_sde,
            ("k_dpmpp_sde",),
            "Karras",
            second_order=True,
            brownian_noise=True,
            stochastic=True,
            extra_params=_NOISE,
        ),
        _S(
            "DPM++ 2M SDE",
            dpmpp.sample_dpmpp_2m_sde,
            ("k_dpmpp_2m_sde",),
            "Exponential",
            brownian_noise=True,
            stochastic=True,
            extra_params=_NOISE,
        ),
        _S(
            "DPM++ 2M SDE Heun",
            dpmpp.sample_dpmpp_2m_sde_heun,
            ("k_dpmpp_2m_sde_heun",),
            "Exponential",
            brownian_noise=True,
            stochastic=True,
            extra_options=(("solver_type", "heun"),),
            extra_params=_NOISE,
        ),
        _S(
            "DPM++ 2S a",
            dpmpp.sample_dpmpp_2s_ancestral,
            ("k_dpmpp_2s_a",),
            "Karras",
            second_order=True,
            uses_ensd=True,
            stochastic=True,
            extra_params=_NOISE,
        ),
        _S(
            "DPM++ 3M SDE",
            dpmpp.sample_dpmpp_3m_sde,
            ("k_dpmpp_3m_sde",),
            "Exponential",
            discard_next_to_last_sigma=True,
            brownian_noise=True,
            stochastic=True,
            extra_params=_NOISE,
        ),
        _S(
            "Euler a",
            euler.sample_euler_ancestral,
            ("k_euler_a", "k_euler_ancestral"),
            uses_ensd=True,
            stochastic=True,
        ),
        _S("Euler", euler.sample_euler, ("k_euler",), extra_params=_CHURN),
        _S("LMS", lms.sample_lms, ("k_lms",)),
        _S("Heun", heun.sample_heun, ("k_heun",), second_order=True, extra_params=_CHURN),
        _S(
            "DPM2",
            heun.sample_dpm_2,
            ("k_dpm_2",),
            "Karras",
            second_order=True,
            discard_next_to_last_sigma=True,
            extra_params=_CHURN,
        ),
        _S(
            "DPM2 a",
            heun.sample_dpm_2_ancestral,
            ("k_dpm_2_a",),
            "Karras",
            second_order=True,
            discard_next_to_last_sigma=True,
            uses_ensd=True,
            stochastic=True,
            extra_params=_NOISE,
        ),
        _S(
            "DPM fast",
            dpm_solver.sample_dpm_fast,
            ("k_dpm_fast",),
            uses_ensd=True,
            stochastic=True,
            extra_params=_NOISE,
        ),
        _S("DPM adaptive", dpm_solver.sample_dpm_adaptive, ("k_dpm_ad",), uses_ensd=True, stochastic=True),
        _S("Restart", restart.sample_restart, ("restart",), "Karras", second_order=True, stochastic=True),
        _S("DDIM", timestep.sample_ddim, ("ddim",), timestep=True, native_schedule="DDIM"),
        _S("PLMS", timestep.sample_plms, ("plms",), timestep=True, native_schedule="DDIM"),
        _S("UniPC", unipc.sample_unipc, ("unipc",), timestep=True),
        _S("LCM", lcm.sample_lcm, ("k_lcm",), stochastic=True),
        _S("DDPM", timestep.sample_ddpm, ("ddpm",), stochastic=True),
    )
}
"""All samplers by A1111 display name, in A1111's ``/sdapi/v1/samplers`` order (DDPM, ComfyUI's, last)."""

SAMPLERS: dict[str, Sampler] = {name: info.function for name, info in SAMPLER_INFO.items()}


def _lookup(name: str) -> str | None:
    wanted = name.strip().lower()
    for info in SAMPLER_INFO.values():
        if wanted in {info.name.lower(), *(alias.lower() for alias in info.aliases)}:
            return info.name
    return None


def resolve_sampler(name: str) -> tuple[str, str | None]:
    """``(sampler name, scheduler label or None)`` for a sampler name or alias (case-insensitive), optionally
    followed by a scheduler label, name or alias: "DPM++ 2M Karras" → ("DPM++ 2M", "Karras").

    Raises ``ValueError`` listing the valid sampler names for an unknown name.
    """
    found = _lookup(name)
    if found is not None:
        return found, None
    for info in SCHEDULER_INFO.values():
        for suffix in (info.label, info.name, *info.aliases):
            if name.strip().lower().endswith(" " + suffix.lower()):
                found = _lookup(name.strip()[: -len(suffix) - 1])
                if found is not None:
                    return found, info.label
    raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLER_INFO)} (optionally + scheduler)")


def sampler_and_scheduler(name: str, scheduler: str = "Automatic") -> tuple[str, str]:
    """A1111 ``get_sampler_and_scheduler``: ``(sampler name, schedule label)`` for a sampler name or alias
    and a schedule label, name or alias. A schedule named in the sampler's name ("DPM++ 2M Karras") wins
    over ``scheduler``, and the sampler's own default schedule is "Automatic" (what A1111 writes).

    Unlike A1111 (which falls back to DPM++ 2M / Automatic), unknown names raise :class:`FieldError`
    naming ``sampler`` or ``scheduler``.
    """
    try:
        sampler, from_name = resolve_sampler(name)
    except ValueError as e:
        raise FieldError("sampler", str(e)) from None
    try:
        label = resolve_scheduler(from_name or scheduler)
    except ValueError as e:
        raise FieldError("scheduler", str(e)) from None
    return sampler, "Automatic" if label == SAMPLER_INFO[sampler].scheduler else label


def automatic_scheduler(sampler: str) -> str:
    """The schedule label "Automatic" means for ``sampler`` (name or alias)."""
    return SAMPLER_INFO[resolve_sampler(sampler)[0]].automatic


def schedule_overrides(
    sampler: str, scheduler: str, *, sigma_min: float = 0.0, sigma_max: float = 0.0, rho: float = 0.0
) -> dict[str, float]:
    """The A1111 options ``sigma_min``/``sigma_max``/``rho`` that act on ``sampler`` under ``scheduler``
    (A1111 ``KDiffusionSampler.get_sigmas``), as :func:`sigmas_for` keywords: none for timestep samplers or
    on the model's own schedule ("Automatic" for a sampler without a default schedule); each one when
    nonzero, ``rho`` only for a schedule with a ρ (Karras, Polyexponential) and other than its default.
    (A1111 also leaves out a σ equal to the model's own; that changes its infotext, not its sigmas.)"""
    info = SAMPLER_INFO[resolve_sampler(sampler)[0]]
    label = resolve_scheduler(scheduler)
    label = (info.scheduler or "Automatic") if label == "Automatic" else label
    if info.timestep or label == "Automatic":
        return {}
    out = {name: value for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)) if value}
    default_rho = SCHEDULER_INFO[label].default_rho
    if rho and default_rho not in (-1, rho):
        out["rho"] = rho
    return out


class ScheduledSigmas(NamedTuple):
    """:func:`sigmas_for`'s result: the sigmas and the label of the schedule used ("Automatic" resolved)."""

    sigmas: Tensor
    scheduler: str


def sigmas_for(
    sampler: str,
    scheduler: str,
    steps: int,
    model_sigmas: Tensor | None = None,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    always_discard_next_to_last_sigma: bool = False,
    use_old_karras_scheduler_sigmas: bool = False,
    **options: Any,
) -> ScheduledSigmas:
    """The sigmas A1111 would sample ``steps`` steps of ``sampler`` with under ``scheduler`` (a label, name
    or alias; "Automatic" is resolved per sampler).

    σ range: the model's (``model_sigmas[0]``, ``model_sigmas[-1]``), or (0.1, 10) with
    ``use_old_karras_scheduler_sigmas``; ``sigma_min``/``sigma_max``/``rho`` override when given (A1111's
    options of the same names, "when nonzero"). When the sampler discards the penultimate sigma (or
    ``always_discard_next_to_last_sigma``), n = steps + 1 sigmas are computed and σ[−2] is removed, so
    ``steps`` steps remain. ``options`` go to the schedule (e.g. Beta's ``alpha``/``beta``, AYS ``sdxl``).
    The sigmas are float32, on ``model_sigmas``' device when given (else the CPU).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    info = SAMPLER_INFO[resolve_sampler(sampler)[0]]
    label = resolve_scheduler(scheduler)
    label = info.automatic if label == "Automatic" else label
    lo, hi = _sigma_range(model_sigmas, old_karras=use_old_karras_scheduler_sigmas)
    lo, hi = sigma_min if sigma_min else lo, sigma_max if sigma_max else hi
    if lo is None or hi is None:
        raise ValueError("pass model_sigmas, or both sigma_min and sigma_max")
    if rho and SCHEDULER_INFO[label].default_rho > 0:
        options = {**options, "rho": rho}
    discard = info.discard_next_to_last_sigma or always_discard_next_to_last_sigma
    sigmas = SCHEDULERS[label](steps + 1 if discard else steps, lo, hi, model_sigmas=model_sigmas, **options)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return ScheduledSigmas(sigmas if model_sigmas is None else sigmas.to(model_sigmas.device), label)


def _sigma_range(model_sigmas: Tensor | None, *, old_karras: bool) -> tuple[float | None, float | None]:
    if old_karras:
        return 0.1, 10.0
    if model_sigmas is None:
        return None, None
    return float(model_sigmas[0]), float(model_sigmas[-1])
