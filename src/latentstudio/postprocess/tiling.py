"""Tiled inference of any spatial model with overlap and linear seam blending.

Used by the upscalers (pixels → ×scale pixels) and by the tiled VAE (latents → ×8 pixels, pixels → ÷8
latents). Memory is bounded by one tile's activations, one band of float32 output rows and the output
canvas (in the caller's dtype: uint8 for pixels), whatever the image size.
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


def _ramp(length: int, overlap: int, *, rise: bool, fall: bool) -> torch.Tensor:
    """1-D blend weights ``[length]`` for one tile side at output resolution.

    At a faded edge the outer quarter of the overlap gets weight 0 (those samples lack context), the next
    half a linear ramp (never exactly 0), the rest 1; two neighbours' ramps then coincide and sum to 1.
    """
    weights = torch.ones(length)
    pad, ramp = overlap // 4, max(overlap - 2 * (overlap // 4), 0)
    edge = torch.cat([torch.zeros(pad), (torch.arange(ramp, dtype=torch.float32) + 0.5) / max(ramp, 1)])
    edge = edge[:length]
    if rise:
        weights[: len(edge)] = torch.minimum(weights[: len(edge)], edge)
    if fall:
        weights[length - len(edge) :] = torch.minimum(weights[length - len(edge) :], edge.flip(0))
    return weights


def _axis_weights(length: int, starts: list[int], tile: int, s: Fraction, ramp: int) -> list[torch.Tensor]:
    """Per-tile 1-D weights along one axis at output resolution, normalised so they sum to 1 everywhere.

    The tile grid is a product of the two axes, so the 2-D weight ``wy·wx`` of a tile divided by the sum
    over all tiles is ``(wy/Σwy)·(wx/Σwx)``: no image-sized weight canvas is needed, and a sample only one
    tile covers keeps weight exactly 1 (bit-identical to that tile's output).
    """
    side = int(tile * s)
    weights = [_ramp(side, ramp, rise=a > 0, fall=a + tile < length) for a in starts]
    total = torch.zeros(int(length * s))
    for a, w in zip(starts, weights, strict=True):
        total[int(a * s) : int(a * s) + side] += w
    return [w / total[int(a * s) : int(a * s) + side] for a, w in zip(starts, weights, strict=True)]


def run_tiled(
    fn: TileFn,
    x: torch.Tensor,
    tiling: Tiling,
    *,
    scale: Fraction | int,
    out_channels: int,
    out_dtype: torch.dtype = torch.float32,
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Apply ``fn`` tile by tile to ``x [B, C, H, W]`` and blend into ``[B, out_channels, H·s, W·s]``.

    ``fn`` maps a tile ``[B, C, h, w]`` to ``[B, out_channels, h·s, w·s]`` (``s = scale``, e.g. 4 for an
    ESRGAN, 8 for a VAE decoder, ``Fraction(1, 8)`` for its encoder; ``H·s`` and tile sides times ``s``
    must be whole). Where tiles overlap, each is weighted by a linear ramp over the overlap (edges on the
    image border are not faded) and the weights are normalised, so there is no hard seam: the outer
    quarter of the overlap is dropped, the middle half cross-faded linearly. Away from tile edges by more
    than the model's receptive field (minus a quarter overlap) the result equals the untiled one.

    Memory: tiles are blended in float32 into one band of output rows (a tile row's height × the full
    width); rows no later tile touches are converted by ``finish`` (default: a cast to ``out_dtype``;
    it must not modify its argument) into the output canvas, which lives on ``x``'s device in
    ``out_dtype`` (e.g. ``torch.uint8`` pixels: a quarter of a float32 canvas).
    """
    s = Fraction(scale)
    batch, _, height, width = x.shape
    out_h, out_w = height * s, width * s
    if out_h.denominator != 1 or out_w.denominator != 1:
        raise ValueError(f"image size {width}x{height} times scale {s} is not whole")
    th, tw = min(tiling.size, height), min(tiling.size, width)
    oh, ow = int(th * s), int(tw * s)
    ys, xs = tile_starts(height, tiling), tile_starts(width, tiling)
    ramp = int(tiling.overlap * s)
    wys = [w.to(x.device) for w in _axis_weights(height, ys, th, s, ramp)]
    wxs = [w.to(x.device) for w in _axis_weights(width, xs, tw, s, ramp)]
    convert = finish or (lambda rows: rows.to(out_dtype))
    out = torch.empty(batch, out_channels, int(out_h), int(out_w), dtype=out_dtype, device=x.device)
    band = torch.zeros(batch, out_channels, oh, int(out_w), device=x.device)  # rows [top, top + oh)
    top = 0
    for y0, wy in zip(ys, wys, strict=True):
        oy = int(y0 * s)
        if oy > top:  # rows above this tile row are final: write them out, move the band down
            out[:, :, top:oy] = convert(band[:, :, : oy - top])
            kept = band[:, :, oy - top :].clone()
            band.zero_()[:, :, : kept.shape[2]] = kept
            del kept
            top = oy
        for x0, wx in zip(xs, wxs, strict=True):
            tile_out = fn(x[:, :, y0 : y0 + th, x0 : x0 + tw])
            if tuple(tile_out.shape[-2:]) != (oh, ow):
                raise ValueError(
                    f"tile function returned {tuple(tile_out.shape)}, expected ({oh}, {ow}) sides"
                )
            ox = int(x0 * s)
            weight = wy[:, None] * wx[None, :]
            band[:, :, :, ox : ox + ow].addcmul_(tile_out.to(band.device, band.dtype), weight)
            del tile_out
    out[:, :, top:] = convert(band)
    return out
