"""Discrete-time DDPM-family samplers (DDIM, PLMS, DDPM) written in the σ interface.

A1111 runs DDIM and PLMS on the model's timesteps and ᾱ_t; here the same updates run on any σ schedule through
ᾱ = 1/(1 + σ²) and x_vp = x/√(1 + σ²) (so x_vp = √ᾱ·x0 + √(1 − ᾱ)·ε), with 1 − ᾱ written as σ²/(1 + σ²) to
avoid cancellation at small σ. ε is the model's noise estimate (x − D(x, σ))/σ. With the "DDIM" schedule this
reproduces A1111's timesteps, except that A1111 stops at t = 1 while the schedule here ends with a step to
σ = 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentstudio.samplers.base import Callback, Denoiser, NoiseSampler, denoise, noise_source, report, to_d


def _alpha_bar(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(ᾱ, 1 − ᾱ) for noise level σ."""
    return 1 / (1 + sigma**2), sigma**2 / (1 + sigma**2)


@torch.no_grad()
def sample_ddim(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) with stochasticity ``eta`` (A1111 ``eta_ddim``, default 0)."""
    noise = noise_source(noise_sampler, needed=eta != 0 and bool((sigmas[1:] > 0).any()), sampler="DDIM")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(model, x, sigma)
        report(callback, x, i, sigma, denoised)
        eps = to_d(x, sigma, denoised)
        one_minus_a = _alpha_bar(sigma)[1]
        a_prev, one_minus_a_prev = _alpha_bar(sigma_next)
        one_minus_ratio = (sigma**2 - sigma_next**2) / (1 + sigma**2)  # 1 − ᾱ_t/ᾱ_prev
        sigma_t = eta * (one_minus_a_prev / one_minus_a * one_minus_ratio) ** 0.5
        x_vp = a_prev.sqrt() * denoised + (one_minus_a_prev - sigma_t**2).clamp(min=0).sqrt() * eps
        if eta and sigma_t > 0:
            x_vp = x_vp + sigma_t * noise(sigma, sigma_next)
        x = x_vp * (1 + sigma_next**2) ** 0.5
    return x


def _plms_eps(eps: Tensor, old_eps: list[Tensor]) -> Tensor:
    """Adams–Bashforth combination (orders 2–4, equal-step coefficients) of ε and up to 3 earlier ε."""
    if len(old_eps) == 1:
        return (3 * eps - old_eps[-1]) / 2
    if len(old_eps) == 2:
        return (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
    return (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24


@torch.no_grad()
def sample_plms(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Pseudo linear multistep (PNDM, Liu et al. 2022) as LDM's ``PLMSSampler``: improved-Euler first step."""
    old_eps: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(model, x, sigma)
        report(callback, x, i, sigma, denoised)
        eps = to_d(x, sigma, denoised)
        if old_eps:
            eps_prime = _plms_eps(eps, old_eps)
        elif sigma_next == 0:  # a one-step schedule: there is no ε at σ = 0 to average with
            eps_prime = eps
        else:
            x_next = denoised + sigma_next * eps
            eps_prime = (eps + to_d(x_next, sigma_next, denoise(model, x_next, sigma_next))) / 2
        x = (x - sigma * eps_prime) + sigma_next * eps_prime  # DDIM (η = 0) step with ε′: x0′ + σ_next·ε′
        old_eps = [*old_eps, eps][-3:]
    return x


@torch.no_grad()
def sample_ddpm(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral DDPM steps (Ho et al. 2020, Algorithm 2) between arbitrary σ (ComfyUI ``sample_ddpm``)."""
    noise = noise_source(noise_sampler, needed=bool((sigmas[1:] > 0).any()), sampler="DDPM")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(model, x, sigma)
        report(callback, x, i, sigma, denoised)
        eps = to_d(x, sigma, denoised)
        a, one_minus_a = _alpha_bar(sigma)
        one_minus_a_prev = _alpha_bar(sigma_next)[1]
        alpha = a / _alpha_bar(sigma_next)[0]  # α_t = ᾱ_t / ᾱ_prev
        one_minus_alpha = (sigma**2 - sigma_next**2) / (1 + sigma**2)
        x_vp = (x / (1 + sigma**2) ** 0.5 - one_minus_alpha * eps / one_minus_a.sqrt()) / alpha.sqrt()
        if sigma_next > 0:
            x_vp = x_vp + (one_minus_alpha * one_minus_a_prev / one_minus_a).sqrt() * noise(sigma, sigma_next)
            x = x_vp * (1 + sigma_next**2) ** 0.5
        else:
            x = x_vp
    return x
