"""Tiled inference of any spatial model with overlap and linear seam blending.

Used by the upscalers (pixels → ×scale pixels) and by the tiled VAE (latents → ×8 pixels, pixels → ÷8
latents). Memory is bounded by one tile's activations plus the output canvas, whatever the image size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch

TileFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Tiling:
    """Square tiles of ``size`` input pixels whose neighbours share ``overlap`` pixels.

    The overlap is where two tiles are cross-faded linearly; it also gives each tile that much context
    beyond the part of the output it dominates. ``size`` ≥ 8 and ``0 ≤ overlap < size``.
    """

    size: int
    overlap: int

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"tile size must be at least 8 pixels, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise ValueError(f"tile overlap must be in [0, size={self.size}), got {self.overlap}")


def tile_starts(length: int, tiling: Tiling) -> list[int]:
    """Start offsets along one axis: a stride of ``size − overlap``, the last tile flush with the end.

    One tile ``[0]`` when the axis fits in a tile (that tile is then shorter than ``size``).
    """
    if length <= tiling.size:
        return [0]
    stride = tiling.size - tiling.overlap
    starts = list(range(0, length - tiling.size, stride))
    starts.append(length - tiling.size)
    return starts


def _ramp(length: int, ramp: int, *, rise: bool, fall: bool) -> torch.Tensor:
    """1-D blend weights ``[length]``: 1 inside, linear (never 0) over ``ramp`` samples at faded edges."""
    weights = torch.ones(length)
    if ramp <= 0:
        return weights
    steps = (torch.arange(min(ramp, length), dtype=torch.float32) + 0.5) / ramp
    if rise:
        weights[: len(steps)] = torch.minimum(weights[: len(steps)], steps)
    if fall:
        weights[length - len(steps) :] = torch.minimum(weights[length - len(steps) :], steps.flip(0))
    return weights


def run_tiled(
    fn: TileFn,
    x: torch.Tensor,
    tiling: Tiling,
    *,
    scale: Fraction | int,
    out_channels: int,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Apply ``fn`` tile by tile to ``x [B, C, H, W]`` and blend into ``[B, out_channels, H·s, W·s]``.

    ``fn`` maps a tile ``[B, C, h, w]`` to ``[B, out_channels, h·s, w·s]`` (``s = scale``, e.g. 4 for an
    ESRGAN, 8 for a VAE decoder, ``Fraction(1, 8)`` for its encoder; ``H·s`` and tile sides times ``s``
    must be whole). Where tiles overlap, each is weighted by a linear ramp over the overlap (edges on the
    image border are not faded) and the sum is normalised, so there is no hard seam. The output canvas
    lives on ``x``'s device in ``out_dtype``; tiles are moved there as they finish.
    """
    s = Fraction(scale)
    batch, _, height, width = x.shape
    out_h, out_w = height * s, width * s
    if out_h.denominator != 1 or out_w.denominator != 1:
        raise ValueError(f"image size {width}x{height} times scale {s} is not whole")
    ramp = int(tiling.overlap * s)
    out = torch.zeros(batch, out_channels, int(out_h), int(out_w), dtype=out_dtype, device=x.device)
    total = torch.zeros(1, 1, int(out_h), int(out_w), dtype=out_dtype, device=x.device)
    ys, xs = tile_starts(height, tiling), tile_starts(width, tiling)
    for y0 in ys:
        th = min(tiling.size, height)
        wy = _ramp(int(th * s), ramp, rise=y0 > 0, fall=y0 + th < height)
        for x0 in xs:
            tw = min(tiling.size, width)
            tile_out = fn(x[:, :, y0 : y0 + th, x0 : x0 + tw])
            oy, ox, oh, ow = int(y0 * s), int(x0 * s), int(th * s), int(tw * s)
            if tuple(tile_out.shape[-2:]) != (oh, ow):
                raise ValueError(
                    f"tile function returned {tuple(tile_out.shape)}, expected ({oh}, {ow}) sides"
                )
            wx = _ramp(ow, ramp, rise=x0 > 0, fall=x0 + tw < width)
            weight = (wy[:, None] * wx[None, :]).to(device=x.device, dtype=out_dtype)
            out[:, :, oy : oy + oh, ox : ox + ow] += tile_out.to(out.device, out_dtype) * weight
            total[:, :, oy : oy + oh, ox : ox + ow] += weight
            del tile_out
    return out.div_(total)
