"""``run(params, components) -> GenerationResult``: txt2img (with the hires fix) and img2img as A1111.

Steps: check → networks → encode → sigmas → latents → sample (one or two passes) → decode → infotext.
Saving is the caller's choice (:func:`latentstudio.pipeline.images.save_image`), so the same function
serves the CLI, the worker and tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psutil
import torch
from PIL import Image

from latentstudio.models.embeddings import Embedding, EmbeddingDatabase, ti_hashes
from latentstudio.models.families import Family
from latentstudio.models.loader import Components
from latentstudio.models.lora import Activation, LoraNetworks, LoraRequest
from latentstudio.pipeline import hires, infotexts, inpaint
from latentstudio.pipeline.hires import PixelUpscaler
from latentstudio.pipeline.images import from_pil, to_pil
from latentstudio.pipeline.params import GenerationParams, ResizeMode
from latentstudio.pipeline.passes import Pass, Progress, StepInfo, make_rng, pass_sigmas, run_pass
from latentstudio.postprocess import tiled_vae
from latentstudio.prompts.chunks import EmbeddingFinder
from latentstudio.prompts.conditioning import ConditioningCache, Emphasis, TextOptions, encode_prompts
from latentstudio.prompts.parser import extract_networks, lora_tags, schedules, split_and, strip_comments
from latentstudio.samplers import SAMPLER_INFO
from latentstudio.samplers.noise import ImageRNG, all_seeds
from latentstudio.samplers.schedules import model_sigmas_from_alphas
from latentstudio.samplers.wrappers import Conditioning, Denoiser, ScheduledConditioning, StepControl

__all__ = ["GenerationResult", "ModelIdentity", "NaNLatentError", "StepInfo", "latent_preview", "run"]


class NaNLatentError(RuntimeError):
    """Sampling produced NaN/inf latents (an image would be black); reported instead of saved."""


@dataclass(frozen=True)
class ModelIdentity:
    """How the infotext names the model: A1111's ``Model``, ``Model hash``, ``VAE``, ``VAE hash``."""

    name: str
    shorthash: str | None = None
    vae_name: str | None = None
    vae_hash: str | None = None


@dataclass(frozen=True)
class GenerationResult:
    """Images with their seeds and infotexts (one per image), and whether the job was interrupted."""

    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    params: GenerationParams
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)


def _img2img_latents(
    components: Components, params: GenerationParams, prepared: inpaint.Prepared, seeds: list[int]
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    """The init latent ``[1 or B, C, H/8, W/8]`` (the VAE distribution's mean) and, when inpainting, the
    ``(init, keep, repaint)`` blend; "latent noise"/"latent nothing" replace the masked area first."""
    latent = _vae_encode(components, from_pil(prepared.image))
    if params.resize_mode is ResizeMode.LATENT_UPSCALE:  # A1111: encode as is, resize the latent
        size = (params.height // 8, params.width // 8)
        latent = torch.nn.functional.interpolate(latent, size=size, mode="bilinear")
    if prepared.mask is None:
        return latent, None
    keep, repaint = (m.to(latent) for m in inpaint.latent_masks(prepared.mask, latent))
    if params.inpainting_fill == inpaint.MaskedContent.LATENT_NOISE:  # A1111: the first batch's seeds
        shape = (latent.shape[1], latent.shape[2], latent.shape[3])
        noise = ImageRNG(
            shape, seeds[: params.batch_size], source=params.rng, device=components.device
        ).first()
        latent = latent * keep + noise.to(latent) * repaint
    elif params.inpainting_fill == inpaint.MaskedContent.LATENT_NOTHING:
        latent = latent * keep
    return latent, (latent, keep, repaint)


def _image_conditioning(
    components: Components, prepared: inpaint.Prepared | None, weight: float, size: tuple[int, int]
) -> torch.Tensor:
    """An inpainting checkpoint's extra UNet input ``[1, 5, h, w]``: the mask and the VAE latent of the
    masked image (a grey image and an all-ones mask without one, as A1111); ``size`` is ``(width, height)``.
    """
    image = prepared.image if prepared is not None and prepared.mask is not None else None
    mask = prepared.mask if prepared is not None else None
    cond_mask, pixels = inpaint.masked_image_conditioning(image, mask, weight, size)
    latent = _vae_encode(components, pixels)
    small = torch.nn.functional.interpolate(cond_mask, size=latent.shape[-2:]).to(latent)
    return torch.cat([small, latent], dim=1)


def _vae_encode(components: Components, pixels: torch.Tensor) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] → latents ``[B, C, H/8, W/8]`` (fp32; the distribution's mean)."""
    vae = components.vae
    with torch.inference_mode():
        latent: torch.Tensor = vae.encode(pixels.to(components.device, components.dtype)).latent_dist.mean
    return (latent * float(vae.config.scaling_factor)).float()


def _decode(components: Components, latents: torch.Tensor) -> torch.Tensor:
    """Latents → images ``[B, 3, H, W]`` in [-1, 1]; tiled when the decode would not fit in half of the free
    memory (large hires results); retries the VAE in fp32 if half precision gives NaN."""
    vae = components.vae
    scaled = latents / vae.config.scaling_factor
    budget = _free_memory(components.device) // 2 // max(latents.shape[0], 1)
    try:
        tile = tiled_vae.auto_tile(vae, tuple(latents.shape), budget, dtype=components.dtype)
    except ValueError:  # not even the smallest tile fits the estimate: try the smallest anyway
        tile = tiled_vae.VaeTile(size=16, overlap=4)
    images = tiled_vae.decode(vae, scaled.to(components.dtype), tile=tile)
    if not torch.isfinite(images).all() and components.dtype != torch.float32:
        images = tiled_vae.decode(vae.float(), scaled.float(), tile=tile)
        vae.to(components.dtype)
    return images.float()


def _free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` (CUDA: the driver's count; otherwise available RAM)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(psutil.virtual_memory().available)


def _batch_seeds(params: GenerationParams) -> tuple[list[int], list[int]]:
    return all_seeds(params.seed, params.subseed, params.subseed_strength, params.batch_size * params.n_iter)


def run(
    params: GenerationParams,
    components: Components,
    *,
    identity: ModelIdentity,
    on_step: Callable[[StepInfo], None] | None = None,
    control: StepControl | None = None,
    embeddings: EmbeddingDatabase | None = None,
    cache: ConditioningCache | None = None,
    loras: LoraNetworks | None = None,
    upscaler: PixelUpscaler = hires.resize_pixels,
) -> GenerationResult:
    """Generate ``batch_size × n_iter`` images. ``params`` must be :meth:`GenerationParams.resolved`.

    ``embeddings``: textual inversions usable by name in the prompts (their hashes go to the infotext).
    ``cache``: encoded prompts kept across jobs (the worker's); without one, each distinct text of this
    job is still encoded once.
    ``loras``: the LoRA files ``<lora:name:te:unet:dyn>`` tags may name: merged into the weights for this
    job only (the base weights come back bit for bit); a LoRA that cannot be used is a warning.
    ``upscaler``: the hires fix's pixel upscalers (``image, name, width, height → image``); the default
    knows A1111's built-in None, Lanczos and Nearest.
    """
    # 1. check
    params.validate()
    # 2. networks: the prompt's LoRAs, in force until this job returns
    requests, warnings = _network_requests(params, have_loras=loras is not None)
    applied = loras.applied(components, requests) if loras is not None else nullcontext(Activation())
    with applied as networks:
        return _generate(
            params, components, identity=identity, on_step=on_step, control=control or StepControl(),
            embeddings=embeddings, cache=cache or ConditioningCache(), networks=networks,
            warnings=[*warnings, *networks.warnings], upscaler=upscaler,
        )  # fmt: skip


def _generate(
    params: GenerationParams,
    components: Components,
    *,
    identity: ModelIdentity,
    on_step: Callable[[StepInfo], None] | None,
    control: StepControl,
    embeddings: EmbeddingDatabase | None,
    cache: ConditioningCache,
    networks: Activation,
    warnings: list[str],
    upscaler: PixelUpscaler,
) -> GenerationResult:
    """Steps 3 to 8 of :func:`run`, with the job's networks in force."""
    seeds, subseeds = _batch_seeds(params)
    model_sigmas = model_sigmas_from_alphas(components.alphas_cumprod).to(components.device)
    text = _Texts(embeddings, cache, networks.text_key)
    # 3. encode and 4. sigmas, per pass (once: every batch shares them)
    prepared = inpaint.prepare(params) if params.is_img2img else None
    init, blend = _img2img_latents(components, params, prepared, seeds) if prepared else (None, None)
    warnings.extend(prepared.warnings if prepared is not None else ())
    first = dataclasses.replace(_first_pass(components, params, model_sigmas, text), blend=blend)
    plan = hires.plan(params) if params.enable_hr else None
    second = _hires_pass(components, params, model_sigmas, text, plan) if plan is not None else None
    extra_info = {"Lora hashes": networks.infotext_hashes(), **_extra_info(params, text.used, text.texts)}
    if plan is not None and second is not None:
        extra_info.update(hires.infotext_keys(params, plan, first.schedule_label, second.schedule_label))
    extra_info.update(prepared.infotext if prepared is not None else {})
    inpainting_model = components.info.inpainting
    if inpainting_model and prepared is not None:
        extra_info["Conditional mask weight"] = params.inpainting_mask_weight
    size = (params.width, params.height)
    weight = params.inpainting_mask_weight
    concat = _image_conditioning(components, prepared, weight, size) if inpainting_model else None
    denoiser = _denoiser(components, model_sigmas, concat)
    images: list[Image.Image] = []
    interrupted = False
    per_batch = first.steps + (second.steps if second is not None else 0)
    for batch in range(params.n_iter):
        window = slice(batch * params.batch_size, (batch + 1) * params.batch_size)
        # 5. latents and 6. sample
        rng = make_rng(params, components, seeds[window], subseeds[window], _latent_shape(components, params))
        progress = Progress(batch * per_batch, params.n_iter * per_batch, batch, on_step)
        latents, stopped, padded = run_pass(first, denoiser, params, control, rng, init, progress)
        if plan is not None and second is not None and not stopped:
            upscaled = _upscale_for_hires(components, latents, plan, upscaler)
            shape = (upscaled.shape[1], upscaled.shape[2], upscaled.shape[3])
            rng = make_rng(params, components, seeds[window], subseeds[window], shape)
            progress = dataclasses.replace(progress, offset=progress.offset + first.steps)
            hr_size = (plan.width, plan.height)
            concat = _image_conditioning(components, None, 1.0, hr_size) if inpainting_model else None
            hr_denoiser = _denoiser(components, model_sigmas, concat)
            latents, stopped, more = run_pass(second, hr_denoiser, params, control, rng, upscaled, progress)
            padded |= more
        interrupted = interrupted or stopped
        extra_info.update(dict.fromkeys(sorted(padded), True))
        if not torch.isfinite(latents).all():
            raise NaNLatentError("sampling produced NaN latents (try fp32 or another sampler); nothing saved")
        # 7. decode
        decoded = to_pil(_decode(components, latents))
        overlay = prepared.overlay if prepared is not None else None
        images.extend(decoded if overlay is None else [inpaint.apply_overlay(i, overlay) for i in decoded])
        if stopped:
            break
    # 8. infotext
    lines = [
        infotexts.create(
            params,
            identity,
            seeds[i],
            subseeds[i],
            first.schedule_label,
            SAMPLER_INFO[params.sampler],
            extra_info,
        )
        for i in range(len(images))
    ]
    n = len(images)
    return GenerationResult(images, lines, seeds[:n], subseeds[:n], params, interrupted, warnings)


@dataclass
class _Texts:
    """The job's text encoding state: where embeddings and encodings come from, what was used."""

    embeddings: EmbeddingDatabase | None
    cache: ConditioningCache
    networks: Hashable  # the text-encoder LoRA patches in force (part of every cache key)
    used: list[Embedding] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


def _first_pass(
    components: Components, params: GenerationParams, model_sigmas: torch.Tensor, text: _Texts
) -> Pass:
    """txt2img, or img2img at ``denoising_strength``, with the job's prompts."""
    strength = params.denoising_strength if params.is_img2img else None
    sigmas, vp_terminal, label = pass_sigmas(
        params.sampler, params.scheduler, params.steps, strength, model_sigmas
    )
    steps = _total_steps(params.sampler, params.steps)
    size = (params.height, params.width)
    conds, uncond = _conditionings(
        components, params, (params.prompt, params.negative_prompt), (steps, None), size, text
    )
    pad = _empty_context(components, params, size) if params.pad_conds else None
    return Pass(params.sampler, sigmas, vp_terminal, label, conds, uncond, pad)


def _hires_pass(
    components: Components,
    params: GenerationParams,
    model_sigmas: torch.Tensor,
    text: _Texts,
    plan: hires.HiresPlan,
) -> Pass:
    """The hires fix's img2img pass; its prompts are scheduled after the first pass's steps (A1111)."""
    sigmas, vp_terminal, label = pass_sigmas(
        plan.sampler, plan.scheduler, plan.steps, params.denoising_strength, model_sigmas
    )
    steps = (_total_steps(params.sampler, params.steps), _total_steps(plan.sampler, plan.steps))
    size = (plan.height, plan.width)
    conds, uncond = _conditionings(components, params, (plan.prompt, plan.negative_prompt), steps, size, text)
    pad = _empty_context(components, params, size) if params.pad_conds else None
    return Pass(plan.sampler, sigmas, vp_terminal, label, conds, uncond, pad)


def _total_steps(sampler: str, steps: int) -> int:
    """A1111 schedules prompts over model calls: twice the steps for second-order samplers."""
    return steps * (2 if SAMPLER_INFO[sampler].second_order else 1)


def _empty_context(components: Components, params: GenerationParams, size: tuple[int, int]) -> torch.Tensor:
    """The empty prompt's context ``[1, 77, D]`` (A1111 "Pad conds" pads with it)."""
    return encode_prompts(components, [""], _text_options(params, size)).context


def _upscale_for_hires(
    components: Components, latents: torch.Tensor, plan: hires.HiresPlan, upscaler: PixelUpscaler
) -> torch.Tensor:
    """First-pass latents ``[B, C, h, w]`` → the second pass's init latents at the hires size: a latent
    mode interpolates them; a pixel upscaler works on the decoded images, which are encoded again."""
    if plan.latent_mode is not None:
        return hires.truncate(hires.upscale_latents(latents, plan), plan)
    upscaled = [
        upscaler(image, plan.upscaler, plan.width, plan.height)
        for image in to_pil(_decode(components, latents))
    ]
    encoded = torch.cat([_vae_encode(components, from_pil(image)) for image in upscaled])
    return hires.truncate(encoded, plan)


def _extra_info(
    params: GenerationParams, used: Sequence[Embedding], texts: Sequence[str]
) -> dict[str, object]:
    """The infotext keys that depend on the texts: old timelines, TI hashes, a non-default emphasis mode
    (A1111 names it only when a prompt has brackets it could apply to)."""
    emphasis = params.emphasis != "Original" and any(c in t for t in texts for c in "([")
    return {
        "Old prompt editing timelines": params.old_prompt_editing or None,
        "TI hashes": ti_hashes(used) or None,
        "Emphasis": params.emphasis if emphasis else None,
    }


def _conditionings(  # noqa: PLR0917 - one pass's text inputs
    components: Components,
    params: GenerationParams,
    prompts: tuple[str, str],
    steps: tuple[int, int | None],
    size: tuple[int, int],
    text: _Texts,
) -> tuple[list[tuple[ScheduledConditioning, float]], ScheduledConditioning]:
    """Positive AND-parts and the negative prompt of one pass as step schedules, each distinct text encoded
    once (through the job's cache; the texts and embeddings used are recorded in ``text``). ``steps`` is
    ``(total steps, hires total steps or None)`` for :func:`schedules`; ``size`` is ``(height, width)``.

    A1111 order: ``#`` comments, extra-network tags removed, AND split, prompt-editing schedules.
    """
    prompt, _ = extract_networks(strip_comments(prompts[0]))
    negative, _ = extract_networks(strip_comments(prompts[1]))
    options = _text_options(params, size)

    def schedule(part_text: str, aesthetic: float) -> ScheduledConditioning:
        text_options = dataclasses.replace(options, aesthetic_score=aesthetic)
        entries = []
        for end, part in schedules(part_text, steps[0], steps[1], old_scheduling=params.old_prompt_editing):
            encode = partial(_encode_recording, components, part, text_options, text.embeddings)
            conditioning, found = text.cache.get_or_encode(
                components, part, text_options, text.embeddings, encode, text.networks
            )
            text.used.extend(e for e in found if e not in text.used)
            entries.append((end, conditioning))
            text.texts.append(part)
        return ScheduledConditioning(tuple(entries))

    conds = [(schedule(part, 6.0), weight) for part, weight in split_and(prompt)]
    return conds, schedule(negative, 2.5)


def _network_requests(params: GenerationParams, *, have_loras: bool) -> tuple[list[LoraRequest], list[str]]:
    """The prompt's ``<lora:…>``/``<lyco:…>`` tags, and a warning for each tag that is not applied: other
    kinds (hypernetworks), LoRAs when the job has no LoRA source, and any tag in the negative prompt (A1111
    reads networks from the prompt only)."""
    _, networks = extract_networks(strip_comments(params.prompt))
    _, negative = extract_networks(strip_comments(params.negative_prompt))
    warnings: list[str] = []
    for kind, entries in networks.items():
        is_lora = kind in ("lora", "lyco")
        if is_lora and have_loras:
            continue
        reason = "no LoRA folder for this job" if is_lora else f"{kind!r} networks are not supported"
        warnings.extend(f"<{kind}:{':'.join(args)}> ignored: {reason}" for args in entries)
    for kind, entries in negative.items():
        reason = "networks apply from the prompt only"
        warnings.extend(f"<{kind}:{':'.join(a)}> in the negative prompt ignored: {reason}" for a in entries)
    tags = lora_tags(networks) if have_loras else []
    return [LoraRequest(t.name, t.te_multiplier, t.unet_multiplier, t.dyn_dim) for t in tags], warnings


def _text_options(params: GenerationParams, size: tuple[int, int]) -> TextOptions:
    """Encoder options of a pass; ``size`` ``(height, width)`` is SDXL's size conditioning."""
    return TextOptions(clip_skip=params.clip_skip, emphasis=Emphasis(params.emphasis), size=size)


def _encode_recording(
    components: Components, text: str, options: TextOptions, database: EmbeddingDatabase | None
) -> tuple[Conditioning, tuple[Embedding, ...]]:
    """Encode ``text`` with the database's embeddings, noting each one found (for ``TI hashes``)."""
    used: list[Embedding] = []

    def find(tokens: Sequence[int], offset: int) -> tuple[Embedding | None, int]:
        embedding, span = database.find_at(tokens, offset) if database is not None else (None, 0)
        if embedding is not None and embedding not in used:
            used.append(embedding)
        return embedding, span

    def finder(_name: str) -> EmbeddingFinder:
        return find  # the CLIP vocabulary is shared: one lookup serves every encoder

    return encode_prompts(components, [text], options, finder), tuple(used)


def _latent_shape(components: Components, params: GenerationParams) -> tuple[int, int, int]:
    """``(C, H/f, W/f)`` with f the VAE's downscale factor (8 for every SD family)."""
    config = components.vae.config
    factor = 2 ** (len(config.block_out_channels) - 1)
    return (int(config.latent_channels), params.height // factor, params.width // factor)


def _denoiser(components: Components, model_sigmas: torch.Tensor, concat: torch.Tensor | None) -> Denoiser:
    """The UNet as a k-diffusion denoiser; ``concat`` ``[1, 5, h, w]`` feeds an inpainting checkpoint."""
    unet = components.unet
    extra = None if concat is None else concat.to(components.device, components.dtype)

    def fn(x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if extra is not None:  # after c_in scaling, as A1111's c_concat
            x = torch.cat([x, extra.expand(x.shape[0], -1, -1, -1)], dim=1)
        out: torch.Tensor = unet(x, t, return_dict=False, **kwargs)[0]
        return out

    return Denoiser(fn, model_sigmas, components.info.prediction, components.dtype)


def latent_preview(latent: torch.Tensor, family: Family) -> Image.Image:
    """A cheap linear latent → RGB approximation (A1111 "Approx cheap") of the first image in the batch."""
    coefficients = _PREVIEW_SDXL if family in (Family.SDXL, Family.SDXL_REFINER) else _PREVIEW_SD
    weights = torch.tensor(coefficients, dtype=torch.float32)
    if latent.shape[1] != weights.shape[0]:
        weights = torch.ones(latent.shape[1], 3) / math.sqrt(latent.shape[1])
    rgb = torch.einsum("chw,cr->rhw", latent[0].float().cpu(), weights)
    return to_pil(rgb[None])[0]


_PREVIEW_SD = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
_PREVIEW_SDXL = [
    [0.3448, 0.4168, 0.4395],
    [-0.1953, -0.0290, 0.0250],
    [0.1074, 0.0886, -0.0163],
    [-0.3730, -0.2499, -0.2088],
]
