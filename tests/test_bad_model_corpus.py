"""Every malformed model file is one line naming the file and the reason, with bounded memory: a generated
corpus (``tests/bad_model_corpus.py``: hostile safetensors headers, deep nesting, byte flips, truncation,
hostile architecture metadata, odd pickles) through the loader in a process of its own, then the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("LATENTSTUDIO_CORPUS_SEED", "1"))  # another seed replays another corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("corpus")
    result = subprocess.run(
        [sys.executable, "-m", "tests.bad_model_corpus", str(folder), str(SEED)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, [json.loads(line) for line in result.stdout.splitlines()]


def test_every_bad_file_is_refused_in_one_line_naming_it(corpus: tuple[Path, list[dict[str, Any]]]) -> None:
    _, rows = corpus
    files = [r for r in rows if "file" in r]
    assert len(files) >= 100
    crashed = [f"{Path(r['file']).name}: {r['message']}" for r in files if r["outcome"] == "crashed"]
    assert not crashed, "\n".join(crashed)
    refused = [r for r in files if r["outcome"] == "refused"]
    assert len(refused) >= 0.9 * len(files)  # a mutation may leave a valid file (e.g. freq_shift 0)
    for row in refused:
        assert row["message"].startswith(row["file"] + ": "), row
        assert "\n" not in row["message"]


def test_hostile_architecture_values_are_refused_before_any_allocation(
    corpus: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, rows = corpus
    by_name = {Path(r["file"]).name: r["message"] for r in rows if "file" in r}
    expected = {
        "unet-attention_head_dim": "unet.attention_head_dim",
        "text_encoder-max_position_embeddings": "text_encoder.max_position_embeddings",
        "unet-act_fn": "unet.act_fn",
        "unet-block_out_channels": "unet.block_out_channels",
        "text_encoder-num_hidden_layers": "text_encoder.num_hidden_layers",
    }
    for fragment, field in expected.items():
        message = next(m for name, m in by_name.items() if fragment in name)
        assert f"latentstudio.architecture: {field}" in message, message
    # loading the whole corpus costs no more memory than writing it did (the built-in model is 15 MB)
    before = next(r["before_mb"] for r in rows if "before_mb" in r)
    peak = next(r["maxrss_mb"] for r in rows if "maxrss_mb" in r)
    assert peak - before < 512, (before, peak)


def test_the_cli_reports_bad_files_in_one_line_each(
    corpus: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    _, rows = corpus
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    picked = [Path(r["file"]) for r in rows if r.get("outcome") == "refused"][::10]
    for path in picked:
        shutil.copyfile(path, checkpoints / path.name)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    base = ["--models-dir", str(tmp_path / "models"), "--data-dir", str(tmp_path / "data")]
    listed = subprocess.run(
        [sys.executable, "-m", "latentstudio.cli", "models", *base, "--json"],
        capture_output=True, text=True, timeout=600, check=False, env=env,
    )  # fmt: skip
    assert listed.returncode == 1
    assert "Traceback" not in listed.stderr
    errors = [line for line in listed.stderr.splitlines() if line.startswith("error: ")]
    assert sorted(e.split(": ", 2)[1] for e in errors) == sorted(str(checkpoints / p.name) for p in picked)
    generated = subprocess.run(
        [sys.executable, "-m", "latentstudio.cli", "generate", "x", *base, "--steps", "1",
         "--model", picked[0].name, "--device", "cpu", "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, check=False, env=env,
    )  # fmt: skip
    assert generated.returncode == 1
    assert "Traceback" not in generated.stderr
    last = generated.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {checkpoints / picked[0].name}: "), generated.stderr[-2000:]
