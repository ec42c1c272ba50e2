"""The training loop on Hugging Face accelerate: one readable loop for every mode.

A mode is a :class:`Task`: the trainable modules (one ``ModuleDict``), a loss for one micro-batch, sample
images and a final export. The loop owns the rest: the accelerate ``Accelerator`` (devices, DDP/FSDP/
DeepSpeed from ``accelerate launch`` configs, mixed precision, gradient accumulation), AdamW with linear
warm-up, gradient clipping, EMA (kept on the weights' device), checkpoints with exact resume, periodic
samples, a tqdm bar (loss, it/s) and logs (``log.jsonl`` always; TensorBoard too when the ``tensorboard``
package is installed). A task's CPU-side data (pictures, token ids) can be made ahead in ``data_workers``
processes by a torch ``DataLoader``, so a GPU does not wait on one CPU core.

Exact resume: the ``grad_accum × processes`` micro-batches of step ``s`` are numbered by a slot
``micro × processes + rank``; the data and every random draw of a micro-batch are pure functions of
``(seed, s, slot)``, so a resumed run repeats the same batches, noise and updates as an uninterrupted one,
and 2 processes × ``grad_accum`` 1 see exactly the samples and draws of 1 process × ``grad_accum`` 2
(the same global batch; ``tests/test_train_ddp.py``).

On a machine without an accelerator the ``Accelerator`` is built with ``cpu=True``: accelerate only
takes a ``torchrun`` / ``accelerate launch`` environment there as multi-CPU DDP (gloo) when told so;
otherwise every launched process trains alone, into the same folder (refused below).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from accelerate import Accelerator
from accelerate.utils import is_tensorboard_available
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from latentstudio.train.config import LoopConfig


@dataclass(frozen=True)
class MicroBatch:
    """Where a micro-batch sits: its samples are ``first … first + size − 1`` of the dataset, and its
    random draws come from ``generator`` (CPU). ``data``: ``task.data(first, size)`` when the task has a
    data function (made ahead by the loader's workers), else None."""

    step: int
    first: int
    size: int
    generator: torch.Generator
    data: Any = None


DataFn = Callable[[int, int], Any]


class Task(Protocol):
    """One training mode (see :mod:`latentstudio.train.tasks`).

    ``data``: None, or the CPU half of the loss as a pure, picklable function of ``(first, size)`` (pictures,
    token ids): the loop runs it ahead of the step in ``config.data_workers`` processes, so a GPU is not
    left waiting on the CPU. A pure function of the indices, the results do not depend on the workers.
    """

    modules: torch.nn.ModuleDict
    data: DataFn | None

    def loss(self, modules: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
        """The scalar loss of one micro-batch (``modules``: the task's own, called from the forward of
        the module accelerate prepared, so DDP synchronises the gradients of its backward)."""
        ...

    def samples(self, modules: torch.nn.ModuleDict, path: Path) -> None:
        """Write sample images of the current (EMA) weights to ``path`` (a PNG)."""
        ...

    def export(self, modules: torch.nn.ModuleDict, folder: Path) -> None:
        """Write the final artefacts of the run into ``folder``."""
        ...


class _Objective(torch.nn.Module):
    """The task's modules with its loss as ``forward``: what the loop hands to ``accelerator.prepare``.
    DDP all-reduces gradients only in the backward of a forward it ran itself (a loss computed from the
    unwrapped modules trains every process on its own shard), mixed precision's autocast wraps the
    prepared ``forward``, and so do FSDP and DeepSpeed."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.inner = task.modules
        self._loss = task.loss

    def forward(self, batch: MicroBatch) -> torch.Tensor:
        return self._loss(self.inner, batch)


def effective_precision(requested: str) -> str:
    """``requested`` (``"no"``, ``"fp16"``, ``"bf16"``) where an accelerator is present; ``"no"`` (fp32, with
    a warning) without one: fp16 autocast needs a GPU, and bf16 on a CPU runs up to ~40× slower than fp32
    even where the CPU reports bf16 instructions (this project's CPUs do)."""
    if requested == "no" or torch.accelerator.is_available():
        return requested
    warnings.warn(
        f"mixed_precision {requested!r} ignored without a GPU: training in fp32 "
        "(bf16 on a CPU is up to ~40x slower, fp16 needs a GPU)",
        stacklevel=2,
    )
    return "no"


def _inner(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.ModuleDict:
    """The task's ModuleDict inside the prepared model."""
    return cast(_Objective, accelerator.unwrap_model(model)).inner


@dataclass(frozen=True)
class TrainResult:
    """``losses``: the mean loss of every step run in this call (index 0 = ``first_step``)."""

    first_step: int
    losses: list[float]
    seconds: float
    output_dir: Path


def _generator(config: LoopConfig, step: int, slot: int) -> torch.Generator:
    """The generator of micro-batch ``slot`` of ``step`` (slot 0 of a step: the seed of single-process,
    no-accumulation runs before slots, so the built-in model's recipe draws what it drew)."""
    return torch.Generator().manual_seed((config.seed * 1_000_003 + step) * 65_536 + slot)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def _update_ema(ema: dict[str, torch.Tensor], module: torch.nn.Module, decay: float, updates: int) -> None:
    """EMA with warm-up: d = min(decay, (1 + n)/(10 + n)) after n updates (in place, on ``ema``, which
    lives on the module's device; two fused multi-tensor ops, not two kernels per tensor)."""
    d = min(decay, (1 + updates) / (10 + updates))
    state = module.state_dict()
    keys = [key for key in ema if key in state]
    with torch.no_grad():
        averages = [ema[key] for key in keys]
        torch._foreach_mul_(averages, d)
        torch._foreach_add_(averages, [state[key].detach().float() for key in keys], alpha=1 - d)


def _with_weights(module: torch.nn.ModuleDict, ema: dict[str, torch.Tensor] | None) -> torch.nn.ModuleDict:
    """A copy of ``module`` with the EMA weights (or ``module`` itself without EMA), in eval mode."""
    if ema is None:
        return module
    averaged = copy.deepcopy(module)
    averaged.load_state_dict(ema, strict=False)
    return averaged.eval()


def _latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def _save_checkpoint(
    folder: Path, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
    ema: dict[str, torch.Tensor] | None,
) -> None:  # fmt: skip
    """``checkpoint-<step>/``: weights and EMA (safetensors), optimizer state (torch, tensors only), step."""
    tmp = folder / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
              str(tmp / "modules.safetensors"))  # fmt: skip
    if ema is not None:
        save_file({k: v.cpu() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}), encoding="utf-8")
    tmp.rename(folder / f"checkpoint-{step}")


def _load_checkpoint(
    path: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: dict[str, torch.Tensor] | None
) -> int:
    """Restore a checkpoint written by :func:`_save_checkpoint`; returns its step. Weights-only loading."""
    module.load_state_dict(load_file(str(path / "modules.safetensors")))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    if ema is not None:
        device = next(iter(ema.values())).device
        ema.update({k: v.to(device) for k, v in load_file(str(path / "ema.safetensors")).items()})
    step: int = json.loads((path / "state.json").read_text(encoding="utf-8"))["step"]
    return step


def train(task: Task, config: LoopConfig, *, stop_at: int | None = None) -> TrainResult:
    """Run (or resume, from the newest ``checkpoint-*`` in ``config.output_dir``) ``config.steps`` steps.

    ``stop_at``: return after that step without the final export (for tests of resume; a checkpoint is
    written there).
    """
    out = Path(config.output_dir)
    if config.threads:
        torch.set_num_threads(config.threads)
    tracker = "tensorboard" if is_tensorboard_available() else None
    precision = effective_precision(config.mixed_precision)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum, mixed_precision=precision,
        log_with=tracker, project_dir=str(out), cpu=not torch.accelerator.is_available(),
    )  # fmt: skip
    launched = os.environ.get("WORLD_SIZE")  # torchrun / accelerate launch: never two runs in one folder
    if launched is not None and int(launched) != accelerator.num_processes:
        raise RuntimeError(f"launched as {launched} processes but accelerate runs "
                           f"{accelerator.num_processes}: check the accelerate config")  # fmt: skip
    main = accelerator.is_main_process
    if main:
        config.save(out / "config.json")
    module = task.modules
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    ema = _state(module) if config.ema_decay > 0 else None
    latest = _latest_checkpoint(out)
    start = _load_checkpoint(latest, module, optimizer, ema) if latest is not None else 0
    model, optimizer = accelerator.prepare(_Objective(task), optimizer)
    if ema is not None:  # beside the weights (the module is on the accelerator's device now)
        ema = {k: v.to(accelerator.device) for k, v in ema.items()}
    if tracker:
        accelerator.init_trackers("latentstudio")
    end = config.steps if stop_at is None else min(stop_at, config.steps)
    losses = _run_steps(task, config, accelerator, model, optimizer, ema, start, end)
    accelerator.wait_for_everyone()
    seconds = losses.pop()
    unwrapped = _inner(accelerator, model)
    if main and end == config.steps and stop_at is None:
        task.export(_with_weights(unwrapped, ema), out / "final")
    accelerator.end_training()
    return TrainResult(start, losses, seconds, out)


class _Prefetch(Dataset[Any]):
    """Micro-batch ``i`` of a run: ``data(first_i, size)`` (a map-style dataset for the DataLoader)."""

    def __init__(self, data: DataFn, firsts: list[int], size: int) -> None:
        self.data, self.firsts, self.size = data, firsts, size

    def __len__(self) -> int:
        return len(self.firsts)

    def __getitem__(self, index: int) -> Any:
        return self.data(self.firsts[index], self.size)


def _first(config: LoopConfig, step: int, slot: int, world: int) -> int:
    """Index of the first sample of micro-batch ``slot`` of ``step``."""
    return (step * config.grad_accum * world + slot) * config.batch_size


def _data(task: Task, config: LoopConfig, firsts: list[int]) -> Iterator[Any]:
    """The task's data of the micro-batches starting at ``firsts``, in order (None without a data
    function), made ``data_workers`` processes ahead of the loop (in the loop without workers)."""
    if task.data is None:
        return iter([None] * len(firsts))
    if config.data_workers <= 0:
        return (task.data(first, config.batch_size) for first in firsts)
    dataset = _Prefetch(task.data, firsts, config.batch_size)
    loader = DataLoader(dataset, batch_size=None, num_workers=config.data_workers, prefetch_factor=4)
    return iter(loader)


def _run_steps(  # noqa: PLR0917 - private: the loop's state, passed once
    task: Task, config: LoopConfig, accelerator: Accelerator, model: torch.nn.Module,
    optimizer: torch.optim.Optimizer, ema: dict[str, torch.Tensor] | None, start: int, end: int,
) -> list[float]:  # fmt: skip
    """Steps ``start … end − 1``; returns their mean losses followed by the elapsed seconds."""
    out, rank, world = Path(config.output_dir), accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    log = (out / "log.jsonl").open("a", encoding="utf-8") if main else None
    bar = tqdm(range(start, end), initial=start, total=config.steps, disable=not main, unit="step")
    losses: list[float] = []
    slots = [micro * world + rank for micro in range(config.grad_accum)]
    data = _data(
        task, config, [_first(config, step, slot, world) for step in range(start, end) for slot in slots]
    )
    began = time.perf_counter()
    for step in bar:
        lr = config.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for slot in slots:
            first = _first(config, step, slot, world)
            batch = MicroBatch(step, first, config.batch_size, _generator(config, step, slot), next(data))
            with accelerator.accumulate(model):
                loss = model(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            total += float(accelerator.reduce(loss.detach(), reduction="mean")) / config.grad_accum
        losses.append(total)
        unwrapped = _inner(accelerator, model)
        if ema is not None:
            _update_ema(ema, unwrapped, config.ema_decay, step)
        done = step + 1
        if done % config.log_every == 0 or done == end:
            elapsed = time.perf_counter() - began  # since this call began (a resumed run starts anew)
            rate = (done - start) / elapsed
            recent = sum(losses[-config.log_every :]) / len(losses[-config.log_every :])
            bar.set_postfix(loss=f"{recent:.4f}")
            record = {"step": done, "loss": recent, "lr": lr, "it_s": rate,
                      "images_s": rate * config.batch_size * config.grad_accum * world,
                      "elapsed_s": elapsed}  # fmt: skip
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=done)
        if main and (done % config.checkpoint_every == 0 or done == end):
            _save_checkpoint(out, done, unwrapped, optimizer, ema)
        if main and config.sample_every and done % config.sample_every == 0:
            task.samples(_with_weights(unwrapped, ema), out / "samples" / f"step-{done:06d}.png")
        accelerator.wait_for_everyone()
    if log is not None:
        log.close()
    return [*losses, time.perf_counter() - began]
