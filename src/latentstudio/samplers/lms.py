"""Linear multistep (variable-step Adams–Bashforth) on the Karras ODE in σ (k-diffusion ``sample_lms``)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from numpy.polynomial import Polynomial
from torch import Tensor

from latentstudio.samplers.base import Callback, Denoiser, NoiseSampler, denoise, report, to_d


def lms_coefficient(order: int, sigmas: npt.NDArray[np.float64], i: int, j: int) -> float:
    """∫ over [σ_i, σ_{i+1}] of the Lagrange basis polynomial of node σ_{i−j} on nodes σ_i … σ_{i−order+1}.

    k-diffusion integrates this numerically (``scipy.integrate.quad``); the integrand is a polynomial, so
    it is integrated exactly here.
    """
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")
    nodes = [float(sigmas[i - k]) for k in range(order) if k != j]
    basis = Polynomial.fromroots(nodes) if nodes else Polynomial([1.0])
    basis = basis / float(np.prod([sigmas[i - j] - node for node in nodes]))
    integral = basis.integ()
    return float(integral(sigmas[i + 1]) - integral(sigmas[i]))


@torch.no_grad()
def sample_lms(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    order: int = 4,
) -> Tensor:
    """Linear multistep method of order ``order`` on dx/dσ (Karras et al. 2022; k-diffusion)."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    nodes = sigmas.detach().cpu().double().numpy()
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i])
        ds = [*ds, to_d(x, sigmas[i], denoised)][-order:]
        report(callback, x, i, sigmas[i], denoised)
        cur_order = min(i + 1, order)
        coeffs = [lms_coefficient(cur_order, nodes, i, j) for j in range(cur_order)]
        x = x + sum((c * d for c, d in zip(coeffs, reversed(ds), strict=True)), torch.zeros_like(x))
    return x
