"""Restart sampling (Xu et al. 2023, arXiv:2306.14878) as A1111's ``restart_sampler`` runs it."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from torch import Tensor

from latentstudio.samplers.base import Callback, Denoiser, NoiseSampler, denoise, noise_source, report, to_d
from latentstudio.samplers.schedules import karras

RestartList = Mapping[float, tuple[int, int, float]]
"""``{σ_restart_min: (restart_steps, restart_times, σ_restart_max)}`` (A1111's ``restart_list`` format)."""


def _karras(n: int, sigma_min: Tensor, sigma_max: Tensor, like: Tensor) -> Tensor:
    return karras(n, float(sigma_min), float(sigma_max)).to(like)


def restart_plan(sigmas: Tensor, restart_list: RestartList | None = None) -> list[tuple[Tensor, Tensor]]:
    """The (σ_from, σ_to) Heun steps Restart takes; a step starting above the previous σ_to is a restart.

    Without ``restart_list`` and with ≥ 20 steps, A1111 replaces the schedule by Karras over fewer steps and
    restarts once from σ ≈ 0.1 up to σ ≈ 2 with 9 steps (≥ 36 steps: twice, with steps // 4 steps each).
    """
    steps = len(sigmas) - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
            sigmas = _karras(steps - restart_steps * restart_times, sigmas[-2], sigmas[0], sigmas)
            restart_list = {0.1: (restart_steps + 1, restart_times, 2.0)}
    at_index = {int(torch.argmin((sigmas - key).abs())): value for key, value in restart_list.items()}
    plan: list[tuple[Tensor, Tensor]] = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 not in at_index:
            continue
        restart_steps, restart_times, restart_max = at_index[i + 1]
        max_idx = int(torch.argmin((sigmas - restart_max).abs()))
        if max_idx < i + 1:
            # Karras from σ_max down to σ_min, its ends pinned to the schedule's own values: recomputed ends
            # can round below σ_min, and A1111 then adds a spurious √(σ² − σ'²)-sized noise jump.
            inner = _karras(restart_steps, sigmas[i + 1], sigmas[max_idx], sigmas)[1:-2]
            sigma_restart = torch.cat([sigmas[max_idx : max_idx + 1], inner, sigmas[i + 1 : i + 2]])
            plan.extend(list(itertools.pairwise(sigma_restart)) * restart_times)
    return plan


@torch.no_grad()
def sample_restart(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    s_noise: float = 1.0,
    restart_list: RestartList | None = None,
) -> Tensor:
    """Restart sampling: Heun ODE steps with noisy jumps back up the schedule (Xu et al. 2023)."""
    plan = restart_plan(sigmas, restart_list)
    restarts = any(plan[k + 1][0] > plan[k][1] for k in range(len(plan) - 1))
    noise = noise_source(noise_sampler, needed=restarts, sampler="Restart")
    last_sigma: Tensor | None = None
    for step, (sigma, sigma_next) in enumerate(plan):
        if last_sigma is not None and last_sigma < sigma:
            x = x + noise(last_sigma, sigma) * s_noise * (sigma**2 - last_sigma**2) ** 0.5
        denoised = denoise(model, x, sigma)
        report(callback, x, step, sigma, denoised)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, denoise(model, x_2, sigma_next))
            x = x + (d + d_2) / 2 * dt
        last_sigma = sigma_next
    return x
