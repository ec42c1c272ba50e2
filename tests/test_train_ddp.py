"""DDP on this CPU (gloo): ``latentstudio train model`` in 2 processes by ``accelerate launch --multi_gpu
--num_processes 2`` against a single process with the same global batch, and by ``torchrun`` killed
(SIGKILL, launcher and workers) after a checkpoint and launched again, against the uninterrupted run.

2 processes × ``grad_accum`` 1 × ``batch_size`` 2 and 1 process × ``grad_accum`` 2 × ``batch_size`` 2 see
the same samples and the same random draws (the loop numbers a step's micro-batches by slot = micro ×
processes + rank); DDP averages the two gradients where accumulation sums the halves, so the losses and
weights agree to float rounding. Nothing of accelerate or torch.distributed is replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentstudio.train.config import ModelConfig, VaeConfig
from latentstudio.train.loop import train
from latentstudio.train.tasks import ModelTask, VaeTask

STEPS, CHECKPOINT_EVERY, PER_PROCESS = 12, 3, 2
TINY = {"resolution": 32, "unet_channels": (16, 32), "unet_attention": (True, False), "norm_groups": 4,
        "heads": 2, "text_width": 16, "text_layers": 1, "text_heads": 2, "threads": 1, "steps": STEPS,
        "checkpoint_every": CHECKPOINT_EVERY, "sample_every": 0, "log_every": 1, "warmup": 2, "lr": 2e-3,
        "ema_decay": 0.9, "caption_dropout": 0.3}  # fmt: skip
WEIGHTS = ("modules.safetensors", "ema.safetensors")


@pytest.fixture(scope="module")
def vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny VAE exported as `train vae` exports (the model mode only encodes)."""
    folder = tmp_path_factory.mktemp("vae") / "final"
    task = VaeTask(VaeConfig(resolution=32, channels=(8, 8, 8, 8), norm_groups=4))
    task.export(task.modules, folder)
    return folder


def _config(folder: Path, vae: Path, grad_accum: int, data_workers: int = 0) -> ModelConfig:
    return ModelConfig(output_dir=str(folder), vae=str(vae), batch_size=PER_PROCESS, grad_accum=grad_accum,
                       data_workers=data_workers, **TINY)  # type: ignore[arg-type]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _launch(folder: Path, vae: Path, launcher: str) -> subprocess.Popen[bytes]:
    """2 CPU processes by ``accelerate`` (``accelerate launch --multi_gpu``) or ``torchrun``, in a session
    of their own so that the whole job can be killed; each renders its micro-batches in a data worker
    process (the single-process reference renders inline)."""
    config = folder.parent / f"{folder.name}.json"
    _config(folder, vae, grad_accum=1, data_workers=1).save(config)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port())]  # fmt: skip
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "latentstudio.cli", "train", "model", "--config", str(config), "--vae", str(vae)]
    env = {**os.environ, "HF_HOME": str(folder.parent / "hf-home")}  # no accelerate config of the user's
    with (folder.parent / f"{folder.name}.out").open("ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _finish(process: subprocess.Popen[bytes], folder: Path) -> None:
    try:
        code = process.wait(timeout=500)  # seconds on idle cores; generous for starved ones
    except BaseException:  # also pytest-timeout's: never leave a job running
        _kill_job(process)
        raise
    assert code == 0, (folder.parent / f"{folder.name}.out").read_text()[-4000:]


def _losses(folder: Path) -> dict[int, float]:
    """Step → loss from ``log.jsonl`` (``log_every`` 1; a step logged twice, before and after a resume,
    keeps its last value)."""
    lines = (folder / "log.jsonl").read_text().splitlines()
    return {record["step"]: record["loss"] for record in map(json.loads, lines)}


def _weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(folder / f"checkpoint-{STEPS}" / name))


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc; the launcher starts each worker in its own session)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        for child in children:
            found += _tree(int(child))
    return found


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def _kill_job(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole job, as a scheduler ends it: the launcher's process group and each worker's (the
    launcher is stopped first, so no worker pid is reaped, and reused, before its kill)."""
    os.killpg(process.pid, signal.SIGSTOP)  # the launcher leads its group (start_new_session)
    pids = _tree(process.pid)
    for pid in pids[1:]:
        with contextlib.suppress(ProcessLookupError):  # elastic starts each worker in a session of its own
            os.killpg(pid, signal.SIGKILL)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in pids[1:]):
        assert time.monotonic() < deadline, "workers survived SIGKILL"
        time.sleep(0.05)


def kill_after_checkpoint(job: subprocess.Popen[bytes], folder: Path, step: int, processes: int) -> None:
    """Wait until the job writing ``folder`` (its output in ``<folder>.out``) has written
    ``checkpoint-<step>``, check that it runs at least ``processes`` processes (the launcher and its
    workers), and SIGKILL the whole job."""
    deadline = time.monotonic() + 240
    try:
        while not (folder / f"checkpoint-{step}").is_dir():
            assert job.poll() is None, (folder.parent / f"{folder.name}.out").read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.02)
        assert len(_tree(job.pid)) >= processes, f"expected {processes} processes"
    finally:
        if job.poll() is None:
            _kill_job(job)


@pytest.fixture(scope="module")
def single(vae: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[float], Path]:
    """1 process, ``grad_accum`` 2: the same global batch (4) as 2 processes × 1 × 2."""
    folder = tmp_path_factory.mktemp("single")
    config = _config(folder, vae, grad_accum=2)
    result = train(ModelTask(config), config)
    return result.losses, folder


@pytest.fixture(scope="module")
def ddp(vae: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ddp") / "run"
    _finish(_launch(folder, vae, "accelerate"), folder)
    return folder


def test_two_processes_match_one_process_with_the_same_global_batch(
    single: tuple[list[float], Path], ddp: Path
) -> None:
    losses, folder = single
    assert len(losses) == STEPS
    assert losses[-1] < losses[0]  # it trains
    ddp_losses = _losses(ddp)
    assert sorted(ddp_losses) == list(range(1, STEPS + 1))
    torch.testing.assert_close(
        torch.tensor([ddp_losses[s + 1] for s in range(STEPS)], dtype=torch.float64),
        torch.tensor(losses, dtype=torch.float64), rtol=1e-5, atol=0.0,
    )  # fmt: skip
    config = json.loads((ddp / "config.json").read_text())
    assert (config["grad_accum"], config["batch_size"]) == (1, PER_PROCESS)
    for name in WEIGHTS:
        expected, got = _weights(folder, name), _weights(ddp, name)
        assert expected.keys() == got.keys()
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert (ddp / "final" / "model.safetensors").is_file()


def test_resume_after_the_job_is_killed(vae: Path, ddp: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    kill_after_checkpoint(_launch(folder, vae, "torchrun"), folder, CHECKPOINT_EVERY, processes=3)
    checkpoints = sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))
    assert not (folder / "final").exists(), "the job ended before it was killed"
    assert checkpoints[-1] < STEPS
    logged = len((folder / "log.jsonl").read_text().splitlines())

    _finish(_launch(folder, vae, "torchrun"), folder)
    resumed = [json.loads(line)["step"] for line in (folder / "log.jsonl").read_text().splitlines()[logged:]]
    assert resumed == list(range(checkpoints[-1] + 1, STEPS + 1))  # from the checkpoint, not from 0
    assert _losses(folder) == _losses(ddp)
    for name in WEIGHTS:
        expected, got = _weights(ddp, name), _weights(folder, name)
        assert all(torch.equal(got[key], value) for key, value in expected.items())
    assert (folder / "final" / "model.safetensors").is_file()
