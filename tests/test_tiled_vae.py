"""Tiled VAE decode/encode on the tiny random SD1 VAE: shapes, agreement with untiled, budget-driven tiling.

Tolerances (measured, seed 0, 64×48 latent of N(0, 1), tiles of 40 latent pixels with 16 overlap):
decode max |Δ| 0.24, mean 0.015 on an output of std 0.40; encode max 0.10, mean 0.010 (latent std 0.34).
The difference is GroupNorm statistics taken per tile (diffusers' tiled decode does the same); a random
tiny VAE is a worst case for it (real SD latents and weights are smoother). Bounds: 1.5× the measurement.
"""

from __future__ import annotations

import pytest
import torch

from latentstudio.models import synthetic
from latentstudio.models.families import Family
from latentstudio.postprocess import tiled_vae

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions: see conftest.one_thread


@pytest.fixture(scope="module")
def vae() -> torch.nn.Module:
    _, vae, _ = synthetic.build_components(synthetic.tiny_spec(Family.SD1), 0)
    return vae


def test_tiled_decode_and_encode_match_untiled(vae: torch.nn.Module) -> None:
    latents = torch.randn(1, 4, 64, 48, generator=torch.Generator().manual_seed(0))
    tile = tiled_vae.VaeTile(size=40, overlap=16)
    whole = tiled_vae.decode(vae, latents)
    tiled = tiled_vae.decode(vae, latents, tile=tile)
    assert tiled.shape == whole.shape == (1, 3, 512, 384)
    diff = (whole - tiled).abs()
    assert diff.max() <= 0.36
    assert diff.mean() <= 0.023
    # seam-free: the tiled image is no rougher across tile edges than the untiled one
    assert (tiled.diff(dim=-1).abs().max()) <= 1.1 * whole.diff(dim=-1).abs().max()

    pixels = whole.clamp(-1, 1)
    mean = tiled_vae.encode(vae, pixels)
    mean_tiled = tiled_vae.encode(vae, pixels, tile=tile)
    assert mean_tiled.shape == mean.shape == (1, 4, 64, 48)
    diff = (mean - mean_tiled).abs()
    assert diff.max() <= 0.15
    assert diff.mean() <= 0.015


def test_small_inputs_are_not_tiled(vae: torch.nn.Module) -> None:
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    expected = vae.decode(latents).sample
    assert torch.equal(tiled_vae.decode(vae, latents, tile=tiled_vae.VaeTile(16, 4)), expected)
    with pytest.raises(ValueError, match="multiples of 8"):
        tiled_vae.encode(vae, torch.zeros(1, 3, 20, 16))


def test_auto_tile_from_budget(vae: torch.nn.Module) -> None:
    shape = (1, 4, 256, 256)  # a 2048² image
    need = tiled_vae.estimate_decode_bytes(vae, 256, 256, torch.float32)
    assert tiled_vae.auto_tile(vae, shape, need) is None
    tile = tiled_vae.auto_tile(vae, shape, need // 20)
    assert tile is not None
    assert tile.size % 8 == 0
    assert tile.overlap == tile.size // 4
    assert tiled_vae.estimate_decode_bytes(vae, tile.size, tile.size, torch.float32) <= need // 20
    assert tiled_vae.estimate_decode_bytes(vae, tile.size + 8, tile.size + 8, torch.float32) > need // 20
    with pytest.raises(ValueError, match="below the smallest tile"):
        tiled_vae.auto_tile(vae, shape, 1000)
