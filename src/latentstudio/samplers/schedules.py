"""Noise schedules (A1111 ``modules/sd_schedulers.py``, k-diffusion) and the model's discrete σ ↔ t mapping.

Every schedule is ``fn(n, sigma_min, sigma_max, *, model_sigmas=None, **options) -> sigmas``: a 1-D float32
CPU tensor, decreasing, normally n + 1 values ending in 0 (KL Optimal ends at σ_min, DDIM may give a different
count; both as in A1111). Values are computed in float64. ``model_sigmas`` is the model's σ for each training
timestep, ascending, shape ``[1000]`` (:func:`model_sigmas_from_alphas`); schedules built on the model's
timesteps need it and raise ``ValueError`` without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from latentstudio.samplers._beta import beta_ppf

Schedule = Callable[..., Tensor]


def scaled_linear_alphas_cumprod(
    beta_start: float = 0.00085, beta_end: float = 0.012, num_timesteps: int = 1000
) -> Tensor:
    """ᾱ of SD's "scaled linear" betas ``linspace(√β_start, √β_end, T)²``: float64, ``[T]``, descending."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def model_sigmas_from_alphas(alphas_cumprod: Tensor) -> Tensor:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t) per training timestep: ``[T]`` ᾱ (descending) → ``[T]`` σ (ascending).

    Same dtype as the input.
    """
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def sigma_to_t(sigma: Tensor, model_sigmas: Tensor, *, quantize: bool = False) -> Tensor:
    """Continuous timestep of noise level(s) ``sigma`` (any shape, e.g. ``[B]``) by linear interpolation in
    log σ between the model's ``[T]`` ascending sigmas (k-diffusion ``DiscreteSchedule.sigma_to_t``).

    Returns t in [0, T − 1], shaped like ``sigma``, in the promoted float dtype of the two; ``quantize``
    rounds to the nearest training timestep (in log σ) instead.
    """
    log_sigmas = model_sigmas.to(sigma.device).log()
    log_sigma = sigma.log().reshape(-1)
    dists = log_sigma - log_sigmas[:, None]  # [T, N]
    if quantize:
        return dists.abs().argmin(dim=0).reshape(sigma.shape).to(dists.dtype)
    low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = ((low - log_sigma) / (low - high)).clamp(0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(sigma.shape)


def t_to_sigma(t: Tensor, model_sigmas: Tensor) -> Tensor:
    """Noise level(s) at continuous timestep(s) ``t`` (any shape, in [0, T − 1]) by linear interpolation in
    log σ between the model's ``[T]`` ascending sigmas (k-diffusion ``DiscreteSchedule.t_to_sigma``).

    Returns σ shaped like ``t``, in ``model_sigmas``' dtype.
    """
    log_sigmas = model_sigmas.to(t.device).log()
    t = t.to(log_sigmas.dtype)
    low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]).exp()


def _finish(values: Tensor | list[float] | np.ndarray, *, zero: bool = True) -> Tensor:
    sigmas = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(torch.float32)


def _check(n: int, sigma_min: float, sigma_max: float) -> None:
    if n < 1:
        raise ValueError(f"n (number of sigmas before the final 0) must be >= 1, got {n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _need(model_sigmas: Tensor | None, label: str) -> Tensor:
    if model_sigmas is None:
        raise ValueError(
            f"the {label!r} schedule is built on the model's timesteps: pass model_sigmas ([1000])"
        )
    if model_sigmas.ndim != 1 or len(model_sigmas) < 2:
        raise ValueError(
            f"model_sigmas must be 1-D with at least 2 values, got shape {tuple(model_sigmas.shape)}"
        )
    return model_sigmas.detach().cpu().to(torch.float64)


def uniform(n: int, sigma_min: float, sigma_max: float, *, model_sigmas: Tensor | None = None) -> Tensor:
    """The model's own discrete schedule: t = linspace(T − 1, 0, n) (k-diffusion ``get_sigmas``).

    The σ range is not used (A1111 likewise).
    """
    _check(n, sigma_min, sigma_max)
    ms = _need(model_sigmas, "Uniform")
    return _finish(t_to_sigma(torch.linspace(len(ms) - 1, 0, n, dtype=torch.float64), ms))


def karras(
    n: int, sigma_min: float, sigma_max: float, *, model_sigmas: Tensor | None = None, rho: float = 7.0
) -> Tensor:
    """Karras et al. (2022) eq. 5: σ_i = (σ_max^(1/ρ) + i/(n − 1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ."""
    _check(n, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _finish((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float, *, model_sigmas: Tensor | None = None) -> Tensor:
    """Evenly spaced in log σ from σ_max to σ_min."""
    _check(n, sigma_min, sigma_max)
    return _finish(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


def polyexponential(
    n: int, sigma_min: float, sigma_max: float, *, model_sigmas: Tensor | None = None, rho: float = 1.0
) -> Tensor:
    """log σ polynomial in the step: exp(linspace(1, 0, n)^ρ · (ln σ_max − ln σ_min) + ln σ_min)."""
    _check(n, sigma_min, sigma_max)
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    return _finish((ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)).exp())


def _t_range(ms: Tensor, sigma_min: float, sigma_max: float) -> tuple[float, float]:
    both = sigma_to_t(torch.tensor([sigma_max, sigma_min], dtype=torch.float64), ms)
    return float(both[0]), float(both[1])


def sgm_uniform(n: int, sigma_min: float, sigma_max: float, *, model_sigmas: Tensor | None = None) -> Tensor:
    """Evenly spaced timesteps from t(σ_max) to t(σ_min), excluding the last (SGM / SDXL "trailing")."""
    _check(n, sigma_min, sigma_max)
    ms = _need(model_sigmas, "SGM Uniform")
    start, end = _t_range(ms, sigma_min, sigma_max)
    return _finish(t_to_sigma(torch.linspace(start, end, n + 1, dtype=torch.float64)[:-1], ms))


def normal(n: int, sigma_min: float, sigma_max: float, *, model_sigmas: Tensor | None = None) -> Tensor:
    """Evenly spaced timesteps from t(σ_max) to t(σ_min), both included (ComfyUI/A1111 "normal")."""
    _check(n, sigma_min, sigma_max)
    ms = _need(model_sigmas, "Normal")
    start, end = _t_range(ms, sigma_min, sigma_max)
    return _finish(t_to_sigma(torch.linspace(start, end, n, dtype=torch.float64), ms))


def simple(n: int, sigma_min: float, sigma_max: float, *, model_sigmas: Tensor | None = None) -> Tensor:
    """Every (T/n)-th training sigma from the top: σ at indices −(1 + int(i·T/n)) (ComfyUI "simple")."""
    _check(n, sigma_min, sigma_max)
    ms = _need(model_sigmas, "Simple")
    step = len(ms) / n
    return _finish([float(ms[-(1 + int(i * step))]) for i in range(n)])


def ddim(n: int, sigma_min: float, sigma_max: float, *, model_sigmas: Tensor | None = None) -> Tensor:
    """DDIM's uniform timesteps 1, 1 + T//n, … reversed: ⌈(T − 1)/(T//n)⌉ sigmas (may differ from n)."""
    _check(n, sigma_min, sigma_max)
    ms = _need(model_sigmas, "DDIM")
    return _finish(ms[1 :: max(len(ms) // n, 1)].flip(0))


def kl_optimal(n: int, sigma_min: float, sigma_max: float, *, model_sigmas: Tensor | None = None) -> Tensor:
    """KL-optimal steps (Sabour et al. 2024): tan((1 − i/n)·atan σ_max + i/n·atan σ_min), i = 0…n.

    As in A1111, there is no final 0: the schedule ends at σ_min.
    """
    _check(n, sigma_min, sigma_max)
    frac = torch.arange(n + 1, dtype=torch.float64) / n
    return _finish((frac * math.atan(sigma_min) + (1 - frac) * math.atan(sigma_max)).tan(), zero=False)


AYS_SD1 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def align_your_steps(
    n: int, sigma_min: float, sigma_max: float, *, model_sigmas: Tensor | None = None, sdxl: bool = False
) -> Tensor:
    """NVIDIA's Align Your Steps 10-step lists (SD1.5 or SDXL), log-linearly resampled to n.

    The σ range is not used (A1111 likewise).
    """
    _check(n, sigma_min, sigma_max)
    table = AYS_SDXL if sdxl else AYS_SD1
    if n == len(table):
        return _finish(list(table))
    log_rev = np.log(np.array(table[::-1]))
    resampled = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(table)), log_rev)
    return _finish(np.exp(resampled)[::-1].copy())


def beta(
    n: int,
    sigma_min: float,
    sigma_max: float,
    *,
    model_sigmas: Tensor | None = None,
    alpha: float = 0.6,
    beta: float = 0.6,
) -> Tensor:
    """Beta-distributed steps (Lee et al. 2024, arXiv:2407.12173): σ_min + ppf(1 − i/(n−1))·(σ_max−σ_min)."""
    _check(n, sigma_min, sigma_max)
    quantiles = np.linspace(0, 1, n)
    return _finish(
        [sigma_min + beta_ppf(float(1 - q), alpha, beta) * (sigma_max - sigma_min) for q in quantiles]
    )
