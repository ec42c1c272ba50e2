"""A1111's ``ESRGAN_tile`` / ``ESRGAN_tile_overlap`` options (0: untiled) set through ``/sdapi/v1/options``
reach the model upscalers of an extras job over real HTTP (A1111: ``upscale_with_model(..., tile_size=
opts.ESRGAN_tile, tile_overlap=opts.ESRGAN_tile_overlap)``). References: the tiny model run directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from latentstudio.postprocess.tiling import Tiling
from latentstudio.postprocess.upscalers import UpscalerRegistry, apply_model, tiling_from_options
from tests.conftest import MakeTiny
from tests.esrgan_files import random_esrgan_state
from tests.sdapi_support import build_root, decode, png_b64
from tests.serving import Served, serve

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def served(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    settings = build_root(make_tiny, tmp_path_factory.mktemp("esrgan-tile"))
    (settings.models_dir / "ESRGAN").mkdir()
    save_file(random_esrgan_state(scale=4, seed=1), settings.models_dir / "ESRGAN" / "Tiny.safetensors")
    assert settings.models_dir is not None
    with serve(settings) as s:
        yield s, settings.models_dir


def _image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def test_tiling_from_options() -> None:
    assert tiling_from_options(0, 8) is None
    assert tiling_from_options(192, 8) == Tiling(192, 8)
    assert tiling_from_options(4, 8) == Tiling(8, 7)


def test_extras_use_the_tile_options(served: tuple[Served, Path]) -> None:
    server, models_dir = served
    image = _image()
    model = UpscalerRegistry(models_dir).model("Tiny")
    payload = {"image": png_b64(image), "upscaler_1": "Tiny", "upscaling_resize": 4}
    got = {}
    with httpx.Client(base_url=server.base, timeout=300) as client:
        for tile, overlap in ((0, 8), (16, 8), (24, 4)):
            response = client.post(
                "/sdapi/v1/options", json={"ESRGAN_tile": tile, "ESRGAN_tile_overlap": overlap}
            )
            assert response.status_code == 200
            body = client.post("/sdapi/v1/extra-single-image", json=payload).json()
            got[tile] = np.asarray(decode(body["image"]).convert("RGB"))
            expected = apply_model(model, image, tiling_from_options(tile, overlap))
            assert np.array_equal(got[tile], np.asarray(expected)), (tile, overlap)
    assert got[0].shape == (160, 192, 3)
    assert not np.array_equal(got[0], got[16])
    assert not np.array_equal(got[16], got[24])
    # in a request's override_settings: the stored value passes, another is refused (never silently dropped)
    with httpx.Client(base_url=server.base, timeout=300) as client:
        same = {
            "prompt": "x",
            "steps": 1,
            "width": 64,
            "height": 64,
            "override_settings": {"ESRGAN_tile": 24},
        }
        assert client.post("/sdapi/v1/txt2img", json=same).status_code == 200
        other = {**same, "override_settings": {"ESRGAN_tile": 64}}
        response = client.post("/sdapi/v1/txt2img", json=other)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "override_settings", "ESRGAN_tile"]
