"""Random-weight upscaler state dicts in real file layouts, for tests and benchmarks (never for images).
A test fixture: it lives here, not in the package (``bench/upscale.py`` imports it from the repository root).

The keys are those of Real-ESRGAN's RRDBNet files (BasicSR naming: ``conv_first``, ``body.N.rdbK.convM``,
``conv_body``, ``conv_up1/2``, ``conv_hr``, ``conv_last``), so spandrel's architecture detection sees a
genuine ESRGAN-family model.
"""

from __future__ import annotations

import math

import torch

ESRGAN_GROWTH = 32  # RRDB growth channels: fixed at 32 in every published ESRGAN / Real-ESRGAN model


def _conv(
    out_ch: int, in_ch: int, generator: torch.Generator, gain: float
) -> tuple[torch.Tensor, torch.Tensor]:
    std = gain / math.sqrt(in_ch * 9)
    weight = torch.randn(out_ch, in_ch, 3, 3, generator=generator) * std
    bias = torch.randn(out_ch, generator=generator) * 0.01
    return weight, bias


def random_esrgan_state(
    *, filters: int = 8, blocks: int = 1, scale: int = 4, seed: int = 0
) -> dict[str, torch.Tensor]:
    """An RRDBNet state dict (3→3 channels, ``scale`` ∈ {2, 4, 8}) with seeded random fp32 weights.

    ``filters`` is ESRGAN's ``num_feat`` (64 in real models), ``blocks`` its ``num_block`` (23). Weights
    are scaled so activations stay O(1) through the residual blocks and the output is not saturated.
    """
    if scale not in (2, 4, 8):
        raise ValueError(f"scale must be one of 2, 4, 8, got {scale}")
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def put(name: str, out_ch: int, in_ch: int, gain: float = 1.0) -> None:
        state[f"{name}.weight"], state[f"{name}.bias"] = _conv(out_ch, in_ch, g, gain)

    put("conv_first", filters, 3)
    for b in range(blocks):
        for r in range(1, 4):
            for c in range(1, 5):
                put(f"body.{b}.rdb{r}.conv{c}", ESRGAN_GROWTH, filters + (c - 1) * ESRGAN_GROWTH)
            put(f"body.{b}.rdb{r}.conv5", filters, filters + 4 * ESRGAN_GROWTH)
    put("conv_body", filters, filters)
    for i in range(1, int(math.log2(scale)) + 1):
        put(f"conv_up{i}", filters, filters)
    put("conv_hr", filters, filters)
    put("conv_last", 3, filters, gain=0.5)
    state["conv_last.bias"] = torch.full((3,), 0.5)  # centre the output in [0, 1]
    return state
