"""Safety checker wiring with a tiny random StableDiffusionSafetyChecker built here (config at tiny widths).

The thresholds decide: concept weights of 2 can never be exceeded by a cosine (nothing flagged); weights
of -1 always are (everything flagged and blacked out).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPConfig

from latentstudio.config import Settings
from latentstudio.postprocess.safety import (
    SafetyChecker,
    SafetyCheckerError,
    clip_pixels,
)
from tests.conftest import MakeTiny

TINY = {
    "projection_dim": 16,
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                      "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                    "num_attention_heads": 2, "vocab_size": 100, "max_position_embeddings": 16},
}  # fmt: skip


def _write_checker(folder: Path, threshold: float) -> Path:
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(CLIPConfig.from_dict(TINY))
    with torch.no_grad():
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    save_file({k: v.contiguous() for k, v in checker.state_dict().items()}, folder / "model.safetensors")
    return folder


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (48, 40), (200, 30, 30)), Image.new("RGB", (20, 64), (10, 120, 250))]


def test_nothing_flagged_below_threshold(tmp_path: Path) -> None:
    result = SafetyChecker(_write_checker(tmp_path / "checker", threshold=2.0)).check(_images())
    assert result.flagged == [False, False]
    assert [im.tobytes() for im in result.images] == [im.tobytes() for im in _images()]


def test_flagged_images_are_black(tmp_path: Path) -> None:
    result = SafetyChecker(_write_checker(tmp_path / "checker", threshold=-1.0)).check(_images())
    assert result.flagged == [True, True]
    assert [im.size for im in result.images] == [(48, 40), (20, 64)]
    assert all(im.getextrema() == ((0, 0), (0, 0), (0, 0)) for im in result.images)


def test_bad_folders_and_setting(tmp_path: Path) -> None:
    assert Settings().safety_checker is None  # off by default
    with pytest.raises(SafetyCheckerError, match=r"no config\.json"):
        SafetyChecker(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(SafetyCheckerError, match=r"no weights; expected one of model\.safetensors"):
        SafetyChecker(tmp_path)
    save_file({"x": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(SafetyCheckerError, match="weights do not fit the config"):
        SafetyChecker(tmp_path)


def test_clip_preprocessing_shape_and_centre_crop() -> None:
    image = Image.new("RGB", (64, 32), (0, 0, 0))
    image.paste((255, 255, 255), (16, 0, 48, 32))  # the centre square is white
    pixels = clip_pixels([image], 32)
    assert pixels.shape == (1, 3, 32, 32)
    white = (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]
    )
    assert torch.allclose(pixels[0, :, 16, 16], white, atol=1e-5)


def test_the_server_blacks_out_flagged_images_and_says_so(make_tiny: MakeTiny, tmp_path: Path) -> None:
    import httpx

    from latentstudio.models.families import Family
    from tests.serving import models_root, serve, wait_job

    models = models_root(make_tiny(Family.SD1).path, tmp_path)
    checker = _write_checker(tmp_path / "checker", threshold=-1.0)  # flags everything
    settings = Settings(models_dir=models, data_dir=tmp_path / "data", device="cpu", safety_checker=checker)
    with serve(settings) as served, httpx.Client(base_url=served.base, timeout=120) as client:
        payload = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "sampler": "Euler", "batch_size": 2}
        view = wait_job(client, client.post("/api/v1/jobs", json=payload).json()["id"])
        assert view["status"] == "done", view
        assert view["warnings"] == [
            f"image {i} was flagged by the safety checker and blacked out" for i in (1, 2)
        ]
        for image in view["images"]:
            png = Image.open(io.BytesIO(client.get(image["url"]).content))
            assert png.convert("RGB").getextrema() == ((0, 0), (0, 0), (0, 0))
