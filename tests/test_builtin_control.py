"""The shipped built-in control model: a canny ControlNet of the built-in model, small, listed only while the
built-in model is the checkpoint offered, and over real HTTP it puts an uploaded picture's shape where the
picture has it in the colours the prompt names (judged by our shape mask and colour classifier)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

from latentstudio.config import Settings
from latentstudio.control.networks import inspect_control_file
from latentstudio.models.builtin import BUILTIN_CONTROL_NAME, builtin_checkpoint, builtin_control
from latentstudio.models.families import Family
from latentstudio.models.hashes import legacy_hash
from latentstudio.models.loader import load_checkpoint
from latentstudio.train.control_shapes import evaluate_control, iou, load_for_eval
from latentstudio.train.eval_shapes import classify, foreground_mask
from tests.conftest import MakeTiny
from tests.sdapi_support import decode, png_b64
from tests.serving import serve

STEM = BUILTIN_CONTROL_NAME.removesuffix(".safetensors")


def test_the_control_model_ships_small_with_its_card() -> None:
    path = builtin_control()
    assert path.stat().st_size <= 8_000_000  # issue 18: ≤ 8 MB
    info = inspect_control_file(path)
    assert (info.family, info.layout, info.hint_channels) == (Family.SD1, "cldm", 3)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["latentstudio.base_model_hash"] == legacy_hash(builtin_checkpoint())
    assert meta["latentstudio.preprocessor"] == "canny"
    card = path.with_suffix(".md").read_text(encoding="utf-8")
    assert "latentstudio train shapes-control" in card
    assert "mean IoU" in card


def test_it_keeps_the_shape_on_held_out_pictures() -> None:
    """``eval shapes-control`` on its first 12 held-out pictures (the card has the full set)."""
    components = load_checkpoint(builtin_checkpoint(), device=torch.device("cpu"), dtype=torch.float32)
    with torch.inference_mode():
        accuracy = evaluate_control(components, load_for_eval(builtin_control(), components), 12)
    assert accuracy.iou >= 0.85, accuracy
    assert min(accuracy.fg, accuracy.bg) >= 0.9, accuracy


def _upload(size: int = 512) -> tuple[Image.Image, np.ndarray]:
    """A user's picture: a black triangle off the grid on white, ``size``²; and its filled shape at 64²."""

    def draw(side: int) -> Image.Image:
        image = Image.new("RGB", (side, side), "white")
        k = side / 64
        ImageDraw.Draw(image).polygon([(40 * k, 14 * k), (56 * k, 44 * k), (24 * k, 44 * k)], fill="black")
        return image

    return draw(size), np.asarray(draw(256).resize((64, 64), Image.Resampling.BOX))[:, :, 0] < 128


def test_txt2img_over_http_draws_the_uploaded_shape_in_the_prompts_colours(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data", device="cpu")
    picture, shape = _upload()
    unit = {"enabled": True, "module": "canny", "model": STEM, "image": png_b64(picture)}
    body = {"prompt": "a red triangle on a blue background", "steps": 20, "seed": 1, "width": 64,
            "height": 64, "sampler_name": "DPM++ 2M",
            "alwayson_scripts": {"controlnet": {"args": [unit]}}}  # fmt: skip
    with serve(settings) as served:
        listed = httpx.get(f"{served.base}/controlnet/model_list", timeout=30).json()["model_list"]
        response = httpx.post(f"{served.base}/sdapi/v1/txt2img", json=body, timeout=120)
    assert listed == [f"{STEM} [{legacy_hash(builtin_control())}]"]
    assert response.status_code == 200, response.text
    image = np.asarray(decode(response.json()["images"][0]).convert("RGB"))
    assert image.shape == (64, 64, 3)
    reading = classify(image)
    assert (reading.fg, reading.bg, reading.shape) == ("red", "blue", "triangle")
    assert iou(foreground_mask(image), shape) >= 0.8


def test_it_is_not_listed_beside_other_checkpoints(make_tiny: MakeTiny, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(make_tiny(Family.SD1).path, models / "Stable-diffusion" / "tiny.safetensors")
    with serve(Settings(models_dir=models, data_dir=tmp_path / "data", device="cpu")) as served:
        listed = httpx.get(f"{served.base}/controlnet/model_list", timeout=30).json()["model_list"]
    assert listed == []


def test_it_is_not_listed_when_the_builtin_model_is_off(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data", device="cpu",
                        builtin_model=False)  # fmt: skip
    with serve(settings, ready=False) as served:  # no checkpoint: never ready, but it answers
        listed = httpx.get(f"{served.base}/controlnet/model_list", timeout=30).json()["model_list"]
    assert listed == []
