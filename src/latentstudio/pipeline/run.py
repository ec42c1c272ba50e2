"""``run(params, components) -> GenerationResult``: txt2img (with the hires fix) and img2img as A1111.

Steps: check → networks → encode → sigmas → latents → sample (one or two passes) → decode → infotext.
Saving is the caller's choice (:func:`latentstudio.pipeline.images.save_image`), so the same function
serves the CLI, the worker and tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from PIL import Image

from latentstudio import infotext
from latentstudio.control.networks import ControlNetwork
from latentstudio.models.embeddings import EmbeddingDatabase
from latentstudio.models.hypernetworks import HypernetworkLibrary
from latentstudio.models.loader import Components
from latentstudio.models.lora import Activation, LoraNetworks, LoraRequest
from latentstudio.pipeline import color, control_post, hires, infotexts, inpaint, texts, tiling, vae
from latentstudio.pipeline import control as cn
from latentstudio.pipeline import hypernets as hn
from latentstudio.pipeline.hires import HiresModel, PixelUpscaler
from latentstudio.pipeline.images import latent_preview
from latentstudio.pipeline.infotexts import ModelIdentity
from latentstudio.pipeline.params import GenerationParams, Hires, ResolvedParams
from latentstudio.pipeline.passes import (
    Pass,
    Progress,
    StepInfo,
    make_rng,
    pass_sigmas,
    run_pass,
    unet_denoiser,
)
from latentstudio.prompts.conditioning import ConditioningCache
from latentstudio.samplers import SAMPLER_INFO
from latentstudio.samplers.noise import ImageRNG, all_seeds
from latentstudio.samplers.schedules import model_sigmas_from_alphas
from latentstudio.samplers.wrappers import Denoiser, StepControl

__all__ = [
    "GenerationResult",
    "HiresModel",
    "ModelIdentity",
    "NaNLatentError",
    "StepInfo",
    "latent_preview",
    "run",
]


class NaNLatentError(RuntimeError):
    """Sampling produced NaN/inf latents (an image would be black); reported instead of saved."""


@dataclass(frozen=True)
class GenerationResult:
    """Images with their seeds and infotexts (one per image), and whether the job was interrupted.

    ``all_seeds``/``all_subseeds``: every image the job planned (A1111's ``p.all_seeds``, also when it was
    interrupted); ``extra_generation_params``: the infotext's keys beyond the fixed ones (the same for every
    image); ``inpainting_conditioning``: an inpainting checkpoint got its image conditioning (A1111's
    ``is_using_inpainting_conditioning``)."""

    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    params: GenerationParams
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    all_seeds: list[int] = field(default_factory=list)
    all_subseeds: list[int] = field(default_factory=list)
    extra_generation_params: dict[str, object] = field(default_factory=dict)
    inpainting_conditioning: bool = False
    detected_maps: list[Image.Image] = field(default_factory=list)  # ControlNet units' (cn.detected_maps)


def _batch_seeds(params: GenerationParams) -> tuple[list[int], list[int]]:
    return all_seeds(params.seed, params.subseed, params.subseed_strength, params.batch_size * params.n_iter)


def run(
    params: ResolvedParams,
    components: Components,
    *,
    identity: ModelIdentity,
    on_step: Callable[[StepInfo], None] | None = None,
    control: StepControl | None = None,
    embeddings: EmbeddingDatabase | None = None,
    cache: ConditioningCache | None = None,
    loras: LoraNetworks | None = None,
    hypernetworks: HypernetworkLibrary | None = None,  # the <hypernet:…> tags' files (pipeline.hypernets)
    upscaler: PixelUpscaler = hires.resize_pixels,
    hires_model: HiresModel | None = None,
    controls: Sequence[ControlNetwork] = (),
    annotator_roots: Sequence[Path] = (),
) -> GenerationResult:
    """Generate ``batch_size × n_iter`` images of ``params``, made by :meth:`GenerationParams.resolved`.

    ``embeddings``: textual inversions usable by name in the prompts (their hashes go to the infotext).
    ``cache``: encoded prompts kept across jobs (the worker's); without one, each distinct text of this
    job is still encoded once.
    ``loras``: the LoRA files ``<lora:name:te:unet:dyn>`` tags may name: merged into the weights for this
    job only (the base weights come back bit for bit); a LoRA that cannot be used is a warning.
    ``upscaler``: the hires fix's pixel upscalers (``image, name, width, height → image``); the default
    knows A1111's built-in None, Lanczos and Nearest.
    ``hires_model``: the checkpoint ``params.hires.checkpoint`` names (required with it, refused without).
    ``controls``: the network of each of ``params.control``'s units, in order; ``annotator_roots``: where
    their weight-needing preprocessors find their files.
    """
    # 1. check (the parameters were validated once, by GenerationParams.resolved)
    if not isinstance(params, ResolvedParams):
        raise TypeError("run() takes GenerationParams.resolved(), not a GenerationParams")
    hires.check_model(params, components, hires_model)
    # 2. networks (the prompt's LoRAs) and tiling (circular padding), in force until this job returns
    requests, warnings = texts.network_requests(params, have_loras=loras is not None)
    applied = loras.applied(components, requests) if loras is not None else nullcontext(Activation())
    hooked = hn.applied(hypernetworks, params, [components, hires_model, *controls], warnings)
    with applied as networks, tiling.seamless(params.tiling, components, hires_model), hooked:
        return _generate(
            params, components, identity=identity, on_step=on_step, control=control or StepControl(),
            text=texts.Texts(embeddings, cache or ConditioningCache(), networks.text_key), networks=networks,
            warnings=[*warnings, *networks.warnings], upscaler=upscaler, hires_model=hires_model,
            switch=_LoraSwitch(loras, requests, components), controls=(controls, annotator_roots),
        )  # fmt: skip


@dataclass
class _LoraSwitch:
    """Moves the job's LoRAs between the first pass's checkpoint and the hires checkpoint (a
    :class:`LoraNetworks` patches one model at a time); nothing to do without LoRAs or a second model."""

    loras: LoraNetworks | None
    requests: Sequence[LoraRequest]
    current: Components

    def use(self, components: Components) -> Activation | None:
        """Patch ``components`` (the other model gets its base weights back); None when nothing changed."""
        if self.loras is None or not self.requests or components is self.current:
            return None
        self.current = components
        return self.loras.activate(components, self.requests)


@dataclass(frozen=True)
class _Stage:
    """One sampling pass and the checkpoint that runs it (the hires fix's may be another one)."""

    components: Components
    sampling: Pass
    denoiser: Denoiser


@dataclass(frozen=True)
class _Hires:
    """The hires fix of a job: its plan, its pass, the infotext name of its own checkpoint (None: the first
    pass's), and the warnings of moving the job's LoRAs onto that checkpoint."""

    plan: hires.HiresPlan
    stage: _Stage
    checkpoint: str | None
    warnings: tuple[str, ...] = ()


def _generate(
    params: GenerationParams,
    components: Components,
    *,
    identity: ModelIdentity,
    on_step: Callable[[StepInfo], None] | None,
    control: StepControl,
    text: texts.Texts,
    networks: Activation,
    warnings: list[str],
    upscaler: PixelUpscaler,
    hires_model: HiresModel | None,
    switch: _LoraSwitch,
    controls: tuple[Sequence[ControlNetwork], Sequence[Path]],
) -> GenerationResult:
    """Steps 3 to 8 of :func:`run`, with the job's networks in force."""
    seeds, subseeds = _batch_seeds(params)
    # 3. encode and 4. sigmas, per pass (once: every batch shares them)
    prepared = inpaint.prepare(params) if params.is_img2img else None
    init, blend = vae.img2img_latents(components, params, prepared, seeds) if prepared else (None, None)
    warnings.extend(prepared.warnings if prepared is not None else ())
    detected = cn.detect_units(params.control, controls[0], params, seeds[0], subseeds[0], roots=controls[1])
    first = _first_stage(components, params, text, prepared, blend)
    first = _controlled(first, detected, (params.height, params.width), "low" if params.hires else "single")
    second = (
        _hires_stage(components, params, params.hires, text, hires_model, switch) if params.hires else None
    )
    if second is not None:
        size = (second.plan.height, second.plan.width)
        second = dataclasses.replace(second, stage=_controlled(second.stage, detected, size, "high"))
    warnings.extend(w for w in (second.warnings if second else ()) if w not in warnings)
    extra_info = _job_info(params, networks, text, first, second, prepared)
    correct = prepared is not None and params.color_correction
    target = color.correction_target(prepared.image) if prepared is not None and correct else None
    overlay = prepared.overlay if prepared is not None else None
    images: list[Image.Image] = []
    interrupted = False
    per_batch = first.sampling.steps + (second.stage.sampling.steps if second is not None else 0)
    for batch in range(params.n_iter):
        window = slice(batch * params.batch_size, (batch + 1) * params.batch_size)
        # 5. latents and 6. sample
        progress = Progress(batch * per_batch, params.n_iter * per_batch, batch, on_step)
        batch_rng = partial(make_rng, params, components, seeds[window], subseeds[window])
        latents, stopped, padded, decoder = _sample_batch(
            params, first, second, control=control, rng=batch_rng, init=init, progress=progress,
            upscaler=upscaler, switch=switch,
        )  # fmt: skip
        interrupted = interrupted or stopped
        extra_info.update(infotexts.pass_keys(params, padded))
        # 7. decode; A1111 order: colour correction, then the inpainting overlay
        decoded = control_post.finish(tiling.decode(decoder, latents, params.tiling), detected)
        if target is not None:
            decoded = [color.apply_color_correction(target, image) for image in decoded]
        images.extend(decoded if overlay is None else [inpaint.apply_overlay(i, overlay) for i in decoded])
        if stopped:
            break
    # 8. infotext
    sampler, label = SAMPLER_INFO[params.sampler], first.sampling.schedule_label
    per_image = [
        infotexts.parameters(params, identity, seeds[i], subseeds[i], label, sampler, extra_info)
        for i in range(len(images))
    ]
    lines = [infotext.format(params.prompt, params.negative_prompt, values) for values in per_image]
    n = len(images)
    extra = infotexts.extra_generation_params(per_image[0]) if per_image else {}
    inpainting = first.components.info.inpainting or (
        second is not None and second.stage.components.info.inpainting
    )
    sizes = [(second.plan.height, second.plan.width)] if second is not None else []
    return GenerationResult(
        images, lines, seeds[:n], subseeds[:n], params, interrupted, warnings,
        all_seeds=seeds, all_subseeds=subseeds, extra_generation_params=extra,
        inpainting_conditioning=inpainting,
        detected_maps=cn.detected_maps(detected, [*sizes, (params.height, params.width)]),
    )  # fmt: skip


def _sample_batch(
    params: GenerationParams,
    first: _Stage,
    second: _Hires | None,
    *,
    control: StepControl,
    rng: Callable[[tuple[int, int, int]], ImageRNG],
    init: torch.Tensor | None,
    progress: Progress,
    upscaler: PixelUpscaler,
    switch: _LoraSwitch,
) -> tuple[torch.Tensor, bool, set[str], Components]:
    """One batch through the first pass and, unless stopped, the hires pass: ``(latents, stopped, padding
    used, the checkpoint whose VAE decodes them)``. ``rng``: the batch's noise at a latent shape."""
    switch.use(first.components)
    fixed = params.hires.firstpass_image if params.hires is not None else None  # replaces the first pass
    latents, stopped, padded = torch.empty(0), False, set[str]()
    if fixed is None or second is None:
        noise = rng(vae.latent_shape(first.components, params))
        latents, stopped, padded = run_pass(
            first.sampling, first.denoiser, params, control, noise, init, progress
        )
    decoder = first.components
    if second is not None and not stopped:
        stage, source = second.stage, latents if fixed is None else fixed
        upscaled = hires.init_latents(
            first.components, stage.components, source, second.plan, upscaler, params.batch_size
        )
        noise = rng((upscaled.shape[1], upscaled.shape[2], upscaled.shape[3]))
        progress = dataclasses.replace(progress, offset=progress.offset + first.sampling.steps)
        switch.use(stage.components)
        latents, stopped, more = run_pass(
            stage.sampling, stage.denoiser, params, control, noise, upscaled, progress
        )
        padded, decoder = padded | more, stage.components
    if not torch.isfinite(latents).all():
        raise NaNLatentError("sampling produced NaN latents (try fp32 or another sampler); nothing saved")
    return latents, stopped, padded, decoder


def _first_stage(
    components: Components,
    params: GenerationParams,
    text: texts.Texts,
    prepared: inpaint.Prepared | None,
    blend: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
) -> _Stage:
    """txt2img, or img2img at ``denoising_strength``, with the job's prompts."""
    model_sigmas = model_sigmas_from_alphas(components.alphas_cumprod).to(components.device)
    strength = params.denoising_strength if params.is_img2img else None
    sigmas, vp_terminal, label = pass_sigmas(
        params.sampler, params.scheduler, params.steps, strength, model_sigmas, params,
        fixed_steps=params.img2img_fix_steps,
    )  # fmt: skip
    steps = texts.total_steps(params.sampler, params.steps)
    size = (params.height, params.width)
    conds, uncond = texts.conditionings(
        components, params, (params.prompt, params.negative_prompt), (steps, None), size, text
    )
    pad = texts.empty_context(components, params, size) if params.pad_conds else None
    sampling = Pass(params.sampler, sigmas, vp_terminal, label, conds, uncond, pad, blend)
    concat = None
    if components.info.inpainting:
        weight, full = params.inpainting_mask_weight, (params.width, params.height)
        concat = vae.image_conditioning(components, prepared, weight, full)
    return _Stage(components, sampling, unet_denoiser(components, model_sigmas, concat))


def _hires_stage(  # noqa: PLR0917 - the job, its hires fix and what runs it
    components: Components,
    params: GenerationParams,
    fix: Hires,
    text: texts.Texts,
    model: HiresModel | None,
    switch: _LoraSwitch,
) -> _Hires:
    """The hires fix's img2img pass, on the hires checkpoint when the job names one (else ``components``):
    its prompts are scheduled after the first pass's steps (A1111) and encoded by that checkpoint."""
    plan = hires.plan(params, fix)
    if model is not None:
        components = model.components
    model_sigmas = model_sigmas_from_alphas(components.alphas_cumprod).to(components.device)
    activation = switch.use(components)
    if activation is not None:  # the hires checkpoint's text encoders carry the LoRAs now
        text = dataclasses.replace(text, networks=activation.text_key)
    sigmas, vp_terminal, label = pass_sigmas(  # A1111's hires pass always runs its steps exactly
        plan.sampler, plan.scheduler, plan.steps, plan.denoising_strength, model_sigmas, params,
        fixed_steps=True,
    )  # fmt: skip
    steps = (texts.total_steps(params.sampler, params.steps), texts.total_steps(plan.sampler, plan.steps))
    size = (plan.height, plan.width)
    conds, uncond = texts.conditionings(
        components, params, (plan.prompt, plan.negative_prompt), steps, size, text
    )
    pad = texts.empty_context(components, params, size) if params.pad_conds else None
    sampling = Pass(plan.sampler, sigmas, vp_terminal, label, conds, uncond, pad)
    concat = None
    if components.info.inpainting:
        concat = vae.image_conditioning(components, None, 1.0, (plan.width, plan.height))
    stage = _Stage(components, sampling, unet_denoiser(components, model_sigmas, concat))
    title = model.title if model is not None else None
    return _Hires(plan, stage, title, activation.warnings if activation is not None else ())


def _job_info(  # noqa: PLR0917 - the parts of a job the infotext describes
    params: GenerationParams,
    networks: Activation,
    text: texts.Texts,
    first: _Stage,
    second: _Hires | None,
    prepared: inpaint.Prepared | None,
) -> dict[str, object]:
    """The job's infotext keys beyond the fixed ones, in A1111's order."""
    info: dict[str, object] = {  # the ControlNet script writes its entries before the networks load
        **{f"ControlNet {i}": unit.infotext() for i, unit in enumerate(params.control)},
        "Lora hashes": networks.infotext_hashes(),
        **texts.extra_info(params, text.used, text.texts),
    }
    if second is not None and params.hires is not None:
        labels = (first.sampling.schedule_label, second.stage.sampling.schedule_label)
        keys = hires.infotext_keys(params, params.hires, second.plan, *labels, checkpoint=second.checkpoint)
        info.update(keys)
    info.update(prepared.infotext if prepared is not None else {})
    if first.components.info.inpainting and prepared is not None:
        info["Conditional mask weight"] = params.inpainting_mask_weight
    return info


def _controlled(
    stage: _Stage, detected: Sequence[cn.Detected], size: tuple[int, int], kind: cn.Stage
) -> _Stage:
    """``stage`` with the ControlNet units that act in it (hints fitted to its ``size``)."""
    encode, inpainting = partial(vae.vae_encode, stage.components), stage.components.info.inpainting
    units = cn.pass_units(detected, size, kind, encode, inpainting=inpainting) if detected else []
    return dataclasses.replace(stage, sampling=dataclasses.replace(stage.sampling, control=tuple(units)))
