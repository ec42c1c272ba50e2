"""The shipped built-in model: small, loadable from the file alone, good enough on ``eval shapes``, and the
default when the models folder is empty (server and CLI, no download)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from latentstudio.cli import app
from latentstudio.config import Settings
from latentstudio.core import Prediction
from latentstudio.models.builtin import BUILTIN_NAME, builtin_checkpoint
from latentstudio.models.families import Family
from latentstudio.models.loader import Components, load_checkpoint
from latentstudio.train.eval_shapes import Reading, classify, evaluate
from latentstudio.train.recipe import CARD_NAME, loss_curve, model_card, shapes_recipe
from tests.serving import serve

PROMPT = "a large yellow square in the center on a blue background"


@pytest.fixture(scope="module")
def builtin() -> Components:
    return load_checkpoint(builtin_checkpoint(), device=torch.device("cpu"), dtype=torch.float32)


def test_the_builtin_model_ships_small_with_its_card(builtin: Components) -> None:
    path = builtin_checkpoint()
    assert path.name == BUILTIN_NAME
    assert path.stat().st_size <= 16_000_000  # issue 8: ≤ 16 MB in the package
    assert builtin.info.family is Family.SD1
    assert builtin.info.prediction is Prediction.EPSILON
    assert builtin.info.native_size == 64
    card = (path.parent / CARD_NAME).read_text(encoding="utf-8")
    assert "latentstudio train shapes" in card
    assert "| foreground colour | background colour | shape | position |" in card


def test_the_builtin_model_passes_eval_shapes_on_the_ci_subset(builtin: Components) -> None:
    """``eval shapes`` on the first 48 prompts of the fixed set against issue 8's goals (fg ≥ 95 %, bg ≥ 95 %,
    shape ≥ 85 %) and a position floor (not a goal of the issue; the previous model ignored position words).
    The subset scores fg 100 %, bg 100 %, shape 93.8 %, position 95.8 % here (the model card: 400 prompts),
    so a picture or two flipped by another CPU's rounding cannot fail CI."""
    with torch.no_grad():
        accuracy = evaluate(builtin, 48)
    assert accuracy.fg >= 0.95, accuracy
    assert accuracy.bg >= 0.95, accuracy
    assert accuracy.shape >= 0.85, accuracy
    assert accuracy.position >= 0.85, accuracy


def test_serve_with_an_empty_models_folder_generates_with_the_builtin_model(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data", device="cpu")
    with serve(settings) as served:
        models = httpx.get(f"{served.base}/sdapi/v1/sd-models", timeout=30).json()
        assert [m["model_name"] for m in models] == ["latentstudio-shapes"]
        body = {"prompt": PROMPT, "steps": 20, "seed": 3, "width": 64, "height": 64}
        response = httpx.post(f"{served.base}/sdapi/v1/txt2img", json=body, timeout=120)
        # the native API's size defaults to the checkpoint's (here 64); /sdapi/v1 keeps A1111's 512
        created = httpx.post(f"{served.base}/api/v1/jobs", json={"prompt": PROMPT, "steps": 2}, timeout=30)
        assert created.status_code == 202, created.text
        job = httpx.get(f"{served.base}{created.json()['url']}", params={"wait": 60}, timeout=90).json()
        openapi = httpx.get(f"{served.base}/openapi.json", timeout=30).json()
    assert job["status"] == "done", job
    assert (job["params"]["width"], job["params"]["height"]) == (64, 64)
    assert "Size: 64x64" in job["infotexts"][0]
    txt2img = openapi["components"]["schemas"]["Txt2ImgRequest"]["properties"]
    assert (txt2img["width"]["default"], txt2img["height"]["default"]) == (512, 512)
    assert response.status_code == 200, response.text
    data = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(data["images"][0]))).convert("RGB")
    assert image.size == (64, 64)
    reading = classify(np.asarray(image))
    assert reading == Reading("yellow", "blue", "square", "center")
    assert "Model: latentstudio-shapes" in data["info"]


def test_generate_cli_works_out_of_the_box_at_the_native_size(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "generate", PROMPT, "--seed", "3", "--models-dir", str(tmp_path / "models"),
        "--data-dir", str(tmp_path / "data"), "--output", str(tmp_path / "outputs"), "--device", "cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    written = [Path(line) for line in result.stdout.splitlines()]  # stderr: the progress bar
    assert len(written) == 1
    with Image.open(written[0]) as image:
        assert image.size == (64, 64)
        reading = classify(np.asarray(image.convert("RGB")))
    assert reading == Reading("yellow", "blue", "square", "center")


def test_the_model_card_reads_the_run_logs(tmp_path: Path) -> None:
    """A resumed run's repeated steps: the newest record wins; rows every 500 steps and the last one."""
    recipe = shapes_recipe(tmp_path / "runs", scale=0.1)
    for stage, records in (
        ("vae", [(500, 0.5), (600, 0.9), (600, 0.4), (650, 0.3)]),
        ("model", [(250, 0.2), (500, 0.1)]),
    ):
        folder = tmp_path / "runs" / stage
        folder.mkdir(parents=True)
        lines = [json.dumps({"step": step, "loss": loss, "it_s": 1.0}) for step, loss in records]
        (folder / "log.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert loss_curve(tmp_path / "runs" / "vae") == [(500, 0.5), (650, 0.3)]
    accuracy = {"count": 10, "fg": 1.0, "bg": 0.9, "shape": 0.5, "position": 0.25}
    card = model_card(recipe, builtin_checkpoint(), accuracy, notes="NOTE")
    assert "| 100.0% | 90.0% | 50.0% | 25.0% |" in card
    assert "| 650 | 0.3000 |" in card
    assert "| 500 | 0.1000 |" in card
    assert "NOTE" in card
    assert '"steps": 650' in card  # the recipe's own configs, shortened by scale
