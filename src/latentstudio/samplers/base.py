"""The contracts every sampler shares (k-diffusion's calling convention) and the few helpers they all use.

A sampler is a pure function ``fn(model, x, sigmas, *, noise_sampler=None, callback=None, **options) -> x0``:

* ``model(x, sigma) -> denoised``: x ``[B, ...]`` in k-diffusion's variance-exploding scaling
  (x = x0 + σ·ε), sigma ``[B]``; returns D(x, σ), the estimate of x0, shaped like x.
* ``x``: the starting latent, already scaled to ``sigmas[0]`` (txt2img: ``noise · sigmas[0]``).
* ``sigmas``: 1-D, decreasing, usually ending in 0; ``len(sigmas) - 1`` steps are taken.
* ``noise_sampler(sigma, sigma_next) -> ε``: supplies *all* stochastic noise (unit Gaussian, shaped like x;
  the arguments are 0-dim tensors). Samplers never draw random numbers themselves, so a job's seeds decide
  everything. A sampler that would add noise with its options raises ``ValueError`` when it is missing.
* ``callback(StepInfo)``: called once per step before the update, as k-diffusion does.

Samplers hold no state between calls and touch no globals: two jobs may sample at the same time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]
NoiseSampler = Callable[[Tensor, Tensor], Tensor]


class StepInfo(TypedDict):
    """What a sampler reports per step: the current ``x``, the step index ``i``, the step's σ (and σ̂ after
    churn, otherwise equal) as 0-dim tensors, and the model's ``denoised`` estimate at ``x``."""

    x: Tensor
    i: int
    sigma: Tensor
    sigma_hat: Tensor
    denoised: Tensor


Callback = Callable[[StepInfo], None]


def denoise(model: Denoiser, x: Tensor, sigma: Tensor) -> Tensor:
    """Call ``model`` at the 0-dim noise level ``sigma`` for the whole batch (sigma broadcast to ``[B]``)."""
    return model(x, sigma * x.new_ones([x.shape[0]]))


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The Karras ODE derivative dx/dσ = (x − D(x, σ)) / σ (σ a 0-dim tensor)."""
    return (x - denoised) / sigma


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """``(σ_down, σ_up)`` of an ancestral step from σ to σ_next (k-diffusion ``get_ancestral_step``).

    σ_up = min(σ_next, η·√(σ_next²·(σ² − σ_next²)/σ²)), σ_down = √(σ_next² − σ_up²).
    """
    if not eta:
        return sigma_next, torch.zeros_like(sigma_next)
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    return (sigma_next**2 - sigma_up**2) ** 0.5, sigma_up


def _no_noise(sigma: Tensor, sigma_next: Tensor) -> Tensor:
    raise RuntimeError("internal error: a sampler drew noise although its options make it deterministic")


def noise_source(noise_sampler: NoiseSampler | None, *, needed: bool, sampler: str) -> NoiseSampler:
    """The noise sampler to use: the caller's, or (when the options need none) one that must never be called.

    Raises ``ValueError`` naming the sampler when noise is needed and none was given.
    """
    if noise_sampler is not None:
        return noise_sampler
    if needed:
        raise ValueError(
            f"sampler {sampler!r} adds noise with these options: pass noise_sampler=(sigma, sigma_next) -> "
            "unit Gaussian noise shaped like x (e.g. latentstudio.samplers.noise.ImageRNG.noise_sampler)"
        )
    return _no_noise


def report(
    callback: Callback | None,
    x: Tensor,
    i: int,
    sigma: Tensor,
    denoised: Tensor,
    *,
    sigma_hat: Tensor | None = None,
) -> None:
    """Send one step's :class:`StepInfo` to ``callback`` when there is one."""
    if callback is not None:
        hat = sigma if sigma_hat is None else sigma_hat
        callback(StepInfo(x=x, i=i, sigma=sigma, sigma_hat=hat, denoised=denoised))


def churn(
    x: Tensor,
    sigmas: Tensor,
    i: int,
    noise: NoiseSampler,
    *,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
) -> tuple[Tensor, Tensor]:
    """Karras et al. (2022) Algorithm 2 "churn": raise σ_i to σ̂ = σ_i·(1 + γ) by adding fresh noise.

    γ = min(s_churn / steps, √2 − 1) inside [s_tmin, s_tmax], else 0. Like A1111 (whose k-diffusion draws
    ``randn_like`` every step), one noise draw is taken per step whenever ``s_churn > 0``, even where γ = 0,
    so the noise stream lines up with A1111's. Returns ``(x, sigma_hat)``.
    """
    sigma = sigmas[i]
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if s_churn > 0:
        eps = noise(sigma, sigma_hat) * s_noise
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat
