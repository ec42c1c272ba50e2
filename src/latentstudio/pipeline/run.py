"""``run(params, components) -> GenerationResult``: txt2img and img2img as A1111 does them.

Steps: check → encode → sigmas → latents → sample → decode → infotext. Saving is the caller's choice
(:func:`latentstudio.pipeline.images.save_image`), so the same function serves the CLI, the worker and tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from PIL import Image

from latentstudio.models.embeddings import Embedding, EmbeddingDatabase, ti_hashes
from latentstudio.models.families import Family
from latentstudio.models.loader import Components
from latentstudio.pipeline import infotexts
from latentstudio.pipeline.images import from_pil, to_pil
from latentstudio.pipeline.params import GenerationParams, ResizeMode
from latentstudio.pipeline.resize import resize_image
from latentstudio.prompts.chunks import EmbeddingFinder
from latentstudio.prompts.conditioning import ConditioningCache, Emphasis, TextOptions, encode_prompts
from latentstudio.prompts.parser import extract_networks, schedules, split_and, strip_comments
from latentstudio.samplers import SAMPLER_INFO, SAMPLERS, sigmas_for
from latentstudio.samplers.noise import BrownianNoiseSampler, ImageRNG, all_seeds
from latentstudio.samplers.schedules import model_sigmas_from_alphas
from latentstudio.samplers.wrappers import (
    CFGDenoiser,
    Conditioning,
    Denoiser,
    SamplingInterrupted,
    ScheduledConditioning,
    StepControl,
)


class NaNLatentError(RuntimeError):
    """Sampling produced NaN/inf latents (an image would be black); reported instead of saved."""


@dataclass(frozen=True)
class StepInfo:
    """Progress of one job: ``step`` of ``total`` over all batches; ``latent`` is ``[B, C, h, w]``."""

    step: int
    total: int
    batch: int
    latent: torch.Tensor


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


def _img2img_steps(steps: int, strength: float) -> int:
    """A1111 ``setup_img2img_steps``: ``t_enc = int(min(strength, 0.999) · steps)``; t_enc+1 steps run."""
    return int(min(strength, 0.999) * steps)


def _init_latents(components: Components, params: GenerationParams) -> torch.Tensor:
    """The VAE latent of the resized init image, ``[1, C, H/8, W/8]`` (the distribution's mean)."""
    assert params.init_image is not None
    image = resize_image(params.init_image, params.width, params.height, params.resize_mode)
    pixels = from_pil(image).to(components.device, components.dtype)
    vae = components.vae
    with torch.inference_mode():
        latent: torch.Tensor = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    if params.resize_mode is ResizeMode.LATENT_UPSCALE:  # A1111: encode as is, resize the latent
        size = (params.height // 8, params.width // 8)
        latent = torch.nn.functional.interpolate(latent.float(), size=size, mode="bilinear")
    return latent.float()


def _decode(components: Components, latents: torch.Tensor) -> torch.Tensor:
    """Latents → images ``[B, 3, H, W]`` in [-1, 1]; retries the VAE in fp32 if half precision gives NaN."""
    vae = components.vae
    scaled = latents / vae.config.scaling_factor
    with torch.inference_mode():
        images: torch.Tensor = vae.decode(scaled.to(components.dtype)).sample
        if not torch.isfinite(images).all() and components.dtype != torch.float32:
            images = vae.float().decode(scaled.float()).sample
            vae.to(components.dtype)
    return images.float()


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
) -> GenerationResult:
    """Generate ``batch_size × n_iter`` images. ``params`` must be :meth:`GenerationParams.resolved`.

    ``embeddings``: textual inversions usable by name in the prompts (their hashes go to the infotext).
    ``cache``: encoded prompts kept across jobs (the worker's); without one, each distinct text of this
    job is still encoded once.
    """
    # 1. check
    params.validate()
    control = control or StepControl()
    info = SAMPLER_INFO[params.sampler]
    seeds, subseeds = _batch_seeds(params)
    # 2. encode (once: every batch shares the prompts)
    used: list[Embedding] = []
    warnings: list[str] = []
    conds, uncond, texts = _conditionings(
        components, params, embeddings, used, warnings, cache or ConditioningCache()
    )
    extra_info = _extra_info(params, used, texts)
    pad_empty = encode_prompts(components, [""], _text_options(params)).context if params.pad_conds else None
    # 3. sigmas
    model_sigmas = model_sigmas_from_alphas(components.alphas_cumprod).to(components.device)
    sigmas, _ = sigmas_for(params.sampler, params.scheduler, params.steps, model_sigmas)
    # A1111 writes the schedule the sampler resolved "Automatic" to, if any; else "Automatic".
    schedule_label = params.scheduler if params.scheduler != "Automatic" else (info.scheduler or "Automatic")
    # A1111 runs DDIM and PLMS on timesteps in VP space: they start from plain noise (x_vp = ε) and stop
    # at t = 0 (ᾱ_0, σ = 0.029), returning x_vp. The same in σ-space: start at ε·√(1+σ²), end at σ_0, scale.
    vp_terminal = info.timestep and info.native_schedule == "DDIM" and params.scheduler == "Automatic"
    if vp_terminal:
        sigmas = torch.cat([sigmas[:-1], model_sigmas[:1]])
    if params.is_img2img:
        t_enc = _img2img_steps(params.steps, params.denoising_strength)
        sigmas = sigmas[len(sigmas) - t_enc - 2 :]
    denoiser = Denoiser(_unet_fn(components), model_sigmas, components.info.prediction, components.dtype)
    init = _init_latents(components, params) if params.is_img2img else None
    images: list[Image.Image] = []
    interrupted = False
    total = params.n_iter * (len(sigmas) - 1)
    for batch in range(params.n_iter):
        window = slice(batch * params.batch_size, (batch + 1) * params.batch_size)
        # 4. latents
        rng = ImageRNG(
            _latent_shape(components, params),
            seeds[window],
            subseeds=subseeds[window],
            subseed_strength=params.subseed_strength,
            seed_resize_from_h=params.seed_resize_from_h,
            seed_resize_from_w=params.seed_resize_from_w,
            source=params.rng,
            device=components.device,
            eta_noise_seed_delta=params.eta_noise_seed_delta,
        )
        noise = rng.first().to(components.device)
        if init is not None:
            x = init + noise * sigmas[0]
        else:
            x = noise * ((1 + sigmas[0] ** 2).sqrt() if vp_terminal else sigmas[0])
        # 5. sample (a fresh guidance object per batch: its step counter drives prompt editing)
        guided = CFGDenoiser(
            denoiser, conds, uncond, params.cfg_scale, control, pad_empty, pad_last=params.pad_conds_v0
        )
        noise_sampler = (
            BrownianNoiseSampler(x, sigmas, seeds[window]) if info.brownian_noise else rng.noise_sampler
        )
        latents, stopped = _sample(params, guided, x, sigmas, noise_sampler, batch, total, on_step)
        if vp_terminal:
            latents = latents / (1 + sigmas[-1] ** 2).sqrt()
        interrupted = interrupted or stopped
        extra_info.update(dict.fromkeys(sorted(guided.padded), True))
        if not torch.isfinite(latents).all():
            raise NaNLatentError("sampling produced NaN latents (try fp32 or another sampler); nothing saved")
        # 6. decode
        images.extend(to_pil(_decode(components, latents)))
        if stopped:
            break
    lines = [
        infotexts.create(params, identity, seeds[i], subseeds[i], schedule_label, info, extra_info)
        for i in range(len(images))
    ]
    n = len(images)
    return GenerationResult(images, lines, seeds[:n], subseeds[:n], params, interrupted, warnings)


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


def _conditionings(  # noqa: PLR0917 - one job's text inputs and outputs
    components: Components,
    params: GenerationParams,
    database: EmbeddingDatabase | None,
    used: list[Embedding],
    warnings: list[str],
    cache: ConditioningCache,
) -> tuple[list[tuple[ScheduledConditioning, float]], ScheduledConditioning, list[str]]:
    """Positive AND-parts and the negative prompt as step schedules (each distinct text encoded once), and
    the texts that were encoded.

    A1111 order: ``#`` comments, extra-network tags removed, AND split, prompt-editing schedules.
    """
    prompt, networks = extract_networks(strip_comments(params.prompt))
    negative, negative_networks = extract_networks(strip_comments(params.negative_prompt))
    for kind, entries in {**negative_networks, **networks}.items():
        for args in entries:
            warnings.append(f"<{kind}:{':'.join(args)}> ignored: extra networks are not supported yet")
    options = _text_options(params)
    # A1111 schedules over model calls: second-order samplers get twice the steps (SamplerData.total_steps)
    steps = params.steps * (2 if SAMPLER_INFO[params.sampler].second_order else 1)

    def schedule(text: str, aesthetic: float) -> ScheduledConditioning:
        text_options = dataclasses.replace(options, aesthetic_score=aesthetic)
        entries = []
        for end, part in schedules(text, steps, old_scheduling=params.old_prompt_editing):
            encode = partial(_encode_recording, components, part, text_options, database)
            conditioning, found = cache.get_or_encode(components, part, text_options, database, encode)
            used.extend(e for e in found if e not in used)
            entries.append((end, conditioning))
            texts.append(part)
        return ScheduledConditioning(tuple(entries))

    texts: list[str] = []
    conds = [(schedule(part, 6.0), weight) for part, weight in split_and(prompt)]
    return conds, schedule(negative, 2.5), texts


def _text_options(params: GenerationParams) -> TextOptions:
    emphasis = Emphasis(params.emphasis)
    return TextOptions(clip_skip=params.clip_skip, emphasis=emphasis, size=(params.height, params.width))


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


def _sample(  # noqa: PLR0917 - the loop state of one batch
    params: GenerationParams,
    guided: CFGDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    noise_sampler: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: int,
    total: int,
    on_step: Callable[[StepInfo], None] | None,
) -> tuple[torch.Tensor, bool]:
    """Run the sampler; on interrupt return the last latent reached (A1111 decodes it too)."""
    last = {"x": x}
    steps_per_batch = len(sigmas) - 1

    def callback(state: dict[str, Any]) -> None:
        last["x"] = state["x"]
        if on_step is not None:
            done = batch * steps_per_batch + int(state["i"]) + 1
            on_step(StepInfo(done, total, batch, state["denoised"]))

    options = _sampler_options(params)
    try:
        with torch.inference_mode():
            out = SAMPLERS[params.sampler](
                guided, x, sigmas, noise_sampler=noise_sampler, callback=callback, **options
            )
    except SamplingInterrupted as signal:
        return last["x"], not signal.skipped
    return out, False


def _sampler_options(params: GenerationParams) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if params.eta is not None:
        options["eta"] = params.eta
    if params.s_noise != 1.0:
        options["s_noise"] = params.s_noise
    return options


def _latent_shape(components: Components, params: GenerationParams) -> tuple[int, int, int]:
    """``(C, H/f, W/f)`` with f the VAE's downscale factor (8 for every SD family)."""
    config = components.vae.config
    factor = 2 ** (len(config.block_out_channels) - 1)
    return (int(config.latent_channels), params.height // factor, params.width // factor)


def _unet_fn(components: Components) -> Callable[..., torch.Tensor]:
    """The UNet as ``fn(x_in, t, encoder_hidden_states=..., [added_cond_kwargs=...]) -> ε or v``."""
    unet = components.unet

    def fn(x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        out: torch.Tensor = unet(x, t, return_dict=False, **kwargs)[0]
        return out

    return fn


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
