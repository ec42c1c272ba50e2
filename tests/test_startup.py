"""What the CLI does at start-up (issue "A fresh install that works", point 6): ``generate`` imports no server
or UI library, the built-in model's sha256 is recorded in the package rather than computed on every run,
and ``--help`` imports no model library. Fresh processes; no timings (bench/startup.py measures those)."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from latentstudio import infotext
from latentstudio.cli import app
from latentstudio.models import builtin
from latentstudio.models.builtin import (
    BUILTIN_FINGERPRINT,
    BUILTIN_NAME,
    BUILTIN_SHA256,
    BUILTIN_SIZE,
    builtin_checkpoint,
    fingerprint,
    known_sha256,
)
from latentstudio.pipeline.images import read_infotext

SERVER_LIBRARIES = ("gradio", "fastapi", "uvicorn", "starlette")

# Runs the console entry point with a spy on the one function every sha256/addnet hash of a file goes
# through, and reports what was hashed and which server libraries were imported.
PROBE = r"""
import json, os, sys
from pathlib import Path
from latentstudio.models import hashes

hashed = []
original = hashes._sha256_stream
def spy(stream):
    hashed.append(str(getattr(stream, "name", stream)))
    return original(stream)
hashes._sha256_stream = spy

from latentstudio import cli
sys.argv = ["latentstudio", *sys.argv[1:]]
code = 0
try:
    cli.main()
except SystemExit as e:
    code = e.code
server = sorted(m for m in sys.modules if m.split(".")[0] in SERVER_LIBRARIES)
Path(os.environ["PROBE_OUT"]).write_text(json.dumps({"code": code, "hashed": hashed, "server": server}))
""".replace("SERVER_LIBRARIES", repr(SERVER_LIBRARIES))


def _probe(tmp_path: Path, *args: str) -> tuple[dict[str, object], subprocess.CompletedProcess[str]]:
    out = tmp_path / "probe.json"
    env = {**os.environ, "PROBE_OUT": str(out)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done


def test_generate_with_the_builtin_model_imports_no_server_and_never_hashes_the_file(tmp_path: Path) -> None:
    """The real command, 1 step, empty models folder and a fresh data folder (an empty hash cache)."""
    models, data = tmp_path / "models", tmp_path / "data"
    models.mkdir()
    result, done = _probe(
        tmp_path, "generate", "a red circle", "--models-dir", str(models), "--data-dir", str(data),
        "--output", str(tmp_path / "outputs"), "--steps", "1", "--seed", "1",
    )  # fmt: skip
    assert result["code"] == 0
    assert result["server"] == []
    assert result["hashed"] == []  # the built-in file (15 MB) is not read to hash it, nor anything else
    cache = data / "cache" / "hashes.json"
    assert not cache.exists() or BUILTIN_NAME not in cache.read_text(encoding="utf-8")
    with Image.open(done.stdout.strip().splitlines()[-1]) as image:
        text = read_infotext(image)
    assert text is not None
    parsed = infotext.parse(text)
    assert parsed["Model hash"] == BUILTIN_SHA256[:10]
    assert parsed["Model"] == "latentstudio-shapes"


def test_generate_in_process_leaves_the_garbage_collector_as_it_was(tmp_path: Path) -> None:
    """Only a process of its own (started by ``main``) freezes its start-up objects; an in-process caller's
    garbage stays collectable."""
    (tmp_path / "models").mkdir()
    frozen = gc.get_freeze_count()
    result = CliRunner().invoke(
        app, ["generate", "a red circle", "--models-dir", str(tmp_path / "models"), "--data-dir",
              str(tmp_path / "data"), "--output", str(tmp_path / "outputs"), "--steps", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert gc.get_freeze_count() == frozen
    assert gc.isenabled()


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["serve", "--help"]])
def test_help_imports_no_model_or_server_library(tmp_path: Path, args: list[str]) -> None:
    code = (
        "import json, sys\nfrom latentstudio import cli\nsys.argv = ['latentstudio', *sys.argv[1:]]\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    heavy = {"torch", "diffusers", "transformers", "huggingface_hub", *SERVER_LIBRARIES}
    assert loaded & heavy == set()


def test_the_recorded_builtin_hash_is_the_shipped_files() -> None:
    """Fails after ``train shapes --ship`` until BUILTIN_SHA256/SIZE/FINGERPRINT are updated (until then the
    new file is hashed on every run with a fresh data folder, correctly but slowly)."""
    path = builtin_checkpoint()
    content = path.read_bytes()
    found = (hashlib.sha256(content).hexdigest(), len(content), fingerprint(path))
    assert found == (BUILTIN_SHA256, BUILTIN_SIZE, BUILTIN_FINGERPRINT), (
        f"{path} changed: in latentstudio/models/builtin/__init__.py set BUILTIN_SHA256 = {found[0]!r}, "
        f"BUILTIN_SIZE = {found[1]}, BUILTIN_FINGERPRINT = {found[2]!r}"
    )
    assert known_sha256(path) == BUILTIN_SHA256


def test_the_record_holds_only_for_the_shipped_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / BUILTIN_NAME
    shutil.copyfile(builtin_checkpoint(), copy)
    assert known_sha256(copy) is None  # the same bytes elsewhere: an ordinary checkpoint, hashed as any
    retrained = bytearray(copy.read_bytes())
    retrained[-1] ^= 0xFF  # other weights, same size (the last 4 KiB are one of the sampled blocks)
    copy.write_bytes(retrained)
    monkeypatch.setattr(builtin, "builtin_checkpoint", lambda: copy)  # as if shipped over the packaged file
    assert fingerprint(copy) != BUILTIN_FINGERPRINT
    assert known_sha256(copy) is None
