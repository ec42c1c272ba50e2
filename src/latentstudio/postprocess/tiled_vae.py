"""Tiled VAE decode and encode for large images: bounded memory, overlapping tiles, linear seam blending.

The latent-resolution parts of the ``AutoencoderKL`` (mid block with its global self-attention) run on
the whole latent; the full-resolution parts run tile by tile. GroupNorm statistics there are per tile
rather than per image (as in diffusers' own tiled decode), so the result differs from the untiled one by
a small, smooth amount that shrinks with the tile size (tests/test_tiled_vae.py states the tolerance).
:func:`auto_tile` picks tiling from a memory budget so small images are never tiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from latentstudio.postprocess.tiling import TileFn, Tiling, run_tiled

VAE_FACTOR = 8  # every SD VAE downsamples by 8
_ALIVE = 3  # activations alive at once in a decoder block (input, output, residual)


@dataclass(frozen=True)
class VaeTile:
    """Tiling in latent pixels: ``size`` latent pixels per tile side, ``overlap`` shared with neighbours.

    Encode uses the same numbers ×8 in image pixels, so one setting covers both directions.
    """

    size: int = 64
    overlap: int = 16

    def __post_init__(self) -> None:
        if self.size < 8 or not 0 <= self.overlap < self.size:
            raise ValueError(
                f"VaeTile needs size ≥ 8 and 0 ≤ overlap < size, got size={self.size}, overlap={self.overlap}"
            )


def _decoder_tail(vae: Any) -> TileFn:
    """The decoder's up path (up blocks, norm, activation, conv_out): the part that runs at 1×–8×."""
    dec = vae.decoder

    def tail(h: torch.Tensor) -> torch.Tensor:
        h = h.to(next(iter(dec.up_blocks.parameters())).dtype)
        for block in dec.up_blocks:
            h = block(h)
        return dec.conv_out(dec.conv_act(dec.conv_norm_out(h)))  # type: ignore[no-any-return]

    return tail


def decode(vae: Any, latents: torch.Tensor, *, tile: VaeTile | None = None) -> torch.Tensor:
    """``vae.decode`` of ``latents [B, 4, h, w]`` (already divided by the scaling factor) →
    ``[B, 3, 8h, 8w]`` float32 in about [-1, 1]; tiled when ``tile`` is given and the latent is larger.

    A drop-in for ``vae.decode(z).sample``. Tiled: ``post_quant_conv``, ``conv_in`` and the mid block
    (whose self-attention is global) run on the whole latent, at latent resolution; the up path runs
    tile by tile (GroupNorm statistics per tile, as diffusers' own tiled decode).
    """
    with torch.inference_mode():
        if tile is None or max(latents.shape[-2:]) <= tile.size:
            return vae.decode(latents).sample.float()  # type: ignore[no-any-return]
        dec = vae.decoder
        z = latents if vae.post_quant_conv is None else vae.post_quant_conv(latents)
        h = dec.mid_block(dec.conv_in(z))
        tiling = Tiling(tile.size, tile.overlap)
        return run_tiled(_decoder_tail(vae), h, tiling, scale=VAE_FACTOR, out_channels=3)


def encode(vae: Any, pixels: torch.Tensor, *, tile: VaeTile | None = None) -> torch.Tensor:
    """The latent distribution's mean of ``pixels [B, 3, H, W]`` in [-1, 1] (H, W multiples of 8) →
    ``[B, C, H/8, W/8]`` float32, not yet multiplied by the scaling factor.

    Tiled like :func:`decode` in reverse: ``conv_in`` and the down blocks tile by tile (tiles of
    ``tile.size·8`` pixels), then the mid block, output convs and ``quant_conv`` on the whole latent.
    """
    if pixels.shape[-1] % VAE_FACTOR or pixels.shape[-2] % VAE_FACTOR:
        raise ValueError(f"pixels must have sides that are multiples of 8, got {tuple(pixels.shape[-2:])}")
    with torch.inference_mode():
        if tile is None or max(pixels.shape[-2:]) <= tile.size * VAE_FACTOR:
            return vae.encode(pixels).latent_dist.mean.float()  # type: ignore[no-any-return]
        enc = vae.encoder

        def head(x: torch.Tensor) -> torch.Tensor:
            x = enc.conv_in(x)
            for block in enc.down_blocks:
                x = block(x)
            return x

        tiling = Tiling(tile.size * VAE_FACTOR, tile.overlap * VAE_FACTOR)
        channels = int(vae.config.block_out_channels[-1])
        h = run_tiled(head, pixels, tiling, scale=Fraction(1, VAE_FACTOR), out_channels=channels)
        h = h.to(pixels.dtype)
        moments = enc.conv_out(enc.conv_act(enc.conv_norm_out(enc.mid_block(h))))
        if vae.quant_conv is not None:
            moments = vae.quant_conv(moments)
        return moments[:, : int(vae.config.latent_channels)].float()  # type: ignore[no-any-return]


def decoder_bytes_per_latent_pixel(vae: Any, dtype: torch.dtype) -> int:
    """Estimated peak activation bytes of ``vae.decode`` per latent pixel, excluding attention.

    The decoder's up blocks run at 1×, 2×, 4×, 8× the latent side with ``block_out_channels`` reversed;
    the largest ``channels · 4^level`` level dominates, with about three activations alive at once.
    """
    channels = [int(c) for c in vae.config.block_out_channels][::-1]
    element = torch.finfo(dtype).bits // 8
    return max(ch << (2 * level) for level, ch in enumerate(channels)) * _ALIVE * element  # ch · 4^level


def estimate_decode_bytes(vae: Any, height: int, width: int, dtype: torch.dtype) -> int:
    """Estimated peak bytes to decode one ``height × width`` latent: activations plus the mid-block's
    single-head self-attention matrix ``(h·w)²`` (worst case, no memory-efficient attention)."""
    pixels = height * width
    element = torch.finfo(dtype).bits // 8
    return pixels * decoder_bytes_per_latent_pixel(vae, dtype) + pixels * pixels * element


def auto_tile(
    vae: Any, latent_shape: tuple[int, ...], budget_bytes: int, *, dtype: torch.dtype = torch.float32
) -> VaeTile | None:
    """Tiling for a latent of ``latent_shape [..., h, w]`` within ``budget_bytes`` (per batch item).

    None when the whole latent fits (decode untiled, exactly as before). Otherwise the largest tile side
    (a multiple of 8 latent pixels, at least 16) whose estimate fits, with a quarter of it as overlap.
    Raises ValueError when even a 16-pixel tile does not fit the budget.
    """
    height, width = int(latent_shape[-2]), int(latent_shape[-1])
    if budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
    if estimate_decode_bytes(vae, height, width, dtype) <= budget_bytes:
        return None
    side = (max(height, width) // 8) * 8
    while side >= 16:
        if estimate_decode_bytes(vae, side, side, dtype) <= budget_bytes:
            return VaeTile(size=side, overlap=side // 4)
        side -= 8
    need = estimate_decode_bytes(vae, 16, 16, dtype)
    raise ValueError(f"budget_bytes={budget_bytes} is below the smallest tile's estimate ({need} bytes)")
