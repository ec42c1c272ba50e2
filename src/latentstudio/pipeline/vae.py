"""The VAE side of :func:`~latentstudio.pipeline.run.run`: encode and decode (tiled when memory is short),
img2img's init latents and inpainting blend, and an inpainting checkpoint's image conditioning.
"""

from __future__ import annotations

import psutil
import torch
from PIL import Image

from latentstudio.models.families import Family
from latentstudio.models.loader import Components
from latentstudio.pipeline import inpaint
from latentstudio.pipeline.images import from_pil
from latentstudio.pipeline.params import GenerationParams, ResizeMode
from latentstudio.postprocess import tiled_vae
from latentstudio.samplers.noise import ImageRNG


def img2img_latents(
    components: Components, params: GenerationParams, prepared: inpaint.Prepared, seeds: list[int]
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    """The init latent ``[1 or B, C, H/8, W/8]`` (the VAE distribution's mean) and, when inpainting, the
    ``(init, keep, repaint)`` blend; "latent noise"/"latent nothing" replace the masked area first."""
    latent = vae_encode(components, from_pil(prepared.image))
    if params.resize_mode is ResizeMode.LATENT_UPSCALE:  # A1111: encode as is, resize the latent
        size = (params.height // 8, params.width // 8)
        latent = torch.nn.functional.interpolate(latent, size=size, mode="bilinear")
    if prepared.mask is None:
        return latent, None
    keep, repaint = (m.to(latent) for m in prepared.latent_masks(latent))
    fill = params.inpaint.fill if params.inpaint is not None else inpaint.MaskedContent.ORIGINAL
    if fill == inpaint.MaskedContent.LATENT_NOISE:  # A1111: the first batch's seeds
        shape = (latent.shape[1], latent.shape[2], latent.shape[3])
        noise = ImageRNG(
            shape, seeds[: params.batch_size], source=params.rng, device=components.device
        ).first()
        latent = latent * keep + noise.to(latent) * repaint
    elif fill == inpaint.MaskedContent.LATENT_NOTHING:
        latent = latent * keep
    return latent, (latent, keep, repaint)


def image_conditioning(
    components: Components, prepared: inpaint.Prepared | None, weight: float, size: tuple[int, int]
) -> torch.Tensor:
    """An inpainting checkpoint's extra UNet input ``[1, 5, h, w]``: the mask and the VAE latent of the
    masked image (a grey image and an all-ones mask without one, as A1111); ``size`` is ``(width, height)``.
    """
    image = prepared.image if prepared is not None and prepared.mask is not None else None
    if image is not None and image.size != size:  # resize mode 3: stretched like the init latent
        image = image.resize(size, resample=Image.Resampling.LANCZOS)
    mask = prepared.mask if prepared is not None else None
    sdxl = components.info.family in (Family.SDXL, Family.SDXL_REFINER)  # A1111 rounds an SDXL model's mask
    rounded = prepared is None or prepared.round_mask or sdxl
    cond_mask, pixels = inpaint.masked_image_conditioning(image, mask, weight, size, rounded)
    latent = vae_encode(components, pixels)
    small = torch.nn.functional.interpolate(cond_mask, size=latent.shape[-2:]).to(latent)
    return torch.cat([small, latent], dim=1)


def vae_encode(components: Components, pixels: torch.Tensor) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] → latents ``[B, C, H/8, W/8]`` (fp32; the distribution's mean)."""
    vae = components.vae
    with torch.inference_mode():
        latent: torch.Tensor = vae.encode(pixels.to(components.device, components.dtype)).latent_dist.mean
    return (latent * float(vae.config.scaling_factor)).float()


def decode(components: Components, latents: torch.Tensor) -> torch.Tensor:
    """Latents → images ``[B, 3, H, W]`` in [-1, 1]; tiled when the decode would not fit in half of the free
    memory (large hires results); retries the VAE in fp32 if half precision gives NaN."""
    vae = components.vae
    scaled = latents / vae.config.scaling_factor
    budget = free_memory(components.device) // 2 // max(latents.shape[0], 1)
    try:
        tile = tiled_vae.auto_tile(vae, tuple(latents.shape), budget, dtype=components.dtype)
    except ValueError:  # not even the smallest tile fits the estimate: try the smallest anyway
        tile = tiled_vae.VaeTile(size=16, overlap=4)
    images = tiled_vae.decode(vae, scaled.to(components.dtype), tile=tile)
    if not torch.isfinite(images).all() and components.dtype != torch.float32:
        images = tiled_vae.decode(vae.float(), scaled.float(), tile=tile)
        vae.to(components.dtype)
    return images.float()


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` (CUDA: the driver's count; otherwise available RAM)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(psutil.virtual_memory().available)


def latent_shape(components: Components, params: GenerationParams) -> tuple[int, int, int]:
    """``(C, H/f, W/f)`` with f the VAE's downscale factor (8 for every SD family)."""
    config = components.vae.config
    factor = 2 ** (len(config.block_out_channels) - 1)
    return (int(config.latent_channels), params.height // factor, params.width // factor)
