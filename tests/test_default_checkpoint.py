"""A bad file never becomes the default checkpoint: the default is the first file that identifies and
loads; files that cannot be used are listed with their error and never block readiness."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from latentstudio.config import Settings
from latentstudio.models.arch import ARCH_METADATA_KEY
from latentstudio.models.families import Family
from latentstudio.models.files import ModelFileError
from latentstudio.models.manager import ModelManager
from latentstudio.models.synthetic import write_checkpoint
from tests.conftest import MakeTiny
from tests.serving import serve

ROOT = Path(__file__).resolve().parents[1]


def _folder(make_tiny: MakeTiny, root: Path) -> Path:
    """``a-truncated`` (its header does not identify), ``b-heads`` (identifies, fails to build: 3 heads do
    not divide the text encoder's width) and ``c-good``, in that natural order."""
    checkpoints = root / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    tiny = make_tiny(Family.SD1)
    data = tiny.path.read_bytes()
    (checkpoints / "a-truncated.safetensors").write_bytes(data[: len(data) // 2])
    heads = json.dumps({"text_encoder": {"num_attention_heads": 3}})
    write_checkpoint(checkpoints / "b-heads.safetensors", tiny.state, metadata={ARCH_METADATA_KEY: heads})
    shutil.copyfile(tiny.path, checkpoints / "c-good.safetensors")
    return root / "models"


def test_the_default_is_the_first_checkpoint_that_loads(make_tiny: MakeTiny, tmp_path: Path) -> None:
    models = _folder(make_tiny, tmp_path)
    manager = ModelManager(Settings(models_dir=models, data_dir=tmp_path / "data", device="cpu"))
    assert manager.default_checkpoint().name == "b-heads.safetensors"  # its header identifies
    with pytest.raises(ModelFileError, match="hidden size"):
        manager.load(None)  # the worker's warm-up moves on from here: the failure is remembered
    assert manager.load(None).path.name == "c-good.safetensors"
    assert manager.default_checkpoint().name == "c-good.safetensors"
    problems = {info.name: manager.problem(info) for info in manager.checkpoints()}
    assert problems["c-good.safetensors"] is None
    assert str(problems["a-truncated.safetensors"]).startswith(
        str(models / "Stable-diffusion" / "a-truncated")
    )
    assert "truncated" in str(problems["a-truncated.safetensors"])
    assert "cannot be built" in str(problems["b-heads.safetensors"])
    manager.refresh()  # the files may have been fixed: try again
    assert manager.default_checkpoint().name == "b-heads.safetensors"


def test_the_server_is_ready_and_lists_why(make_tiny: MakeTiny, tmp_path: Path) -> None:
    models = _folder(make_tiny, tmp_path)
    settings = Settings(models_dir=models, data_dir=tmp_path / "data", device="cpu")
    with serve(settings) as served, httpx.Client(base_url=served.base, timeout=120) as client:
        assert client.get("/readyz").status_code == 200
        listed = {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").json()}
        assert "error" not in listed["c-good"]
        assert "truncated" in listed["a-truncated"]["error"]
        assert "cannot be built" in listed["b-heads"]["error"]
        body = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        assert "Model: c-good" in json.loads(response.json()["info"])["infotexts"][0]
        named = client.post(
            "/sdapi/v1/txt2img", json={**body, "override_settings": {"sd_model_checkpoint": "b-heads"}}
        )
        assert named.status_code == 500
        assert named.json()["detail"].startswith(str(models / "Stable-diffusion" / "b-heads.safetensors"))


def test_cli_models_reports_the_unreadable_file(make_tiny: MakeTiny, tmp_path: Path) -> None:
    models = _folder(make_tiny, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "latentstudio.cli", "models", "--models-dir", str(models),
         "--data-dir", str(tmp_path / "data"), "--json"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 1
    assert [row["name"] for row in json.loads(result.stdout)] == ["b-heads.safetensors", "c-good.safetensors"]
    assert "a-truncated.safetensors: truncated" in result.stderr
