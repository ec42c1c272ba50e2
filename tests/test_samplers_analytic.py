"""Samplers on Gaussian data, where everything is known in closed form.

Data x0 ~ N(μ, s²) independently per channel. The exact denoiser is D(x, σ) = (s²·x + σ²·μ)/(s² + σ²), the
probability-flow ODE maps x(σ_max) to x(σ) = μ + (x(σ_max) − μ)·√(s² + σ²)/√(s² + σ_max²), and a correct
sampler started from the exact marginal N(μ, s² + σ_max²) ends at N(μ, s²).
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Any

import pytest
import torch

from latentstudio.samplers import (
    SAMPLER_INFO,
    SAMPLERS,
    model_sigmas_from_alphas,
    scaled_linear_alphas_cumprod,
)
from latentstudio.samplers.registry import sigmas_for
from latentstudio.samplers.schedules import karras
from tests.test_samplers_reference import HashNoise, hash_gaussian, toy_denoiser

MU = torch.tensor([-1.0, 0.5, 0.0, 2.0], dtype=torch.float64).reshape(1, 4, 1, 1)
S = torch.tensor([0.5, 1.0, 1.5, 0.3], dtype=torch.float64).reshape(1, 4, 1, 1)
SIGMA_MAX, SIGMA_MIN = 14.6, 0.03
MODEL_SIGMAS = model_sigmas_from_alphas(scaled_linear_alphas_cumprod())


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact D(x, σ) = E[x0 | x] for x0 ~ N(MU, S²) per channel."""
    s2 = sigma.reshape(-1, 1, 1, 1) ** 2
    return (S**2 * x + s2 * MU) / (S**2 + s2)


def ode_solution(x_start: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
    return MU + (x_start - MU) * ((S**2 + sigma_end**2) / (S**2 + sigma_start**2)) ** 0.5


class SeededNoise:
    """Independent standard-normal draws from a seeded generator."""

    def __init__(self, shape: tuple[int, ...], seed: int) -> None:
        self.shape, self.generator = shape, torch.Generator().manual_seed(seed)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.randn(self.shape, generator=self.generator, dtype=torch.float64)


class BrownianNoise(SeededNoise):
    """(W(σ_next) − W(σ))/√|σ_next − σ| of one Brownian path W over σ, sampled lazily through Brownian bridges
    (what k-diffusion's BrownianTreeNoiseSampler provides). DPM++ SDE needs it: its two draws per step must be
    increments of the same path."""

    def __init__(self, shape: tuple[int, ...], seed: int) -> None:
        super().__init__(shape, seed)
        self.ts: list[float] = []
        self.ws: list[torch.Tensor] = []

    def _w(self, t: float) -> torch.Tensor:
        k = bisect.bisect_left(self.ts, t)
        if k < len(self.ts) and self.ts[k] == t:
            return self.ws[k]
        z = torch.randn(self.shape, generator=self.generator, dtype=torch.float64)
        if not self.ts:
            w = z * t**0.5
        elif k == len(self.ts):
            w = self.ws[-1] + z * (t - self.ts[-1]) ** 0.5
        elif k == 0:
            w = self.ws[0] - z * (self.ts[0] - t) ** 0.5
        else:
            (a, b), (wa, wb) = self.ts[k - 1 : k + 1], self.ws[k - 1 : k + 1]
            w = wa + (t - a) / (b - a) * (wb - wa) + z * ((t - a) * (b - t) / (b - a)) ** 0.5
        self.ts.insert(k, t)
        self.ws.insert(k, w)
        return w

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = float(sigma), float(sigma_next)
        return (self._w(t1) - self._w(t0)) / abs(t1 - t0) ** 0.5


# --- deterministic samplers: the exact ODE solution and the order of convergence --------------------------

ODE_CASES: list[tuple[str, dict[str, Any], float]] = [
    ("Euler", {}, 1),
    ("Euler a", {"eta": 0.0}, 1),
    ("DDIM", {}, 1),
    ("Heun", {}, 2),
    ("DPM2", {}, 2),
    ("DPM2 a", {"eta": 0.0}, 2),
    ("DPM++ 2S a", {"eta": 0.0}, 2),
    ("DPM++ SDE", {"eta": 0.0}, 2),
    ("DPM++ 2M", {}, 2),
    ("DPM++ 2M SDE", {"eta": 0.0}, 2),
    ("DPM++ 2M SDE Heun", {"eta": 0.0}, 2),
    ("DPM++ 3M SDE", {"eta": 0.0}, 1.5),  # k-diffusion's 3M with variable steps: observed order ≈ 2 here
    ("PLMS", {}, 2),  # fixed Adams–Bashforth weights on unequal (Karras) steps: second order, not fourth
    ("LMS", {}, 3),
    ("DPM fast", {"eta": 0.0}, 2.5),
    # UniPC-3 (and UniPC-2 with its corrector) is third order, but A1111's lower_order_final makes the last
    # step first order and the global order 2 (observed ≈ 2.7 over this range)
    ("UniPC", {}, 2.3),
    ("UniPC", {"variant": "bh2"}, 2.3),
    ("UniPC", {"order": 2}, 2.3),
]


def _ode_error(name: str, options: dict[str, Any], steps: int, x_start: torch.Tensor) -> float:
    sigmas = karras(steps + 1, SIGMA_MIN, SIGMA_MAX).double()[
        :-1
    ]  # ends at σ_min, where the solution is known
    out = SAMPLERS[name](gaussian_denoiser, x_start, sigmas, **options)
    return float((out - ode_solution(x_start, SIGMA_MAX, SIGMA_MIN)).abs().max())


def _x_start(n: int = 64, seed: int = 0) -> torch.Tensor:
    z = torch.randn((n, 4, 1, 1), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return MU + z * (S**2 + SIGMA_MAX**2) ** 0.5


@pytest.mark.parametrize(("name", "options", "order"), ODE_CASES)
def test_deterministic_sampler_converges_to_the_ode_solution_with_its_order(
    name: str, options: dict[str, Any], order: float
) -> None:
    x_start = _x_start()
    coarse, fine = _ode_error(name, options, 32, x_start), _ode_error(name, options, 128, x_start)
    observed = math.log2(coarse / fine) / 2
    assert observed > order - 0.3, f"observed order {observed:.2f}"
    assert fine < (0.08 if order < 1.5 else 2e-3)


def test_restart_below_twenty_steps_is_heun() -> None:
    x_start = _x_start()
    sigmas = karras(13, SIGMA_MIN, SIGMA_MAX).double()
    heun = SAMPLERS["Heun"](gaussian_denoiser, x_start, sigmas)
    assert torch.equal(SAMPLERS["Restart"](gaussian_denoiser, x_start, sigmas), heun)


def test_dpm_adaptive_meets_its_tolerance() -> None:
    x_start = _x_start()
    sigmas = karras(11, SIGMA_MIN, SIGMA_MAX).double()[:-1]
    exact = ode_solution(x_start, SIGMA_MAX, SIGMA_MIN)
    loose = SAMPLERS["DPM adaptive"](gaussian_denoiser, x_start, sigmas, eta=0.0)
    tight = SAMPLERS["DPM adaptive"](gaussian_denoiser, x_start, sigmas, eta=0.0, rtol=1e-4, atol=1e-5)
    assert float((loose - exact).abs().max()) < 0.3
    assert float((tight - exact).abs().max()) < 1e-3


# --- every sampler: samples follow the data distribution --------------------------------------------------

# (sampler, schedule, steps): enough steps for each to converge; first-order stochastic samplers need many
DISTRIBUTION_CASES = [
    *[
        (name, "Automatic", 30)
        for name in SAMPLER_INFO
        if name not in ("Euler", "DDIM", "Euler a", "DDPM", "LCM", "UniPC")
    ],
    ("Euler", "Karras", 200),
    ("DDIM", "Karras", 200),
    ("Euler a", "Karras", 200),
    ("DDPM", "Karras", 200),
    ("UniPC", "Karras", 20),
    ("UniPC", "Automatic", 150),  # Uniform: the last step from σ ≈ 0.37 to σ_min is first order (as in A1111)
]


@pytest.mark.parametrize(("name", "schedule", "steps"), DISTRIBUTION_CASES)
def test_samples_follow_the_data_distribution(name: str, schedule: str, steps: int) -> None:
    shape = (4096, 4, 1, 1)
    sigmas = sigmas_for(name, schedule, steps, MODEL_SIGMAS).sigmas.double()
    x = (
        MU
        + torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        * (S**2 + sigmas[0] ** 2) ** 0.5
    )
    noise = BrownianNoise(shape, 2) if SAMPLER_INFO[name].brownian_noise else SeededNoise(shape, 2)
    out = SAMPLERS[name](gaussian_denoiser, x, sigmas, noise_sampler=noise)
    mean, std = out.mean(dim=(0, 2, 3)), out.std(dim=(0, 2, 3))
    assert ((mean - MU.flatten()) / S.flatten()).abs().max() < 0.05
    assert (std / S.flatten() - 1).abs().max() < 0.05


def test_lcm_moments_follow_its_recursion() -> None:
    """LCM re-noises the posterior *mean*, so on Gaussian data it is not a sampler of N(μ, s²); its output
    moments follow m' = μ + r(m − μ), v' = r²·v + σ'² with r = s²/(s² + σ²), which the samples must match."""
    shape = (16384, 4, 1, 1)
    sigmas = sigmas_for("LCM", "Karras", 8, MODEL_SIGMAS).sigmas.double()
    x = (
        MU
        + torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        * (S**2 + sigmas[0] ** 2) ** 0.5
    )
    out = SAMPLERS["LCM"](gaussian_denoiser, x, sigmas, noise_sampler=SeededNoise(shape, 4))
    mean, var = MU.flatten().clone(), (S**2).flatten() + float(sigmas[0]) ** 2
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        r = (S**2 / (S**2 + sigma**2)).flatten()
        mean, var = MU.flatten() + r * (mean - MU.flatten()), r**2 * var + sigma_next**2
    assert torch.allclose(out.mean(dim=(0, 2, 3)), mean, atol=0.03)
    assert torch.allclose(out.var(dim=(0, 2, 3)) / var, torch.ones(4, dtype=torch.float64), atol=0.04)
    assert float((out.std(dim=(0, 2, 3)) / S.flatten()).max()) < 0.8  # far from the data: by design


# --- a few steps computed by hand --------------------------------------------------------------------------

M0, S0, X0 = 0.3, 0.7, 2.0  # scalar data mean / std and starting point


def _d(x: float, sigma: float) -> float:
    return (S0**2 * x + sigma**2 * M0) / (S0**2 + sigma**2)


def _scalar_model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s2 = sigma.reshape(-1, 1, 1, 1) ** 2
    return (S0**2 * x + s2 * M0) / (S0**2 + s2)


class FixedNoise:
    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.full((1, 1, 1, 1), self.values.pop(0), dtype=torch.float64)


def _ours(name: str, sigmas: list[float], **options: Any) -> float:
    x = torch.full((1, 1, 1, 1), X0, dtype=torch.float64)
    return float(SAMPLERS[name](_scalar_model, x, torch.tensor(sigmas, dtype=torch.float64), **options))


def test_euler_by_hand() -> None:
    x = X0
    for sigma, sigma_next in ((10.0, 4.0), (4.0, 1.5), (1.5, 0.5)):
        x = x + (x - _d(x, sigma)) / sigma * (sigma_next - sigma)
    assert _ours("Euler", [10.0, 4.0, 1.5, 0.5]) == pytest.approx(x, abs=1e-9)


def test_heun_by_hand() -> None:
    x = X0
    for sigma, sigma_next in ((10.0, 3.0), (3.0, 0.8)):
        d = (x - _d(x, sigma)) / sigma
        x_euler = x + d * (sigma_next - sigma)
        d_next = (x_euler - _d(x_euler, sigma_next)) / sigma_next
        x = x + (d + d_next) / 2 * (sigma_next - sigma)
    x = _d(x, 0.8)  # the last step, to σ = 0, is an Euler step: it lands on the denoised value
    assert _ours("Heun", [10.0, 3.0, 0.8, 0.0]) == pytest.approx(x, abs=1e-9)


def test_dpmpp_2m_by_hand() -> None:
    s0, s1, s2 = 10.0, 4.0, 1.5
    d0 = _d(X0, s0)
    x1 = s1 / s0 * X0 + (1 - s1 / s0) * d0  # first step: DPM-Solver++(1) = DDIM
    d1 = _d(x1, s1)
    r = math.log(s0 / s1) / math.log(s1 / s2)  # h_{i-1} / h_i
    d_combined = (1 + 1 / (2 * r)) * d1 - 1 / (2 * r) * d0
    x2 = s2 / s1 * x1 + (1 - s2 / s1) * d_combined
    x3 = _d(x2, s2)  # to σ = 0: first order, i.e. the denoised value
    assert _ours("DPM++ 2M", [s0, s1, s2, 0.0]) == pytest.approx(x3, abs=1e-9)


def test_euler_ancestral_by_hand() -> None:
    noise, x = [0.37, -1.2], X0
    for k, (sigma, sigma_next) in enumerate(((10.0, 4.0), (4.0, 1.5), (1.5, 0.0))):
        sigma_up = min(sigma_next, math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        x = x + (x - _d(x, sigma)) / sigma * (sigma_down - sigma)
        if sigma_next > 0:
            x += noise[k] * sigma_up
    got = _ours("Euler a", [10.0, 4.0, 1.5, 0.0], noise_sampler=FixedNoise(noise))
    assert got == pytest.approx(x, abs=1e-9)


def test_ddim_by_hand_in_alphas_cumprod() -> None:
    """DDIM eq. 12 of Song et al. on x_vp = √ᾱ·x0 + √(1 − ᾱ)·ε, with ᾱ = 1/(1 + σ²)."""
    eta, noise, x = 0.5, [0.8, -0.4], X0
    for k, (sigma, sigma_next) in enumerate(((10.0, 4.0), (4.0, 1.5), (1.5, 0.0))):
        a, a_prev = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
        eps = (x - _d(x, sigma)) / sigma
        x_vp = x * math.sqrt(a)
        pred_x0 = (x_vp - math.sqrt(1 - a) * eps) / math.sqrt(a)
        sigma_t = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        x_vp = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev - sigma_t**2) * eps
        if sigma_t > 0:
            x_vp += sigma_t * noise[k]
        x = x_vp / math.sqrt(a_prev)
    got = _ours("DDIM", [10.0, 4.0, 1.5, 0.0], eta=eta, noise_sampler=FixedNoise(noise))
    assert got == pytest.approx(x, abs=1e-9)


# --- equivalences -----------------------------------------------------------------------------------------

TOY_SIGMAS = karras(12, 0.0292, 14.6146).double()


def _toy(name: str, **options: Any) -> torch.Tensor:
    return SAMPLERS[name](toy_denoiser, hash_gaussian(0) * TOY_SIGMAS[0], TOY_SIGMAS, **options)


def test_ddim_with_eta_zero_is_euler() -> None:
    assert torch.allclose(_toy("DDIM"), _toy("Euler"), atol=1e-12, rtol=0)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_with_eta_is_euler_ancestral(eta: float) -> None:
    ddim = _toy("DDIM", eta=eta, noise_sampler=HashNoise())
    assert torch.allclose(ddim, _toy("Euler a", eta=eta, noise_sampler=HashNoise()), atol=1e-10, rtol=0)


def test_ddpm_is_euler_ancestral() -> None:
    """The DDPM posterior step in σ-space is exactly k-diffusion's ancestral Euler step with η = 1."""
    assert torch.allclose(_toy("DDPM", noise_sampler=HashNoise()), _toy("Euler a", noise_sampler=HashNoise()))


# --- no shared state: concurrent jobs -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Euler a", "DPM++ 2M SDE", "UniPC", "LMS", "DPM adaptive", "Restart"])
def test_concurrent_sampling_equals_sequential(name: str) -> None:
    sigmas = sigmas_for(name, "Automatic", 24, MODEL_SIGMAS).sigmas.double()
    inputs = [hash_gaussian(k) * sigmas[0] for k in (10, 20)]

    def run(x: torch.Tensor) -> torch.Tensor:
        return SAMPLERS[name](toy_denoiser, x, sigmas, noise_sampler=HashNoise())

    sequential = [run(x) for x in inputs]
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(2)

    def job(k: int) -> None:
        barrier.wait()
        results[k] = run(inputs[k])

    threads = [threading.Thread(target=job, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(results[k], sequential[k]) for k in range(2))
