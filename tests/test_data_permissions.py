"""Everything the server writes under its data dir is owner-only: the job store and its WAL/SHM files
(prompts, uploaded init images), images, settings, caches and lock files, whatever the umask."""

from __future__ import annotations

import base64
import io
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from latentstudio.config import Settings
from latentstudio.models.families import Family
from latentstudio.storage import private_dir, private_file
from tests.conftest import MakeTiny
from tests.serving import serve


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The common default umask (group and others may read): what we create must not rely on it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_private_helpers_create_and_narrow(tmp_path: Path, open_umask: None) -> None:
    folder = private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    loose = tmp_path / "loose.txt"
    loose.write_text("x")
    loose.chmod(0o644)
    assert stat.S_IMODE(private_file(loose).stat().st_mode) == 0o600
    assert loose.read_text() == "x"  # narrowed, not truncated


def test_everything_under_the_data_dir_is_owner_only(
    tmp_path: Path, open_umask: None, make_tiny: MakeTiny
) -> None:
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copyfile(make_tiny(Family.SD1).path, checkpoints / "tiny.safetensors")  # hashed into the cache
    data = tmp_path / "data"
    init = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(init, "PNG")
    with serve(Settings(models_dir=tmp_path / "models", data_dir=data, device="cpu")) as served:
        with httpx.Client(base_url=served.base, timeout=120) as client:
            small = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64}
            assert client.post("/sdapi/v1/txt2img", json=small).status_code == 200
            body = {**small, "init_images": [base64.b64encode(init.getvalue()).decode()]}
            assert client.post("/sdapi/v1/img2img", json=body).status_code == 200
            assert client.post("/sdapi/v1/options", json={"eta_ddim": 0.5}).status_code == 200
            assert client.get("/sdapi/v1/sd-models").status_code == 200  # hashes the checkpoint
        modes = _modes(data)
    assert {"jobs.sqlite3", "jobs.sqlite3-wal", "sdapi-options.json", "images", "cache/hashes.json"} <= set(
        modes
    )
    assert any(name.endswith(".png") for name in modes)
    loose = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert not loose, f"readable by others: {loose}"
