"""schemathesis against the running server's OpenAPI schema: no request it can make gets a 5xx.

Two runs over real HTTP: every operation but the generation endpoints with valid and invalid data, and
the generation endpoints (txt2img, img2img, POST jobs) with invalid data only — valid generated payloads
would queue jobs of up to 2048² × 150 steps, which the other API tests cover with small ones.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from latentstudio.config import Settings
from latentstudio.models.families import Family
from tests.conftest import MakeTiny
from tests.serving import Served, models_root, serve

GENERATION = r"txt2img|img2img|/api/v1/jobs$"


@pytest.fixture(scope="module")
def server(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("schemathesis")
    models = models_root(make_tiny(Family.SD1).path, root)
    # sides ≤ 64: a generated payload that is valid after all (a null where the schema says string is taken
    # as the default, so some "negative" payloads are valid) queues a 64² job, never a 512² × 50-step one
    # that outlasts schemathesis's request timeout
    settings = Settings(models_dir=models, data_dir=root / "data", device="cpu", max_side=64)
    with serve(settings) as served:
        yield served


def _schemathesis(base: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()", "run"]
    run_args = [f"{base}/openapi.json", "--checks", "not_a_server_error", "--generation-deterministic", *args]
    return subprocess.run(
        [*command, *run_args], capture_output=True, text=True, timeout=600, cwd=cwd, check=False
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--exclude-path-regex", f"{GENERATION}|/events", "--max-examples", "10"),
        ("--include-path-regex", GENERATION, "--mode", "negative", "--max-examples", "15"),
    ],
    ids=["all-but-generation", "generation-invalid"],
)
def test_no_request_gets_a_server_error(server: Served, args: tuple[str, ...], tmp_path: Path) -> None:
    result = _schemathesis(server.base, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Test cases:" in result.stdout  # the run generated and sent requests
    assert "Server error" not in result.stdout
