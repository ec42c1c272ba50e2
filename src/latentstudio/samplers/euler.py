"""First-order samplers: Euler (Karras et al. 2022, Algorithm 2 with Euler steps) and Euler ancestral."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from latentstudio.samplers.base import (
    Callback,
    Denoiser,
    NoiseSampler,
    ancestral_step,
    churn,
    denoise,
    noise_source,
    report,
    to_d,
)


@torch.no_grad()
def sample_euler(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """Euler steps on the probability-flow ODE, Karras et al. (2022) Algorithm 2 (k-diffusion)."""
    noise = noise_source(noise_sampler, needed=s_churn > 0, sampler="Euler")
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(
            x, sigmas, i, noise, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise
        )
        denoised = denoise(model, x, sigma_hat)
        report(callback, x, i, sigmas[i], denoised, sigma_hat=sigma_hat)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral sampling with Euler steps (Ho et al. 2020 ancestral noise; k-diffusion)."""
    noise = noise_source(noise_sampler, needed=eta != 0, sampler="Euler a")
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if eta and sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x
