"""Second-order single-step samplers in σ: Heun (Karras et al. 2022) and DPM-Solver-2 style midpoint steps."""

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
def sample_heun(
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
    """Heun steps (Euler on the last step), Karras et al. (2022) Algorithm 2 (k-diffusion ``sample_heun``)."""
    noise = noise_source(noise_sampler, needed=s_churn > 0, sampler="Heun")
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(
            x, sigmas, i, noise, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise
        )
        denoised = denoise(model, x, sigma_hat)
        report(callback, x, i, sigmas[i], denoised, sigma_hat=sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], denoise(model, x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
    return x


def _midpoint_step(model: Denoiser, x: Tensor, d: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """One DPM-Solver-2 step from σ to σ_next > 0: Euler to the log-midpoint, its slope over the full step."""
    sigma_mid = sigma.log().lerp(sigma_next.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, denoise(model, x_2, sigma_mid))
    return x + d_2 * (sigma_next - sigma)


@torch.no_grad()
def sample_dpm_2(
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
    """DPM-Solver-2 (Lu et al. 2022) steps in σ with Karras churn (k-diffusion ``sample_dpm_2``)."""
    noise = noise_source(noise_sampler, needed=s_churn > 0, sampler="DPM2")
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(
            x, sigmas, i, noise, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise
        )
        denoised = denoise(model, x, sigma_hat)
        report(callback, x, i, sigmas[i], denoised, sigma_hat=sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            x = _midpoint_step(model, x, d, sigma_hat, sigmas[i + 1])
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral sampling with DPM-Solver-2 steps (Lu et al. 2022; k-diffusion ``sample_dpm_2_ancestral``)."""
    noise = noise_source(noise_sampler, needed=eta != 0, sampler="DPM2 a")
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            x = _midpoint_step(model, x, d, sigmas[i], sigma_down)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x
