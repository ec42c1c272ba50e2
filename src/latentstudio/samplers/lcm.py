"""Latent Consistency Model sampling (Luo et al. 2023, arXiv:2310.04378) as A1111's ``sample_lcm``."""

from __future__ import annotations

import torch
from torch import Tensor

from latentstudio.samplers.base import Callback, Denoiser, NoiseSampler, denoise, noise_source, report


@torch.no_grad()
def sample_lcm(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Multistep consistency sampling: jump to the model's x0, re-noise to the next σ (Luo et al. 2023)."""
    noise = noise_source(noise_sampler, needed=bool((sigmas[1:] > 0).any()), sampler="LCM")
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i])
        report(callback, x, i, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise(sigmas[i], sigmas[i + 1])
    return x
