"""What ControlNet units do to a sampling pass beside their networks' residuals, as sd-webui-controlnet's
``UnetHook`` does it (``scripts/hook.py``: the "post-processing for color fix", "post-processing for
restore" and "replace x_t to support inpaint models" steps).

- **Colour fix** (``tile_colorfix``, ``tile_colorfix+sharp``): the UNet's output read as ε gives a
  predicted x0 = ᾱ^-½·x_t − (ᾱ^-1 − 1)^½·ε (ᾱ at the rounded timestep), whose local mean (a box blur of
  radius ``k`` = the unit's Variation, doubled in the hires pass unless the unit is off there) is replaced
  by that of the hint's VAE latent; ``+sharp`` softens the negative prompt's entries by threshold_b / 100;
  ε is recomputed and blended in by ``min(max(weight, 0), 1)``.
- **Restore** (``inpaint_only``): x0 = x0_pred·m + x0_hint·(1 − m), with x0_hint the VAE latent of the
  whole (unmasked) control picture and m its mask max-pooled to the latent (10×10 windows, stride 8,
  padding 1), blended in the same way: the part outside the mask is held to the picture.
- **Inpainting checkpoints** (9 input channels): a unit with a mask gives the UNet its own image
  conditioning, ``[max_pool(m, 8), VAE((2c − 1)·(1 − m))]``, in place of the job's (the last such unit).
- **The inpaint hint**: the network sees ``c·(1 − m) − m`` (the masked pixels at −1), m = mask > ½.
- **LaMa's start** (``inpaint_only+lama``, the extension's ``HackedImageRNG``): in the first batch's first
  pass every noise draw of the latent's size becomes ``√ᾱ·latent + √(1 − ᾱ)·noise`` at t = 999, the
  latent being the unit's LaMa-filled picture's (:class:`ShiftedNoise`).

As there, all but the hint act in every step and pass, outside the unit's guidance window and
``hr_option`` too. A unit of weight 0 (here) does none of this, so that it leaves the picture untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.samplers.noise import ImageRNG

Encode = Callable[[torch.Tensor], torch.Tensor]  # images [B, 3, H, W] in [-1, 1] → latents [B, 4, h, w]


@dataclass(frozen=True)
class ColorFix:
    """A colour-fix unit's part of a pass: the hint's VAE latent ``[1, 4, h, w]``, the blur radius ``k`` in
    latent pixels, the ``+sharp`` detail weight (``threshold_b / 100``; None without sharpening) and the
    blend weight ``min(max(weight, 0), 1)``."""

    latent: torch.Tensor
    k: int
    sharp: float | None
    weight: float


@dataclass(frozen=True)
class Restore:
    """An ``inpaint_only`` unit's part of a pass: the VAE latent of its picture ``[1, 4, h, w]``, the mask at
    the latent's size ``[1, 1, h, w]`` (1: to be drawn) and the blend weight ``min(max(weight, 0), 1)``."""

    latent: torch.Tensor
    mask: torch.Tensor
    weight: float


def blend_weight(weight: float) -> float:
    """How much of a steered prediction replaces the UNet's: the unit's weight clamped to [0, 1]."""
    return min(max(float(weight), 0.0), 1.0)


def color_fix(fitted: torch.Tensor, k: int, sharp: float | None, weight: float, encode: Encode) -> ColorFix:
    """A colour fix from the unit's hint fitted to the pass, ``[1, C, H, W]`` in [0, 1]."""
    return ColorFix(encode(fitted[:, :3] * 2.0 - 1.0), k, sharp, blend_weight(weight))


def restore(fitted: torch.Tensor, weight: float, encode: Encode) -> Restore:
    """An ``inpaint_only`` restore from the unit's fitted map ``[1, 4, H, W]`` (colours, mask in [0, 1])."""
    mask = F.max_pool2d(fitted[:, 3:4], (10, 10), stride=(8, 8), padding=1)
    return Restore(encode(fitted[:, :3] * 2.0 - 1.0), mask, blend_weight(weight))


def image_conditioning(fitted: torch.Tensor, encode: Encode) -> torch.Tensor:
    """An inpainting checkpoint's extra input from a unit's fitted map ``[1, 4, H, W]``: ``[1, 5, h, w]``,
    the mask max-pooled to the latent, then the latent of the picture with the masked part at 0 (grey)."""
    mask = (fitted[:, 3:4] > 0.5).to(fitted.dtype)
    masked = encode((fitted[:, :3] * 2.0 - 1.0) * (1.0 - mask))
    return torch.cat([F.max_pool2d(mask, (8, 8)).to(masked), masked], dim=1)


def masked_hint(fitted: torch.Tensor) -> torch.Tensor:
    """The hint an inpaint unit's network sees, ``[1, 3, H, W]``: the colours, and −1 where masked."""
    mask = (fitted[:, 3:4] > 0.5).to(fitted.dtype)
    return fitted[:, :3] * (1.0 - mask) - mask


def _blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """A box mean over ``(2k+1)²`` with the edges replicated, size kept: ``[B, C, h, w]``."""
    padded = F.pad(x, (k, k, k, k), mode="replicate")
    return F.avg_pool2d(padded, (2 * k + 1, 2 * k + 1), stride=(1, 1))


@dataclass(frozen=True)
class _Step:
    """x_t ``[B, 4, h, w]`` (the UNet input after c_in: an inpainting checkpoint's extra channels dropped)
    and the factors that turn ε into x0 and back at its timesteps."""

    xt: torch.Tensor
    recip: torch.Tensor  # ᾱ^-½
    recip_m1: torch.Tensor  # (ᾱ^-1 − 1)^½

    @classmethod
    def of(cls, x: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> _Step:
        xt = x[:, :4]
        index = torch.round(t.float()).long().clamp(0, alphas_cumprod.numel() - 1)
        alpha = alphas_cumprod.to(xt.device, torch.float64)[index][:, None, None, None]
        return cls(xt, (1.0 / alpha).sqrt().to(xt.dtype), (1.0 / alpha - 1.0).sqrt().to(xt.dtype))

    def x0(self, eps: torch.Tensor) -> torch.Tensor:
        return self.recip * self.xt - self.recip_m1 * eps

    def eps(self, x0: torch.Tensor) -> torch.Tensor:
        return (self.recip * self.xt - x0) / self.recip_m1


def apply_color_fix(  # noqa: PLR0917 - one UNet call's state
    fix: ColorFix,
    x: torch.Tensor,
    t: torch.Tensor,
    out: torch.Tensor,
    mark: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """The UNet output ``out`` ``[B, 4, h, w]`` (read as ε) steered so that the predicted x0 has the hint
    latent's local mean: x0 = x0 − blur(x0) + blur(hint); with sharpening the negative prompt's entries
    (``mark`` 0) get ``d · blur(x0) + (1 − d) · x0`` instead. ``x``: the UNet input (x_t), ``t`` ``[B]``
    its timesteps (rounded, as the extension indexes ᾱ)."""
    step = _Step.of(x, t, alphas_cumprod)
    x0 = step.x0(out)
    x0 = x0 - _blur(x0, fix.k) + _blur(fix.latent.to(x0), fix.k)
    if fix.sharp is not None:
        softened = fix.sharp * _blur(x0, fix.k) + (1 - fix.sharp) * x0
        x0 = mark * x0 + (1 - mark) * softened
    return step.eps(x0) * fix.weight + out * (1 - fix.weight)


def apply_restore(
    fix: Restore, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """The UNet output ``out`` ``[B, 4, h, w]`` (read as ε) steered so that the predicted x0 is the
    picture's latent outside the mask: x0 = x0·m + latent·(1 − m)."""
    step = _Step.of(x, t, alphas_cumprod)
    mask = fix.mask.to(out)
    x0 = step.x0(out) * mask + fix.latent.to(out) * (1 - mask)
    return step.eps(x0) * fix.weight + out * (1 - fix.weight)


class ShiftedNoise:
    """A batch's noise with every draw of ``latent``'s size (``[1, 4, h, w]``) pulled toward it as the
    forward process at t = 999 would: ``√ᾱ·latent + √(1 − ᾱ)·noise``, ``alpha`` = ᾱ at t = 999; draws of
    another size (the hires pass's) unchanged. Used as the :class:`ImageRNG` it wraps."""

    def __init__(self, rng: ImageRNG, latent: torch.Tensor, alpha: float) -> None:
        self.rng, self.latent, self.alpha = rng, latent, alpha
        self.seeds = rng.seeds

    def _shifted(self, noise: torch.Tensor) -> torch.Tensor:
        if noise.shape[-2:] != self.latent.shape[-2:]:
            return noise
        shifted: torch.Tensor = self.alpha**0.5 * self.latent.to(noise) + (1.0 - self.alpha) ** 0.5 * noise
        return shifted

    def first(self) -> torch.Tensor:
        """The initial noise ``[B, 4, h, w]``, shifted."""
        return self._shifted(self.rng.first())

    def next(self) -> torch.Tensor:
        """The next draw ``[B, 4, h, w]``, shifted."""
        return self._shifted(self.rng.next())

    def noise_sampler(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        """k-diffusion's ``noise_sampler``: the next draw, shifted (an ancestral sampler's noise too)."""
        return self.next()
