"""Sampling passes: the sigmas of one pass (txt2img, img2img or the hires-fix second pass) and running it
for one batch, with the job's noise, guidance, progress and interrupt handling.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from latentstudio.models.loader import Components
from latentstudio.pipeline import control as cn
from latentstudio.pipeline import control_fix as fix
from latentstudio.pipeline.control import PassUnit
from latentstudio.pipeline.params import GenerationParams
from latentstudio.samplers import SAMPLER_INFO, SAMPLERS, sigmas_for
from latentstudio.samplers.noise import BrownianNoiseSampler, ImageRNG
from latentstudio.samplers.registry import schedule_overrides
from latentstudio.samplers.wrappers import (
    CFGDenoiser,
    Denoiser,
    Ngms,
    SamplingInterrupted,
    ScheduledConditioning,
    StepControl,
)


def unet_denoiser(
    components: Components, model_sigmas: torch.Tensor, concat: torch.Tensor | None
) -> Denoiser:
    """The UNet as a k-diffusion denoiser; ``concat`` ``[1, 5, h, w]`` feeds an inpainting checkpoint (an
    inpaint ControlNet unit may give its own in its place: the ``image_conditioning`` keyword)."""
    unet = components.unet
    extra = None if concat is None else concat.to(components.device, components.dtype)

    def fn(x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        own = kwargs.pop("image_conditioning", None)
        if extra is not None:  # after c_in scaling, as A1111's c_concat
            concat = extra if own is None else own.to(extra)
            x = torch.cat([x, concat.expand(x.shape[0], -1, -1, -1)], dim=1)
        out: torch.Tensor = unet(x, t, return_dict=False, **kwargs)[0]
        return out

    return Denoiser(fn, model_sigmas, components.info.prediction, components.dtype)


@dataclass(frozen=True)
class StepInfo:
    """Progress of one job: ``step`` of ``total`` over all batches; ``latent`` is ``[B, C, h, w]``."""

    step: int
    total: int
    batch: int
    latent: torch.Tensor


@dataclass(frozen=True)
class Pass:
    """One sampling pass: the sampler, its σ (``[n + 1]``, already cut for img2img) and its guidance.

    ``vp_terminal``: A1111's DDIM/PLMS convention with the Automatic schedule — start from plain noise and
    stop at t = 0 — see :func:`pass_sigmas`. ``schedule_label`` is what the infotext calls the schedule.
    """

    sampler: str
    sigmas: torch.Tensor
    vp_terminal: bool
    schedule_label: str
    conds: Sequence[tuple[ScheduledConditioning, float]]
    uncond: ScheduledConditioning
    pad_empty: torch.Tensor | None = None
    blend: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # inpainting: init, keep, repaint
    control: tuple[PassUnit, ...] = ()  # the ControlNet units that act in this pass

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


@dataclass(frozen=True)
class Progress:
    """Where a pass sits in its job: steps done before it, the job's total, and the batch index."""

    offset: int
    total: int
    batch: int
    on_step: Callable[[StepInfo], None] | None


def pass_sigmas(  # noqa: PLR0917 - a pass's sampler, schedule, steps and strength
    sampler: str,
    scheduler: str,
    steps: int,
    strength: float | None,
    model_sigmas: torch.Tensor,
    params: GenerationParams | None = None,
    *,
    fixed_steps: bool = False,
) -> tuple[torch.Tensor, bool, str]:
    """``(sigmas, vp_terminal, schedule_label)`` for a pass; ``strength`` None for txt2img, else img2img
    with A1111's step arithmetic (``setup_img2img_steps``: ``t_enc = int(min(strength, 0.999) · steps)``
    and t_enc + 1 steps run; with ``fixed_steps`` (A1111's hires pass, or ``img2img_fix_steps``) exactly
    ``steps`` run, of a schedule of ``int(steps / min(strength, 0.999))``, none at strength 0).
    ``params``: the job's schedule overrides (A1111's ``sigma_min``/``sigma_max``/``rho`` options)."""
    info = SAMPLER_INFO[sampler]
    # A1111 writes the schedule the sampler resolved "Automatic" to, if any; else "Automatic".
    label = scheduler if scheduler != "Automatic" else (info.scheduler or "Automatic")
    t_enc = None
    if strength is not None and fixed_steps:
        if strength <= 0:
            return model_sigmas.new_zeros(1), False, label
        steps, t_enc = int(steps / min(strength, 0.999)), steps - 1
    elif strength is not None:
        t_enc = int(min(strength, 0.999) * steps)
    overrides: dict[str, float] = {}
    if params is not None:
        values = {"sigma_min": params.sigma_min, "sigma_max": params.sigma_max, "rho": params.rho}
        overrides = schedule_overrides(sampler, scheduler, **values)
    sigmas, _ = sigmas_for(
        sampler, scheduler, steps, model_sigmas, sigma_min=overrides.get("sigma_min"),
        sigma_max=overrides.get("sigma_max"), rho=overrides.get("rho"),
    )  # fmt: skip
    # A1111 runs DDIM and PLMS on timesteps in VP space: they start from plain noise (x_vp = ε) and stop at
    # t = 0 (ᾱ_0, σ = 0.029), returning x_vp. In σ-space: start at ε·√(1+σ²), end at σ_0, then rescale.
    vp_terminal = info.timestep and info.native_schedule == "DDIM" and scheduler == "Automatic"
    if vp_terminal:
        sigmas = torch.cat([sigmas[:-1], model_sigmas[:1]])
    if t_enc is not None:
        sigmas = sigmas[len(sigmas) - t_enc - 2 :]
    return sigmas, vp_terminal, label


def make_rng(
    params: GenerationParams,
    components: Components,
    seeds: list[int],
    subseeds: list[int],
    shape: tuple[int, int, int],
) -> ImageRNG:
    """A1111's ``ImageRNG`` for a batch at latent ``shape`` (the hires pass gets a fresh one, same seeds)."""
    return ImageRNG(
        shape,
        seeds,
        subseeds=subseeds,
        subseed_strength=params.subseed_strength,
        seed_resize_from_h=params.seed_resize_from_h,
        seed_resize_from_w=params.seed_resize_from_w,
        source=params.rng,
        device=components.device,
        eta_noise_seed_delta=params.eta_noise_seed_delta,
    )


def run_pass(  # noqa: PLR0917 - one pass of one batch
    sampling: Pass,
    denoiser: Denoiser,
    params: GenerationParams,
    control: StepControl,
    rng: ImageRNG,
    init: torch.Tensor | None,
    progress: Progress,
) -> tuple[torch.Tensor, bool, set[str]]:
    """Sample one batch: ``(latents [B, C, h, w], stopped, padding used)``; ``init`` is the img2img
    latent (noised to the first σ) or None (pure noise). On interrupt/skip the last latent is returned."""
    sigmas = sampling.sigmas
    source: ImageRNG | fix.ShiftedNoise = rng
    shift = [u.noise for u in sampling.control if u.noise is not None]
    if shift and progress.batch == 0:  # as the extension, which shifts the first batch's noise only
        source = fix.ShiftedNoise(
            rng, shift[-1], float(1.0 / (1.0 + denoiser.model_sigmas[-1].double() ** 2))
        )
    noise = source.first().to(sigmas.device)
    if init is not None:
        if params.is_img2img:  # A1111 img2img's sample(): "Noise multiplier"
            noise = noise * params.initial_noise_multiplier
        x = init + noise * sigmas[0]
        if params.extra_noise > 0:  # A1111 sample_img2img (img2img and hires): "Extra noise"
            x = x + noise * params.extra_noise
    else:
        sgm = sampling.vp_terminal or params.sgm_noise_multiplier  # "SGM noise multiplier"
        x = noise * ((1 + sigmas[0] ** 2).sqrt() if sgm else sigmas[0])
    # a fresh guidance object per pass and batch: its step counter drives prompt editing
    controlled = cn.controlled(denoiser.unet, sampling.control, sampling.steps, denoiser.model_sigmas)
    if controlled is not None:
        denoiser = dataclasses.replace(denoiser, unet=controlled)
    guided = CFGDenoiser(
        denoiser, sampling.conds, sampling.uncond, params.cfg_scale, control, sampling.pad_empty,
        pad_last=params.pad_conds_v0, blend=sampling.blend, mark_conds=controlled is not None,
        ngms=Ngms(params.s_min_uncond, params.s_min_uncond_all, SAMPLER_INFO[sampling.sampler].timestep),
    )  # fmt: skip
    noise_sampler: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = source.noise_sampler
    if SAMPLER_INFO[sampling.sampler].brownian_noise:
        noise_sampler = BrownianNoiseSampler(x, sigmas, rng.seeds)
    observe = controlled.observe if controlled is not None else None
    options = _options(params, sampling.sampler)
    latents, stopped = x, False  # no steps: A1111's fixed img2img steps at denoising strength 0
    if sampling.steps > 0:
        latents, stopped = _sample(
            sampling.sampler, guided, x, sigmas, noise_sampler, options, progress, observe
        )
    if sampling.vp_terminal:
        latents = latents / (1 + sigmas[-1] ** 2).sqrt()
    if sampling.blend is not None:  # A1111 blends the final samples once more
        init_latent, keep, repaint = sampling.blend
        latents = latents * repaint + init_latent * keep
    return latents, stopped, guided.padded


def _sample(  # noqa: PLR0917 - the loop state of one pass
    sampler: str,
    guided: CFGDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    noise_sampler: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    options: dict[str, Any],
    progress: Progress,
    observe: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, bool]:
    """Run the sampler; on interrupt return the last latent reached (A1111 decodes it too). ``observe``
    hears the index of every finished step."""
    last = {"x": x}

    def callback(state: dict[str, Any]) -> None:
        last["x"] = state["x"]
        if observe is not None:
            observe(int(state["i"]))
        if progress.on_step is not None:
            done = progress.offset + int(state["i"]) + 1
            progress.on_step(StepInfo(done, progress.total, progress.batch, state["denoised"]))

    try:
        with torch.inference_mode():
            out = SAMPLERS[sampler](
                guided, x, sigmas, noise_sampler=noise_sampler, callback=callback, **options
            )
    except SamplingInterrupted as signal:
        return last["x"], not signal.skipped
    return out, False


def _options(params: GenerationParams, sampler: str) -> dict[str, Any]:
    """The job's eta for samplers that take it and the churn / s_noise fields A1111 passes to this sampler
    (``sampler_extra_params``; a hires pass may use another sampler). ``s_tmax`` 0 means no bound."""
    accepted = inspect.signature(SAMPLERS[sampler]).parameters
    options: dict[str, Any] = {}
    if params.eta is not None and "eta" in accepted:
        options["eta"] = params.eta
    for name in SAMPLER_INFO[sampler].extra_params:
        options[name] = getattr(params, name)
    if "s_tmax" in options:
        options["s_tmax"] = options["s_tmax"] or math.inf
    return options
