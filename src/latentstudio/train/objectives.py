"""Diffusion training targets from the sampler-side parameterisation (:func:`samplers.wrappers.scalings`).

With x_σ = x₀ + σ·ε and the denoiser D(x_σ) = c_skip·x_σ + c_out·F(c_in·x_σ), the network's target is
F* = (x₀ − c_skip·x_σ) / c_out: ε for ε-prediction and v = (σ·x₀ − ε)/√(σ² + 1)... up to the sign
convention of :func:`scalings` for v-prediction; the same formula the sampler uses to turn F back into a
denoised latent, so training and sampling cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentstudio.core import Prediction
from latentstudio.samplers.wrappers import scalings


@dataclass(frozen=True)
class NoisedBatch:
    """One training batch after noising: UNet input ``x_in [B,C,H,W]`` and timesteps ``t [B]``, the target
    ``[B,C,H,W]`` and per-sample loss weights ``[B]``."""

    x_in: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor


def noise_batch(
    latents: torch.Tensor,
    model_sigmas: torch.Tensor,
    prediction: Prediction,
    generator: torch.Generator,
    *,
    min_snr_gamma: float = 0.0,
    noise_offset: float = 0.0,
) -> NoisedBatch:
    """Noise clean ``latents [B,C,H,W]`` at uniformly drawn training timesteps of ``model_sigmas [T]``.

    ``min_snr_gamma`` > 0: Min-SNR-γ weighting (Hang et al. 2023), w = min(SNR, γ)/SNR for ε and
    min(SNR, γ)/(SNR + 1) for v, SNR = 1/σ². ``noise_offset``: adds a per-channel constant to ε
    (Guttenberg 2023). All randomness comes from ``generator`` (CPU), so a step is reproducible.
    """
    b, c = latents.shape[:2]
    t = torch.randint(0, model_sigmas.shape[0], (b,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((b, c, 1, 1), generator=generator)
    sigma = model_sigmas[t].float()
    noise, sigma, t = noise.to(latents.device), sigma.to(latents.device), t.to(latents.device)
    c_skip, c_out, c_in = (s[:, None, None, None] for s in scalings(sigma, prediction))
    x_sigma = latents + noise * sigma[:, None, None, None]
    target = (latents - c_skip * x_sigma) / c_out
    weight = torch.ones_like(sigma)
    if min_snr_gamma > 0:
        snr = 1.0 / sigma**2
        clipped = snr.clamp(max=min_snr_gamma)
        weight = clipped / (snr + 1.0) if prediction is Prediction.V else clipped / snr
    return NoisedBatch(x_sigma * c_in, t, target, weight)


def weighted_mse(prediction: torch.Tensor, batch: NoisedBatch) -> torch.Tensor:
    """Mean over the batch of ``weight × mean-squared error`` (a scalar)."""
    per_sample = (prediction.float() - batch.target.float()).square().mean(dim=(1, 2, 3))
    return (per_sample * batch.weight).mean()
