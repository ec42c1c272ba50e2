"""UniPC (Zhao et al. 2023, arXiv:2302.04867): multistep data-prediction predictor–corrector, σ form.

A port of the ``multistep`` / ``bh`` path of A1111's ``uni_pc`` (A1111 defaults: variant bh1, order 3,
lower_order_final, corrector on every step but the last) to the common sampler signature. With λ = −log σ
and h = λ_t − λ_s, the first-order update in k-diffusion's scaling is x_t = (σ_t/σ_s)·x_s − expm1(−h)·D_s;
the higher-order terms use the B(h) coefficients of the paper. A1111 takes its own time-uniform timesteps
ending at t = 1/1000 (σ_min) and decodes that latent; here the schedule comes from ``sigmas``, and when it
ends in 0, UniPC runs to the last non-zero σ and the final "step" is one model call there, returning
D(x, σ_min) (UniPC's ``denoise_to_zero``). ComfyUI and diffusers instead take a first-order step to ~0
from the uncorrected point, which returns D at the *predicted* x and so discards the last correction.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from latentstudio.samplers.base import Callback, Denoiser, NoiseSampler, denoise, report

Variant = Literal["bh1", "bh2"]


def unipc_coefficients(
    rks: list[float], h: float, order: int, variant: Variant
) -> tuple[float, list[float], list[float]]:
    """``(B(h), ρ_predictor, ρ_corrector)`` of a UniPC-``order`` step of size h (rks: λ ratios, last 1)."""
    hh = -h  # data prediction
    h_phi_k = math.expm1(hh) / hh - 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    factorial = 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    matrix, rhs = np.array(rows), np.array(b)
    rhos_p = [0.5] if order == 2 else list(np.linalg.solve(matrix[:-1, :-1], rhs[:-1])) if order > 2 else []
    rhos_c = [0.5] if order == 1 else list(np.linalg.solve(matrix, rhs))
    return b_h, [float(r) for r in rhos_p], [float(r) for r in rhos_c]


def _weighted(weights: list[float], tensors: list[Tensor], like: Tensor) -> Tensor:
    return sum((w * t for w, t in zip(weights, tensors, strict=True)), torch.zeros_like(like))


def _update(
    model: Denoiser,
    x: Tensor,
    history: list[tuple[Tensor, float]],
    sigma_t: Tensor,
    order: int,
    *,
    corrector: bool,
    variant: Variant,
) -> tuple[Tensor, Tensor | None]:
    """One UniPC step from the newest point of ``history`` ((D, σ) pairs, oldest first) to σ_t.

    Returns the new x and, when the corrector ran, the model's D at the predicted point (else None).
    """
    m0, sigma_s = history[-1]
    lambda_s = -math.log(sigma_s)
    h = -math.log(float(sigma_t)) - lambda_s
    rks = [(-math.log(history[-(k + 1)][1]) - lambda_s) / h for k in range(1, order)] + [1.0]
    d1s = [(history[-(k + 1)][0] - m0) / rks[k - 1] for k in range(1, order)]
    b_h, rhos_p, rhos_c = unipc_coefficients(rks, h, order, variant)
    x_t_ = x * (float(sigma_t) / sigma_s) - math.expm1(-h) * m0
    x_t = x_t_ - b_h * _weighted(rhos_p, d1s, x) if d1s else x_t_
    if not corrector:
        return x_t, None
    model_t = denoise(model, x_t, sigma_t)
    correction = _weighted(rhos_c[:-1], d1s, x) + rhos_c[-1] * (model_t - m0)
    return x_t_ - b_h * correction, model_t


def _multistep(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    callback: Callback | None,
    *,
    order: int,
    variant: Variant,
    lower_order_final: bool,
) -> Tensor:
    """UniPC over non-zero ``sigmas`` as A1111 runs it: the corrector on every step but the last."""
    steps = len(sigmas) - 1
    if steps < 1:
        return x
    history = [(denoise(model, x, sigmas[0]), float(sigmas[0]))]
    for k in range(1, steps + 1):
        report(callback, x, k - 1, sigmas[k - 1], history[-1][0])
        step_order = min(order, k, steps + 1 - k) if lower_order_final else min(order, k)
        x, model_t = _update(model, x, history, sigmas[k], step_order, corrector=k < steps, variant=variant)
        if model_t is not None:
            history = [*history, (model_t, float(sigmas[k]))][-order:]
    return x


@torch.no_grad()
def sample_unipc(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    order: int = 3,
    variant: Variant = "bh1",
    lower_order_final: bool = True,
) -> Tensor:
    """UniPC multistep predictor–corrector with data prediction (Zhao et al. 2023, Algorithms 2 and 3)."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    to_zero = len(sigmas) >= 2 and bool(sigmas[-1] == 0)
    x = _multistep(
        model,
        x,
        sigmas[:-1] if to_zero else sigmas,
        callback,
        order=order,
        variant=variant,
        lower_order_final=lower_order_final,
    )
    if not to_zero:
        return x
    denoised = denoise(model, x, sigmas[-2])
    report(callback, x, len(sigmas) - 2, sigmas[-2], denoised)
    return denoised
