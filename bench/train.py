"""Training throughput (images/s) of the built-in model's ``train model`` stage, or of control-network
training (``--task controlnet`` / ``t2i-adapter``): 1 process against 2-process DDP (gloo on the CPU), one
run.

Run: ``python bench/train.py [--task model|controlnet|t2i-adapter] [--steps N] [--skip N] [--reps N]
[--batch N]`` (about 2 minutes on 2 idle cores with the defaults, mostly imports; each configuration is a
fresh process tree, in turn, ``--reps`` times).

What is measured:

* **model**: ``shapes_recipe``'s :class:`ModelConfig` (the shipped model: 64² pictures, UNet (48, 96, 96)
  with cross-attention, a 2-layer CLIP text encoder, ε-prediction, min-SNR 5, EMA 0.995, AdamW) in the
  latents of the recipe's VAE architecture, randomly initialised and exported into a temp folder as
  ``train vae`` exports (a trained VAE costs the same per step; the pictures are drawn on the fly as in
  training). Checkpoints and samples are off; the loss, EMA, clipping, logging and ``accelerator.reduce``
  of every step are on.
* **controlnet** / **t2i-adapter**: ``train shapes-control``'s config (the shipped control model's: the
  built-in model frozen, 64² shapes drawn anywhere with their canny maps made on the fly, EMA) with the
  network of that kind, through ``latentstudio train controlnet|t2i-adapter --config``.
* **the same global batch** (``--batch``, the recipe's 32) in every configuration, through the real CLI
  (``latentstudio train model --config``):

  - ``1p×1t``: 1 process, 1 torch thread (the per-core baseline);
  - ``1p×2t``: 1 process, 2 threads (intra-op parallelism);
  - ``2p×1t``: 2 processes × 1 thread, ``torchrun --standalone --nproc-per-node 2``, half the batch each
    (data parallel: DDP all-reduces the gradients in the backward).

* **throughput**: from the run's ``log.jsonl`` (``log_every`` 1; the loop logs the cumulative it/s), the
  images of steps ``--skip`` + 1 … ``--steps`` over their wall time, so start-up, imports and the first
  (warm-up) steps are left out; the median over ``--reps``.

On a 2-core machine this cannot show DDP scaling to more hardware: ``1p×2t`` and ``2p×1t`` use the same two
cores, so 2-process DDP cannot beat 1 process using both cores by more than what intra-op threading wastes
(its threads meet at every operator), and it pays the all-reduce, a second Python interpreter and the
per-process work that does not split (the frozen VAE and text tokenizer are per sample and do split). The
ratio ``2p×1t / 1p×2t`` says which way of using 2 cores trains faster here; ``2p×1t / 1p×1t`` is DDP's
scaling over one core (ideal 2.0). On a busy machine every number is contended: the load averages and each
run's CPU use are printed beside them.

Results: ``bench/results/train.json`` (``train-<task>.json`` for the control tasks).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS_DEFAULT = Path(__file__).resolve().parent / "results" / "train.json"
CONFIGS = {"1p×1t": (1, 1), "1p×2t": (1, 2), "2p×1t": (2, 1)}  # name: (processes, threads per process)


def prepare(folder: Path) -> Path:
    """The recipe's VAE architecture, randomly initialised, exported as ``train vae`` exports it."""
    from latentstudio.train.recipe import shapes_recipe
    from latentstudio.train.tasks import VaeTask

    recipe = shapes_recipe(folder)
    task = VaeTask(recipe.vae)
    task.export(task.modules, folder / "vae")
    return folder / "vae"


def _command(folder: Path, vae: Path, processes: int, threads: int, args: argparse.Namespace) -> list[str]:
    """Write the run's config.json; the ``latentstudio train …`` arguments that run it."""
    from latentstudio.models.builtin import builtin_checkpoint
    from latentstudio.train.control_recipe import control_recipe
    from latentstudio.train.recipe import shapes_recipe

    common = {"output_dir": str(folder / "run"), "steps": args.steps, "batch_size": args.batch // processes,
              "threads": threads, "checkpoint_every": args.steps + 1, "sample_every": 0,
              "log_every": 1}  # fmt: skip
    if args.task == "model":
        config: Any = dataclasses.replace(shapes_recipe(folder).model, vae=str(vae), **common)
        tail = ["train", "model", "--vae", str(vae)]
    else:
        recipe = control_recipe(folder, builtin_checkpoint())
        config = dataclasses.replace(recipe, network=args.task, data_workers=0, lr_steps=(), **common)
        tail = ["train", args.task, "--base", config.base, "--data", "shapes"]
    config.save(folder / "config.json")
    return [*tail, "--config", str(folder / "config.json")]


def run_config(
    folder: Path, vae: Path, processes: int, threads: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One training run of ``args.steps`` steps; its steady throughput and CPU use."""
    if args.batch % processes:
        raise SystemExit(f"--batch {args.batch} does not split over {processes} processes")
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    command = [*launcher, "-m", "latentstudio.cli", *_command(folder, vae, processes, threads, args)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HOME": str(folder / "hf-home")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (folder / "run" / "log.jsonl").read_text().splitlines()]
    at = {r["step"]: r["step"] / r["it_s"] for r in records}  # seconds from the first step to the end of each
    steady = args.steps - args.skip
    seconds = at[args.steps] - at[args.skip]
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "images_s": steady * args.batch / seconds,
        "step_s": seconds / steady,
        "process_wall_s": wall,
        "cpu_use": cpu / (wall * processes * threads),
        "final_loss": records[-1]["loss"],
    }


def report(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    summary = {name: statistics.median(r["images_s"] for r in results) for name, results in runs.items()}
    print(f"\n{'':8s} {'images/s':>9s} {'s/step':>8s} {'CPU use':>8s}  (median of {len(runs['1p×1t'])})")
    for name, results in runs.items():
        step = statistics.median(r["step_s"] for r in results)
        use = statistics.median(r["cpu_use"] for r in results)
        print(f"{name:8s} {summary[name]:9.2f} {step:8.3f} {use:8.0%}")
    ratios = {
        "ddp_over_1p2t": summary["2p×1t"] / summary["1p×2t"],
        "ddp_over_1p1t": summary["2p×1t"] / summary["1p×1t"],
        "threads_over_1p1t": summary["1p×2t"] / summary["1p×1t"],
    }
    print(f"2-process DDP / 1 process × 2 threads   {ratios['ddp_over_1p2t']:.3f}")
    print(f"2-process DDP / 1 process × 1 thread    {ratios['ddp_over_1p1t']:.3f}  (ideal 2.0)")
    print(f"1 process × 2 threads / × 1 thread      {ratios['threads_over_1p1t']:.3f}  (ideal 2.0)")
    return {**{f"{k}_images_s": v for k, v in summary.items()}, **ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("model", "controlnet", "t2i-adapter"), default="model")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--skip", type=int, default=4, help="first steps left out of the throughput")
    parser.add_argument("--reps", type=int, default=1, help="runs of each configuration, in turn")
    parser.add_argument("--batch", type=int, default=32, help="global batch (the model recipe's 32)")
    parser.add_argument("--out", type=Path, default=RESULTS_DEFAULT)
    args = parser.parse_args(argv)
    if args.task != "model" and args.out == RESULTS_DEFAULT:
        args.out = RESULTS_DEFAULT.with_name(f"train-{args.task}.json")
    if not 0 <= args.skip < args.steps:
        raise SystemExit("--skip must be in [0, --steps)")
    import torch

    print(f"torch {torch.__version__}; {os.cpu_count()} CPUs, load {os.getloadavg()}")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        vae = prepare(Path(tmp))
        for rep in range(args.reps):
            for name, (processes, threads) in CONFIGS.items():
                folder = Path(tmp) / f"{name}-{rep}"
                result = run_config(folder, vae, processes, threads, args)
                runs[name].append(result)
                line = f"{result['images_s']:.2f} images/s, CPU use {result['cpu_use']:.0%}"
                print(f"  {name} rep {rep}: {line}, load {os.getloadavg()[0]:.1f}", flush=True)
    summary = report(runs)
    print(f"load after: {os.getloadavg()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"torch": torch.__version__, "cpus": os.cpu_count(), "task": args.task, "steps": args.steps,
               "skip": args.skip,
               "batch": args.batch, "raw": runs, "summary": summary}  # fmt: skip
    args.out.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
