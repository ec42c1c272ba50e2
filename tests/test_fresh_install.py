"""A new user's first minutes, for real: the wheel built from this tree, installed WITHOUT extras into a new
virtualenv (nothing from the developer's environment), serves the web UI and makes a picture with an empty
models folder (the built-in model) and no network.

This is what CI could not see when ``gradio`` was imported but not declared: ``serve`` crashed for every
new user while the suite, run where gradio had been installed by hand, stayed green. It takes minutes
(pip unpacks torch into the new environment), so it is marked ``install``: ``.ci/run`` runs it on every
push (``scripts/test -m "not slow"``); locally ``scripts/test -m install`` runs it alone.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.serving import free_port

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.install, pytest.mark.timeout(1800)]


def _run(*args: str | Path, cwd: Path) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=1500, check=False
    )
    assert result.returncode == 0, (
        f"{args}: rc {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def _clean_env() -> dict[str, str]:
    """This process's environment without anything that would let the new venv see our packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new virtualenv holding the wheel of this tree and its declared dependencies only; its bin/."""
    work = tmp_path_factory.mktemp("fresh-install")
    try:
        started = time.monotonic()
        _run(
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", work / "dist", ROOT, cwd=work
        )
        wheels = list((work / "dist").glob("latentstudio-*.whl"))
        assert len(wheels) == 1, wheels
        _run(sys.executable, "-m", "venv", work / "venv", cwd=work)
        bin_dir = work / "venv" / "bin"
        _run(
            bin_dir / "python",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            wheels[0],
            cwd=work,
        )
        print(f"\nfresh install: wheel + new venv + pip install took {time.monotonic() - started:.0f} s")
        yield bin_dir
    finally:
        shutil.rmtree(work, ignore_errors=True)  # several GB (torch)


def test_the_wheel_installs_without_extras_and_holds_the_builtin_model(installed: Path) -> None:
    code = (
        "import importlib.metadata as m, pathlib, latentstudio, latentstudio.models.builtin as b;"
        "print(latentstudio.__file__); print(b.builtin_checkpoint().stat().st_size);"
        "print(sorted(m.distribution('latentstudio').metadata.get_all('Provides-Extra') or []))"
    )
    out = _run(installed / "python", "-c", code, cwd=installed).splitlines()
    assert str(installed.parent) in out[0], "latentstudio was not imported from the new venv"
    assert int(out[1]) > 10_000_000  # the 15 MB built-in model ships in the wheel
    test_tools = _run(installed / "python", "-m", "pip", "list", "--format=freeze", cwd=installed)
    assert "pytest==" not in test_tools  # no extras: the test tools are not there


def test_serve_from_the_fresh_install_answers_with_ui_and_a_picture(installed: Path, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "models").mkdir()
    log = (tmp_path / "serve.log").open("w")
    started = time.monotonic()
    server = subprocess.Popen(
        [installed / "latentstudio", "serve", "--port", str(port), "--models-dir", tmp_path / "models",
         "--data-dir", tmp_path / "data", "--device", "cpu"],
        cwd=tmp_path, env=_clean_env(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        ready = None
        while time.monotonic() - started < 300 and server.poll() is None:
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    ready = time.monotonic() - started
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert ready is not None, (tmp_path / "serve.log").read_text()[-4000:]
        print(f"\nfresh install: serve ready in {ready:.1f} s")
        page = httpx.get(f"{base}/", timeout=30)
        assert page.status_code == 200
        assert "gradio" in page.text.lower()
        config = httpx.get(f"{base}/config", timeout=30).json()  # the Blocks the page renders
        assert config["title"] == "latentstudio"
        assert any(c.get("props", {}).get("elem_id") == "txt2img_generate" for c in config["components"])
        body = {"prompt": "a red circle in the center on a blue background", "steps": 8, "seed": 1,
                "width": 64, "height": 64}  # fmt: skip
        response = httpx.post(f"{base}/sdapi/v1/txt2img", json=body, timeout=300)
        assert response.status_code == 200, response.text
        image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
        assert image.size == (64, 64)
        assert "Model: latentstudio-shapes" in response.json()["info"]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    logged = (tmp_path / "serve.log").read_text()
    # a clean stop: uvicorn finishes the lifespan, then re-raises SIGTERM (exit status -15)
    assert server.returncode in (0, -signal.SIGTERM), logged[-4000:]
    assert "Application shutdown complete" in logged
    assert "Traceback" not in logged
