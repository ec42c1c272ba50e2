"""DPM-Solver++ samplers (Lu et al. 2022, arXiv:2211.01095) in k-diffusion's σ form, with t = −log σ.

Data-prediction exponential integrators: one step from σ to σ' is x' = (σ'/σ)·x − expm1(−h)·D with
h = log σ − log σ'; the multistep and SDE variants add history corrections and (scaled) fresh noise.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from latentstudio.samplers.base import (
    Callback,
    Denoiser,
    NoiseSampler,
    ancestral_step,
    denoise,
    noise_source,
    report,
    to_d,
)


def _t(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral sampling with DPM-Solver++(2S) single-step second-order steps (Lu et al. 2022)."""
    noise = noise_source(noise_sampler, needed=eta != 0, sampler="DPM++ 2S a")
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = denoise(model, x_2, _sigma(s))
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if eta and sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _sde_substep(
    x: Tensor, denoised: Tensor, t: Tensor, sigma_to: Tensor, eta: float
) -> tuple[Tensor, Tensor]:
    """Deterministic part of a DPM++ SDE sub-step from σ = e^−t towards ``sigma_to``; returns (x, σ_up)."""
    sigma_down, sigma_up = ancestral_step(_sigma(t), sigma_to, eta)
    t_down = _t(sigma_down)
    return (_sigma(t_down) / _sigma(t)) * x - (t - t_down).expm1() * denoised, sigma_up


@torch.no_grad()
def sample_dpmpp_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> Tensor:
    """DPM-Solver++ stochastic second-order single-step sampler, midpoint at ratio ``r`` (Lu et al. 2022)."""
    noise = noise_source(noise_sampler, needed=eta != 0, sampler="DPM++ SDE")
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i])
        report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        s = t + (t_next - t) * r
        fac = 1 / (2 * r)
        x_2, sigma_up = _sde_substep(x, denoised, t, _sigma(s), eta)
        if eta:
            x_2 = x_2 + noise(_sigma(t), _sigma(s)) * s_noise * sigma_up
        denoised_2 = denoise(model, x_2, _sigma(s))
        x, sigma_up = _sde_substep(x, (1 - fac) * denoised + fac * denoised_2, t, _sigma(t_next), eta)
        if eta:
            x = x + noise(_sigma(t), _sigma(t_next)) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M): second-order multistep data-prediction solver (Lu et al. 2022)."""
    old_denoised: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i])
        report(callback, x, i, sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        denoised_d = denoised
        if old_denoised is not None and sigmas[i + 1] != 0:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: Literal["midpoint", "heun"] = "midpoint",
) -> Tensor:
    """DPM-Solver++(2M) SDE: second-order multistep solver of the diffusion SDE (Lu et al. 2022)."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    noise = noise_source(noise_sampler, needed=eta != 0, sampler="DPM++ 2M SDE")
    old_denoised: Tensor | None = None
    h_last: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i])
        report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x, h = denoised, h_last
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            eta_h = eta * h
            phi = (-h - eta_h).expm1().neg()
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + phi * denoised
            if old_denoised is not None and h_last is not None:
                diff = (h / h_last) * (denoised - old_denoised)
                x = x + (phi / (-h - eta_h) + 1 if solver_type == "heun" else 0.5 * phi) * diff
            if eta:
                x = (
                    x
                    + noise(sigmas[i], sigmas[i + 1])
                    * sigmas[i + 1]
                    * (-2 * eta_h).expm1().neg().sqrt()
                    * s_noise
                )
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2M) SDE with the Heun-type history correction (A1111 "DPM++ 2M SDE Heun")."""
    return sample_dpmpp_2m_sde(
        model,
        x,
        sigmas,
        noise_sampler=noise_sampler,
        callback=callback,
        eta=eta,
        s_noise=s_noise,
        solver_type="heun",
    )


def _3m_correction(
    denoised: Tensor, history: list[tuple[Tensor, Tensor]], h: Tensor, h_eta: Tensor
) -> Tensor | None:
    """DPM++ 3M SDE's second/third-order term from up to two earlier (denoised, h) pairs, newest first."""
    phi_2 = h_eta.neg().expm1() / h_eta + 1
    if len(history) >= 2:
        (denoised_1, h_1), (denoised_2, h_2) = history[0], history[1]
        r0, r1 = h_1 / h, h_2 / h
        d1_0 = (denoised - denoised_1) / r0
        d1_1 = (denoised_1 - denoised_2) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        return phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
    if history:
        denoised_1, h_1 = history[0]
        return phi_2 * (denoised - denoised_1) / (h_1 / h)
    return None


@torch.no_grad()
def sample_dpmpp_3m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep solver of the diffusion SDE (Lu et al. 2022)."""
    noise = noise_source(noise_sampler, needed=eta != 0, sampler="DPM++ 3M SDE")
    history: list[tuple[Tensor, Tensor]] = []  # (denoised, h) of earlier steps, newest first
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i])
        report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            break
        h = _t(sigmas[i + 1]) - _t(sigmas[i])
        h_eta = h * (eta + 1)
        x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
        correction = _3m_correction(denoised, history, h, h_eta)
        if correction is not None:
            x = x + correction
        if eta:
            x = (
                x
                + noise(sigmas[i], sigmas[i + 1])
                * sigmas[i + 1]
                * (-2 * h * eta).expm1().neg().sqrt()
                * s_noise
            )
        history = [(denoised, h), *history[:1]]
    return x
