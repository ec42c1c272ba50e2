"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927) with fixed (DPM fast) and adaptive (DPM adaptive) step sizes.

A port of k-diffusion's ``DPMSolver`` to the common sampler signature. Time is t = −log σ; the solver works on
ε = (x − D)/σ. As A1111 does, σ_max is ``sigmas[0]``, σ_min the last non-zero sigma and, for DPM fast, the
number of model evaluations is ``len(sigmas) - 1``; the schedule between them is the solver's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from latentstudio.samplers.base import Callback, Denoiser, NoiseSampler, ancestral_step, noise_source, report


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


def _t(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _eps(model: Denoiser, cache: dict[str, Tensor], key: str, x: Tensor, t: Tensor) -> Tensor:
    """ε(x, t) = (x − D(x, σ(t)))/σ(t), memoised per step under ``key``."""
    if key not in cache:
        sigma = _sigma(t)
        cache[key] = (x - model(x, sigma * x.new_ones([x.shape[0]]))) / sigma
    return cache[key]


def _step_1(model: Denoiser, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
    """DPM-Solver-1 (DDIM) step."""
    eps = _eps(model, cache, "eps", x, t)
    return x - _sigma(t_next) * (t_next - t).expm1() * eps


def _step_2(
    model: Denoiser, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], *, r1: float = 1 / 2
) -> Tensor:
    """DPM-Solver-2 step with intermediate point at ratio ``r1``."""
    h = t_next - t
    eps = _eps(model, cache, "eps", x, t)
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_r1 = _eps(model, cache, "eps_r1", u1, s1)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)


def _step_3(model: Denoiser, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
    """DPM-Solver-3 step with intermediate points at 1/3 and 2/3."""
    r1, r2 = 1 / 3, 2 / 3
    h = t_next - t
    eps = _eps(model, cache, "eps", x, t)
    s1, s2 = t + r1 * h, t + r2 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_r1 = _eps(model, cache, "eps_r1", u1, s1)
    u2 = (
        x
        - _sigma(s2) * (r2 * h).expm1() * eps
        - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
    )
    eps_r2 = _eps(model, cache, "eps_r2", u2, s2)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def _range(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """(t_start, t_end) = (−log σ_max, −log σ_min) from a schedule, σ_min being its last non-zero sigma."""
    nonzero = sigmas[sigmas > 0]
    if len(sigmas) < 2 or len(nonzero) == 0:
        raise ValueError("DPM fast/adaptive need at least two sigmas with a non-zero sigma_max and sigma_min")
    return _t(sigmas[0]), _t(nonzero[-1])


def _ancestral_target(t: Tensor, t_next: Tensor, t_end: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(t to step to, noise scale σ_up) of an ancestral step from t to t_next, never past t_end."""
    if not eta:
        return t_next, torch.zeros_like(t_next)
    sigma_down, _ = ancestral_step(_sigma(t), _sigma(t_next), eta)
    t_down = torch.minimum(t_end, _t(sigma_down))
    return t_down, (_sigma(t_next) ** 2 - _sigma(t_down) ** 2) ** 0.5


@torch.no_grad()
def sample_dpm_fast(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-fast: fixed log-SNR steps of orders 3, …, 3, 2/1 (Lu et al. 2022, §3.4)."""
    noise = noise_source(noise_sampler, needed=eta != 0, sampler="DPM fast")
    t_start, t_end = _range(sigmas)
    nfe = len(sigmas) - 1
    m = nfe // 3 + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1, dtype=sigmas.dtype, device=sigmas.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    steps = {1: _step_1, 2: _step_2, 3: _step_3}
    for i, order in enumerate(orders):
        cache: dict[str, Tensor] = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, sigma_up = _ancestral_target(t, t_next, t_end, eta)
        eps = _eps(model, cache, "eps", x, t)
        report(callback, x, i, _sigma(t), x - _sigma(t) * eps)
        x = steps[order](model, x, t, t_next_, cache)
        if eta:
            x = x + sigma_up * s_noise * noise(_sigma(t), _sigma(t_next))
    return x


@dataclass
class _PIDController:
    """PID step-size controller of k-diffusion's ``dpm_solver_adaptive`` (local to one call)."""

    h: float
    b1: float
    b2: float
    b3: float
    accept_safety: float
    eps: float = 1e-8
    errs: list[float] = field(default_factory=list)

    @classmethod
    def create(
        cls, h: float, coeffs: tuple[float, float, float], order: float, accept_safety: float
    ) -> _PIDController:
        """A controller from the (p, i, d) coefficients for a method of the given ``order``."""
        p, i, d = coeffs
        return cls(h, (p + i + d) / order, -(p + 2 * d) / order, d / order, accept_safety)

    def propose_step(self, error: float) -> bool:
        """Scale ``h`` by the controller's factor for ``error``; return whether the step is accepted."""
        inv_error = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-12/23 with adaptive step size from embedded error estimates (Lu et al. 2022, §3.4)."""
    if order not in (2, 3):
        raise ValueError(f"order must be 2 or 3, got {order}")
    noise = noise_source(noise_sampler, needed=eta != 0, sampler="DPM adaptive")
    t_end = _range(sigmas)[1]
    s, x_prev, step = _range(sigmas)[0], x, 0
    pid = _PIDController.create(abs(h_init), (pcoeff, icoeff, dcoeff), 1.5 if eta else order, accept_safety)
    while s < t_end - 1e-5:
        cache: dict[str, Tensor] = {}
        t = torch.minimum(t_end, s + pid.h)
        t_, sigma_up = _ancestral_target(s, t, t_end, eta)
        eps = _eps(model, cache, "eps", x, s)
        report(callback, x, step, _sigma(s), x - _sigma(s) * eps)
        if order == 2:
            x_low, x_high = _step_1(model, x, s, t_, cache), _step_2(model, x, s, t_, cache)
        else:
            x_low, x_high = _step_2(model, x, s, t_, cache, r1=1 / 3), _step_3(model, x, s, t_, cache)
        delta = torch.maximum(x.new_tensor(atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(float(error)):
            x_prev = x_low
            x = x_high + sigma_up * s_noise * noise(_sigma(s), _sigma(t)) if eta else x_high
            s = t
        step += 1
    return x
