"""Hires fix as A1111's txt2img second pass (reference §6.3): target size, latent or pixel upscale, and
the ``Hires …`` infotext keys. The second pass itself is an img2img run inside :func:`pipeline.run.run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from latentstudio.core import FieldError
from latentstudio.models.loader import Components
from latentstudio.pipeline import vae
from latentstudio.pipeline.images import from_pil, to_pil
from latentstudio.pipeline.infotexts import ModelIdentity
from latentstudio.pipeline.params import GenerationParams, Hires, target_size

# A1111's latent upscale modes: name → (torch interpolation mode, antialias)
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}

PixelUpscaler = Callable[[Image.Image, str, int, int], Image.Image]  # (image, upscaler name, w, h) → image


@dataclass(frozen=True)
class HiresPlan:
    """The second pass of one job: where to upscale to, with what, and how to sample it.

    ``width × height`` is the upscaled size (``hr_upscale_to_x/y``); ``truncate_x/y`` are the latent
    columns/rows cut after a cover-fit resize (both ``hr_resize`` sides given), as A1111.
    """

    width: int
    height: int
    truncate_x: int
    truncate_y: int
    upscaler: str
    sampler: str
    scheduler: str
    steps: int
    prompt: str
    negative_prompt: str
    denoising_strength: float

    @property
    def latent_mode(self) -> tuple[str, bool] | None:
        return LATENT_UPSCALE_MODES.get(self.upscaler)


@dataclass(frozen=True)
class HiresModel:
    """The hires fix's own checkpoint (A1111 ``hr_checkpoint_name``), loaded by the caller: its text encoders,
    UNet and VAE run the second pass on the first pass's latents, so it must be of the same family."""

    components: Components
    identity: ModelIdentity

    @property
    def title(self) -> str:
        """A1111's ``short_title`` (the ``Hires checkpoint`` infotext value): ``name [shorthash]``."""
        short = self.identity.shorthash
        return f"{self.identity.name} [{short}]" if short else self.identity.name


def check_model(params: GenerationParams, components: Components, model: HiresModel | None) -> None:
    """The hires checkpoint is given exactly when the job names one, and is of the first pass's family."""
    name = params.hires.checkpoint if params.hires is not None else None
    if name is None:
        if model is not None:
            raise ValueError("hires_model is only for a hires-fix job with hires.checkpoint set")
        return
    if model is None:
        raise FieldError("hires.checkpoint", f"{name!r} was not loaded for this job")
    first, second = components.info, model.components.info
    if first.family is not second.family:
        raise FieldError(
            "hires.checkpoint",
            f"{name!r} is {second.label} but the first pass runs {first.label}: the hires "
            "checkpoint must be of the same family (the latents carry over)",
        )


def plan(params: GenerationParams, hires: Hires) -> HiresPlan:
    """The resolved second pass: hires sampler/scheduler/steps/prompts default to the first pass's."""
    to_x, to_y, truncate_x, truncate_y = target_size(params.width, params.height, hires)
    return HiresPlan(
        width=to_x,
        height=to_y,
        truncate_x=truncate_x,
        truncate_y=truncate_y,
        upscaler=hires.upscaler,
        sampler=hires.sampler or params.sampler,
        scheduler=hires.scheduler or params.scheduler,
        steps=hires.steps or params.steps,
        prompt=hires.prompt or params.prompt,
        negative_prompt=hires.negative_prompt or params.negative_prompt,
        denoising_strength=hires.denoising_strength,
    )


def upscale_latents(latents: torch.Tensor, hires: HiresPlan) -> torch.Tensor:
    """``[B, C, h, w]`` → ``[B, C, H/8, W/8]`` with the plan's latent mode (A1111: F.interpolate)."""
    mode = hires.latent_mode
    assert mode is not None
    size = (hires.height // 8, hires.width // 8)
    return torch.nn.functional.interpolate(latents, size=size, mode=mode[0], antialias=mode[1])


def truncate(latents: torch.Tensor, hires: HiresPlan) -> torch.Tensor:
    """Cut ``truncate_y`` rows and ``truncate_x`` columns, split between both sides as A1111 does."""
    ty, tx = hires.truncate_y, hires.truncate_x
    return latents[
        :, :, ty // 2 : latents.shape[2] - (ty + 1) // 2, tx // 2 : latents.shape[3] - (tx + 1) // 2
    ]


def infotext_keys(
    params: GenerationParams,
    hires: Hires,
    plan: HiresPlan,
    first_schedule: str,
    hires_schedule: str,
    *,
    checkpoint: str | None = None,
) -> dict[str, object]:
    """The ``Hires …`` keys in A1111's order (a key equal to the first pass's value is left out);
    ``checkpoint``: the hires checkpoint's ``name [shorthash]`` when the job names one."""
    keys: dict[str, object] = {
        "Hires checkpoint": checkpoint,
        "Hires sampler": plan.sampler if plan.sampler != params.sampler else None,
        "Hires prompt": plan.prompt if plan.prompt != params.prompt else None,
        "Hires negative prompt": plan.negative_prompt
        if plan.negative_prompt != params.negative_prompt
        else None,
        "Hires schedule type": hires_schedule if hires_schedule != first_schedule else None,
    }
    if hires.resize_x == 0 and hires.resize_y == 0:
        keys["Hires upscale"] = hires.scale
    else:
        keys["Hires resize"] = f"{hires.resize_x}x{hires.resize_y}"
    keys["Hires steps"] = hires.steps or None
    keys["Hires upscaler"] = hires.upscaler
    return keys


def resize_pixels(image: Image.Image, upscaler: str, width: int, height: int) -> Image.Image:
    """The built-in pixel upscalers (A1111 ``Upscaler.upscale`` with Lanczos / Nearest / None): repeat the
    upscaler's ×scale step until the size is reached (at most 3 times), then Lanczos to the exact size."""
    lanczos = Image.Resampling.LANCZOS
    if upscaler == "None":
        return image.resize((width, height), resample=lanczos)
    resample = {"Lanczos": lanczos, "Nearest": Image.Resampling.NEAREST}.get(upscaler)
    if resample is None:
        raise ValueError(f"could not find upscaler named {upscaler!r}; built in: None, Lanczos, Nearest")
    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        dest = (int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8))
        for _ in range(3):
            if image.width >= dest[0] and image.height >= dest[1]:
                break
            image = image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)
        if image.size != dest:
            image = image.resize(dest, resample=lanczos)
    return image if image.size == (width, height) else image.resize((width, height), resample=lanczos)


def init_latents(  # noqa: PLR0917 - both checkpoints, the source, the plan and the pixel upscaler
    first: Components,
    second: Components,
    source: torch.Tensor | Image.Image,
    plan: HiresPlan,
    upscaler: PixelUpscaler,
    batch: int,
) -> torch.Tensor:
    """The second pass's init latents ``[B, C, H/8, W/8]`` (B: the first-pass latents' batch, or ``batch``
    copies of a firstpass image) at the hires size, from the first pass's latents ``[B, C, h, w]`` or from
    A1111's ``firstpass_image``, which stands for the first pass's result (``sample``: no first pass runs).

    A latent mode interpolates latents; a firstpass image is first encoded, at its own size, by the
    ``first`` checkpoint's VAE (A1111 encodes it before switching to the hires checkpoint). A pixel upscaler
    works on the images the ``first`` checkpoint's VAE decodes (or on the firstpass image, through A1111's
    8-bit → [-1, 1] → 8-bit round trip), which the ``second``'s encodes again."""
    image = source.convert("RGB") if isinstance(source, Image.Image) else None
    if image is not None and min(image.size) < 8:
        raise FieldError(
            "hires.firstpass_image", f"must be at least 8x8 pixels, got {image.width}x{image.height}"
        )
    if plan.latent_mode is not None:
        latents = vae.vae_encode(first, from_pil(image)) if image is not None else source
        assert isinstance(latents, torch.Tensor)
        upscaled = truncate(upscale_latents(latents, plan), plan)
    else:
        images = [_round_trip(image)] if image is not None else to_pil(vae.decode(first, source))  # type: ignore[arg-type]
        resized = [upscaler(im, plan.upscaler, plan.width, plan.height) for im in images]
        upscaled = truncate(torch.cat([vae.vae_encode(second, from_pil(im)) for im in resized]), plan)
    return upscaled.expand(batch, -1, -1, -1).contiguous() if image is not None else upscaled


def _round_trip(image: Image.Image) -> Image.Image:
    """A1111's firstpass image in the pixel-upscaler branch: 8-bit → float32 [-1, 1] → clamped [0, 1] → ×255
    truncated to 8 bits (values 1…63 come back one lower; the float32 steps are A1111's)."""
    x = np.asarray(image, dtype=np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)
    y = np.clip((x + np.float32(1.0)) / np.float32(2.0), 0.0, 1.0).astype(np.float32)
    return Image.fromarray((np.float32(255.0) * y).astype(np.uint8), "RGB")
