"""Upscalers: discovery and names, safe loading through spandrel, tiling equal to untiled away from seams,
A1111 output sizes. The model is a tiny Real-ESRGAN-layout RRDBNet with random weights built here."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from latentstudio.postprocess.tiling import Tiling, run_tiled, tile_starts
from latentstudio.postprocess.upscalers import (
    UpscalerLoadError,
    UpscalerNotFoundError,
    UpscalerRegistry,
    apply_model,
    discover_upscalers,
    tiling_for_scale,
    upscale,
)
from tests.esrgan_files import random_esrgan_state

# Receptive-field radius of the tiny RRDBNet in input pixels: 17 3×3 convs at 1× (conv_first, 15 in the
# RRDB, conv_body), then one at 2× and three at 4× (≈ 1.25 more) → 19 is safely outside it.
RECEPTIVE_RADIUS = 19


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions: see conftest.one_thread


@pytest.fixture(scope="module")
def upscaler_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ESRGAN/Tiny.safetensors (×4) and models/RealESRGAN/tiny_x2.pth ({"params_ema": …}, ×2)."""
    root = tmp_path_factory.mktemp("models")
    (root / "ESRGAN").mkdir()
    (root / "RealESRGAN").mkdir()
    save_file(random_esrgan_state(scale=4, seed=1), root / "ESRGAN" / "Tiny.safetensors")
    torch.save({"params_ema": random_esrgan_state(scale=2, seed=2)}, root / "RealESRGAN" / "tiny_x2.pth")
    return root


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")


def test_listing_order_and_fields(upscaler_root: Path) -> None:
    (upscaler_root / "SwinIR").mkdir(exist_ok=True)
    (upscaler_root / "SwinIR" / "notes.txt").write_text("not a model")
    infos = discover_upscalers(upscaler_root)
    assert [i.name for i in infos] == ["None", "Lanczos", "Nearest", "Tiny", "tiny_x2"]
    tiny = infos[3]
    assert (tiny.model_name, tiny.model_url, tiny.scale) == ("ESRGAN", None, 4.0)
    assert tiny.model_path == str(upscaler_root / "ESRGAN" / "Tiny.safetensors")
    assert infos[4].scale == 2.0  # from the name, as A1111's UI reads it
    assert infos[0].model_path is None
    assert infos[0].scale == 4.0
    assert [i.name for i in discover_upscalers(None)] == ["None", "Lanczos", "Nearest"]


def test_unknown_name_lists_the_names(upscaler_root: Path) -> None:
    registry = UpscalerRegistry(upscaler_root)
    with pytest.raises(UpscalerNotFoundError, match=r"could not find upscaler named 'ESRGAN_4x'.*Tiny"):
        upscale(_image(8, 8), "ESRGAN_4x", scale=2, registry=registry)


def _seam_distance(length: int, tiling: Tiling) -> torch.Tensor:
    """Distance (input pixels) from each ×4 output column to the nearest interior tile edge."""
    edges = {e for s in tile_starts(length, tiling) for e in (s, s + tiling.size) if 0 < e < length}
    centres = (torch.arange(length * 4) + 0.5) / 4
    return torch.stack([(centres - e).abs() for e in edges]).amin(0)


def test_tiled_equals_untiled_away_from_seams(upscaler_root: Path) -> None:
    model = UpscalerRegistry(upscaler_root).model("Tiny")
    assert (model.architecture.id, model.scale) == ("ESRGAN", 4)
    x = torch.rand(1, 3, 96, 120, generator=torch.Generator().manual_seed(0))
    tiling = Tiling(size=48, overlap=8)
    with torch.inference_mode():
        whole = model(x)
        tiled = run_tiled(model, x, tiling, scale=4, out_channels=3)
    assert tiled.shape == whole.shape == (1, 3, 384, 480)
    inside = (whole > 0.0) & (whole < 1.0)
    assert inside.float().mean() > 0.99  # the random model is not saturated: the comparison means something

    far = torch.minimum(_seam_distance(96, tiling)[:, None], _seam_distance(120, tiling)[None, :])
    far = far >= RECEPTIVE_RADIUS
    diff = (whole - tiled).abs()[0].amax(0)
    assert far.float().mean() > 0.05
    assert diff[far].max() <= 1e-5  # float reordering only (measured 5e-7)
    assert diff.max() <= 0.05  # near seams: blended, no hard edge (measured 0.021)


def test_tiled_uint8_image_equals_untiled_away_from_seams(upscaler_root: Path) -> None:
    """The upscaler's tiled path blends float rows into a uint8 canvas band by band."""
    model = UpscalerRegistry(upscaler_root).model("Tiny")
    image, tiling = _image(120, 96, seed=4), Tiling(size=48, overlap=8)
    whole = np.asarray(apply_model(model, image, None)).astype(int)
    tiled = np.asarray(apply_model(model, image, tiling)).astype(int)
    assert tiled.shape == whole.shape == (384, 480, 3)
    rows, cols = (_seam_distance(n, tiling) >= RECEPTIVE_RADIUS for n in (96, 120))
    far = rows[:, None].numpy() & cols[None, :].numpy()
    diff = np.abs(whole - tiled).max(axis=2)
    assert far.mean() > 0.05
    assert diff[far].max() <= 1  # float reordering can move a value across a rounding boundary
    assert (diff[far] == 0).mean() > 0.99
    assert diff.max() <= 16  # near seams: blended


def test_tiles_shrink_to_bound_the_output_side(upscaler_root: Path) -> None:
    assert tiling_for_scale(Tiling(192, 8), 4, 384) == Tiling(96, 8)
    assert tiling_for_scale(Tiling(192, 8), 2, 384) == Tiling(192, 8)  # A1111's tile where it fits
    assert tiling_for_scale(Tiling(192, 8), 1, 384) == Tiling(192, 8)
    assert tiling_for_scale(Tiling(192, 16), 8, 64) == Tiling(8, 7)
    image = _image(40, 32, seed=5)
    capped = UpscalerRegistry(upscaler_root, tiling=Tiling(24, 4), max_tile_output=64)
    plain = UpscalerRegistry(upscaler_root, tiling=Tiling(24, 4), max_tile_output=None)
    expected = apply_model(capped.model("Tiny"), image, Tiling(16, 4))
    assert np.array_equal(np.asarray(capped.run_model("Tiny", image)), np.asarray(expected))
    assert not np.array_equal(np.asarray(plain.run_model("Tiny", image)), np.asarray(expected))
    with pytest.raises(ValueError, match="max_tile_output must be at least 8"):
        UpscalerRegistry(upscaler_root, max_tile_output=4)


def test_output_sizes_are_exact(upscaler_root: Path) -> None:
    registry = UpscalerRegistry(upscaler_root, tiling=Tiling(size=16, overlap=4))
    image = _image(26, 18)
    assert upscale(image, "Tiny", scale=4, registry=registry).size == (104, 72)
    assert upscale(image, "Tiny", scale=2.5, registry=registry).size == (64, 40)  # //8·8, as A1111
    assert upscale(image, "tiny_x2", scale=3, registry=registry).size == (72, 48)  # two ×2 passes
    assert upscale(image, "Tiny", size=(333, 250), registry=registry).size == (333, 250)
    assert upscale(image, "None", size=(77, 41), registry=registry).size == (77, 41)
    assert registry.resize(image, "Lanczos", 61, 45).size == (61, 45)  # the hires PixelUpscaler signature


def test_builtin_upscalers() -> None:
    registry = UpscalerRegistry(None)
    image = _image(64, 64)
    assert upscale(image, "Lanczos", scale=2, registry=registry).size == (128, 128)  # A1111's example
    nearest = upscale(_image(16, 16), "Nearest", scale=2, registry=registry)
    assert nearest.getpixel((3, 5)) == _image(16, 16).getpixel((1, 2))
    with pytest.raises(ValueError, match="exactly one of scale= or size="):
        upscale(image, "Lanczos", registry=registry)


def test_lru_keeps_cache_size_models(upscaler_root: Path) -> None:
    registry = UpscalerRegistry(upscaler_root, cache_size=1)
    first = registry.model("Tiny")
    assert registry.model("Tiny") is first
    registry.model("tiny_x2")
    assert registry.model("Tiny") is not first  # evicted, loaded again


def test_unsafe_and_unknown_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "ESRGAN").mkdir()
    torch.save({"args": argparse.Namespace(x=1)}, tmp_path / "ESRGAN" / "evil.pth")
    save_file({"foo.weight": torch.zeros(2, 2)}, tmp_path / "ESRGAN" / "odd.safetensors")
    registry = UpscalerRegistry(tmp_path)
    with pytest.raises(UpscalerLoadError, match=r"evil\.pth: refused.*could run code"):
        registry.model("evil")
    with pytest.raises(UpscalerLoadError, match=r"odd\.safetensors: unsupported model architecture"):
        registry.model("odd")
