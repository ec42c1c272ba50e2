"""End-to-end txt2img wall time: our ``pipeline.run`` against diffusers' ``StableDiffusionPipeline``, one run.

Run: ``python bench/txt2img.py [--steps N] [--reps N] [--sizes tiny,mid] [--threads N]`` (about 4 minutes
on 2 cores with the defaults; ~1.5 GB of RAM and of temp disk).

What is measured (everything in the same process and run, so the ratios hold on a noisy machine):

* **models**: random-weight SD1-structure checkpoints, built with ``synthetic.build_components`` (real
  diffusers / transformers init plus seeded noise, so activations are realistic), written in the original
  single-file layout to a temp file and loaded with ``loader.load_checkpoint`` (CPU, fp32). Both pipelines
  get the very same modules, so only the code around them differs.

  - ``tiny``: ``synthetic.tiny_spec(Family.SD1)``, 64×64 image (8×8 latents);
  - ``mid``: SD1's block structure at reduced width: UNet ``[160, 320, 640, 640]``, 2 layers per block,
    8 heads, cross-attention 384; CLIP text encoder 12 layers × 384 (6 heads, MLP 1536); the full SD1 VAE
    structure at half width ``[64, 128, 256, 256]``; 256×256 image (32×32 latents); 276 M parameters.

* **txt2img**, per model and sampler: the same prompt, negative prompt, seed, ``--steps`` (20), CFG 7 and
  sampler, ours against diffusers with the equivalent scheduler (tests/test_pipeline.py checks the pairs):

  - ``DPM++ 2M Karras`` ↔ ``DPMSolverMultistepScheduler(use_karras_sigmas=True, algorithm_type=
    "dpmsolver++", final_sigmas_type="zero")``;
  - ``Euler Karras`` ↔ ``EulerDiscreteScheduler(use_karras_sigmas=True)`` (A1111's "Automatic" Euler
    schedule interpolates σ in log space, diffusers' default in linear space: not the same sigmas).

  Diffusers gets A1111's CPU noise for the seed (``ImageRNG(...).first()``, drawn inside the timed call, as
  ours draws it) as ``latents``; both return PIL images. One warm-up call of each pipeline (2 steps) per
  model, then ``--reps`` timed calls of each (the tiny model: 3 × ``--reps``), alternating which pipeline
  goes first. Reported: medians of the end-to-end time, of the per-step time (the median interval between
  consecutive step callbacks: one UNet call on the CFG batch of 2 plus the sampler update) and of the
  rest (total − steps × per-step: text encoding, schedule, noise, VAE decode, PIL conversion).
* **floor**: the UNet alone on the CFG batch (``unet(x[2], t[2], context[2])``, median of 3 after a
  warm-up): what a step cannot go below without changing the model's kernels.
* **parity**: the max |Δ| of the two pipelines' pixels (0-255) per sampler; ≤ 2 makes the timings an
  apples-to-apples comparison (a larger value is printed as a MISMATCH).

Goal (from the issue): ours / diffusers ≤ 1.0 end to end. Results: ``bench/results/txt2img.json``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed, sharp focus"
NEGATIVE = "blurry, low quality, watermark"
SEED = 1234
CFG = 7.0
WARMUP_STEPS = 2
FLOOR_REPS = 3
PIXEL_GOAL = 2
RESULTS_DEFAULT = Path(__file__).resolve().parent / "results" / "txt2img.json"
Metrics = dict[str, Any]
Pipeline = Callable[[int, list[float]], np.ndarray]  # (steps, step timestamps out) -> pixels HWC uint8


@dataclass(frozen=True)
class Size:
    """One benchmarked model: its spec, the image side and how many timed reps per ``--reps``."""

    name: str
    side: int
    rep_factor: int
    description: str


SIZES = {
    "tiny": Size("tiny", 64, 3, "synthetic.tiny_spec(SD1), 64×64"),
    "mid": Size("mid", 256, 1, "SD1 structure, UNet [160,320,640,640], CLIP 12×384, VAE ½ width, 256×256"),
}
SAMPLERS = {  # label -> (our sampler, our schedule)
    "DPM++ 2M Karras": ("DPM++ 2M", "Karras"),
    "Euler Karras": ("Euler", "Karras"),
}


# -- models ------------------------------------------------------------------------------------------------
def model_spec(size: str) -> Any:
    """The ``ModelSpec`` of a benchmarked size."""
    from latentstudio.models import synthetic
    from latentstudio.models.families import Family

    if size == "tiny":
        return synthetic.tiny_spec(Family.SD1)
    full = synthetic.full_spec(Family.SD1)
    unet = {**full.unet, "block_out_channels": [160, 320, 640, 640], "cross_attention_dim": 384}
    vae = {**full.vae, "block_out_channels": [64, 128, 256, 256]}
    text = {**full.text["text_encoder"], "hidden_size": 384, "intermediate_size": 1536}
    text.update(num_attention_heads=6, num_hidden_layers=12)
    return synthetic.ModelSpec(Family.SD1, unet, vae, {"text_encoder": text})


def build_and_load(size: str, folder: Path) -> tuple[Any, Metrics]:
    """Write the size's random-weight checkpoint to ``folder`` and load it with our loader (CPU, fp32)."""
    from latentstudio.models import loader, synthetic

    spec = model_spec(size)
    start = time.perf_counter()
    unet, vae, encoders = synthetic.build_components(spec, seed=0)
    state = synthetic.single_file_state(spec.family, unet, vae, encoders)
    path = synthetic.write_checkpoint(folder / f"bench-{size}.safetensors", state)
    parameters = sum(v.numel() for k, v in state.items() if k != "alphas_cumprod")
    del unet, vae, encoders, state
    gc.collect()
    built = time.perf_counter() - start
    start = time.perf_counter()
    components = loader.load_checkpoint(path, device=torch.device("cpu"), dtype=torch.float32)
    loaded = time.perf_counter() - start
    return components, {"parameters": parameters, "build_seconds": built, "load_seconds": loaded}


# -- the two pipelines -------------------------------------------------------------------------------------
def ours(components: Any, sampler: str, side: int) -> Pipeline:
    """Our txt2img for one sampler: ``(steps, stamps) -> pixels``, a timestamp appended per step."""
    from latentstudio.pipeline.params import GenerationParams
    from latentstudio.pipeline.run import ModelIdentity, StepInfo, run

    name, schedule = SAMPLERS[sampler]
    identity = ModelIdentity("bench")

    def call(steps: int, stamps: list[float]) -> np.ndarray:
        def on_step(_: StepInfo) -> None:
            stamps.append(time.perf_counter())

        params = GenerationParams(
            prompt=PROMPT, negative_prompt=NEGATIVE, sampler=name, scheduler=schedule, steps=steps,
            cfg_scale=CFG, seed=SEED, width=side, height=side,
        ).resolved()  # fmt: skip
        image = run(params, components, identity=identity, on_step=on_step).images[0]
        return np.asarray(image)

    return call


def _scheduler(sampler: str) -> Any:
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    # steps_offset=1: what StableDiffusionPipeline sets anyway (with a FutureWarning) when it is 0
    schedule = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
    if sampler == "DPM++ 2M Karras":
        return DPMSolverMultistepScheduler(
            **schedule, use_karras_sigmas=True, algorithm_type="dpmsolver++", final_sigmas_type="zero"
        )
    return EulerDiscreteScheduler(**schedule, use_karras_sigmas=True)


def diffusers(components: Any, sampler: str, side: int) -> Pipeline:
    """diffusers' ``StableDiffusionPipeline`` on our loaded modules, fed A1111's CPU noise for the seed."""
    from diffusers import StableDiffusionPipeline

    from latentstudio.samplers.noise import ImageRNG

    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoders["text_encoder"],
        tokenizer=components.tokenizers["text_encoder"], unet=components.unet, scheduler=_scheduler(sampler),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    latent = side // 8

    def call(steps: int, stamps: list[float]) -> np.ndarray:
        def on_step_end(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            stamps.append(time.perf_counter())
            return kwargs

        noise = ImageRNG((4, latent, latent), [SEED]).first()
        image = pipe(
            PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=CFG, height=side,
            width=side, latents=noise, callback_on_step_end=on_step_end,
        ).images[0]  # fmt: skip
        return np.asarray(image)

    return call


# -- measurement -------------------------------------------------------------------------------------------
def timed(pipeline: Pipeline, steps: int) -> tuple[Metrics, np.ndarray]:
    """One call: end-to-end seconds and the median interval between consecutive step callbacks."""
    gc.collect()
    stamps: list[float] = []
    cpu, start = time.process_time(), time.perf_counter()
    pixels = pipeline(steps, stamps)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    intervals = [b - a for a, b in itertools.pairwise(stamps)]
    step = statistics.median(intervals) if intervals else float("nan")
    return {"seconds": seconds, "cpu_seconds": cpu, "step_seconds": step, "steps_seen": len(stamps)}, pixels


def unet_floor(components: Any, side: int) -> list[float]:
    """Seconds of the bare UNet on the CFG batch of 2 (after one warm-up call)."""
    unet, generator = components.unet, torch.Generator().manual_seed(0)
    x = torch.randn((2, 4, side // 8, side // 8), generator=generator)
    context = torch.randn((2, 77, unet.config.cross_attention_dim), generator=generator)
    t = torch.tensor([500.0, 500.0])
    times = []
    with torch.inference_mode():
        for _ in range(FLOOR_REPS + 1):
            start = time.perf_counter()
            unet(x, t, encoder_hidden_states=context, return_dict=False)
            times.append(time.perf_counter() - start)
    return times[1:]


def bench_size(size: Size, folder: Path, steps: int, reps: int) -> Metrics:
    """Every sampler of one model: warm-up, alternating timed reps, parity; returns the raw results."""
    print(f"\n[{size.name}] {size.description}: building and loading ...", flush=True)
    components, model = build_and_load(size.name, folder)
    print(
        f"  {model['parameters'] / 1e6:.1f} M parameters; built {model['build_seconds']:.1f} s, "
        f"loaded {model['load_seconds']:.2f} s",
        flush=True,
    )
    makers = {"ours": ours, "diffusers": diffusers}
    result: Metrics = {"model": model, "samplers": {}}
    for k, sampler in enumerate(SAMPLERS):
        pipes = {name: make(components, sampler, size.side) for name, make in makers.items()}
        if k == 0:
            for pipe in pipes.values():
                timed(pipe, WARMUP_STEPS)
        runs: dict[str, list[Metrics]] = {name: [] for name in pipes}
        pixels: dict[str, np.ndarray] = {}
        order = list(pipes)
        for rep in range(reps * size.rep_factor):
            for name in order if rep % 2 == 0 else order[::-1]:
                metrics, image = timed(pipes[name], steps)
                runs[name].append(metrics)
                pixels.setdefault(name, image)
        diff = int(np.abs(pixels["ours"].astype(np.int16) - pixels["diffusers"].astype(np.int16)).max())
        medians = {n: statistics.median(r["seconds"] for r in v) for n, v in runs.items()}
        print(
            f"  {sampler:<16} ours {medians['ours']:.3f} s, diffusers {medians['diffusers']:.3f} s, "
            f"max |Δpixel| {diff}",
            flush=True,
        )
        result["samplers"][sampler] = {"runs": runs, "max_abs_pixel_diff": diff}
    result["unet_floor_seconds"] = unet_floor(components, size.side)
    return result


# -- report ------------------------------------------------------------------------------------------------
def _med(values: list[float]) -> float:
    return statistics.median(values)


def summarize(results: dict[str, Metrics], steps: int, threads: int) -> list[Metrics]:
    """One row per (model, sampler) with each pipeline's medians, and the ratios ours / diffusers."""
    rows = []
    for size, result in results.items():
        floor = _med(result["unet_floor_seconds"])
        for sampler, data in result["samplers"].items():
            row: Metrics = {"size": size, "sampler": sampler, "floor": floor}
            row["diff"] = data["max_abs_pixel_diff"]
            for name, runs in data["runs"].items():
                total, step = _med([r["seconds"] for r in runs]), _med([r["step_seconds"] for r in runs])
                row[name] = {
                    "total": total,
                    "min": min(r["seconds"] for r in runs),
                    "step": step,
                    "rest": total - steps * step,
                    "cpu_use": _med([r["cpu_seconds"] / (r["seconds"] * threads) for r in runs]),
                    "reps": len(runs),
                }
            for key in ("total", "min", "step"):
                row[f"ratio_{key}"] = row["ours"][key] / row["diffusers"][key]
            rows.append(row)
    return rows


def print_report(rows: list[Metrics], steps: int, load: tuple[list[float], list[float]]) -> None:
    """The table of medians, the ratios with the goal, the parity check and the caveats."""
    print(f"\nmedians over the timed reps; {steps} steps, CFG {CFG}, batch 1 (UNet batch 2)")
    head = f"{'model':<5} {'sampler':<16} {'pipeline':<10} {'reps':>4} {'total s':>8} {'min s':>8}"
    print(f"{head} {'step ms':>8} {'rest s':>7} {'step/UNet':>9} {'CPU use':>7}")
    for row in rows:
        for name in ("ours", "diffusers"):
            m = row[name]
            print(
                f"{row['size']:<5} {row['sampler']:<16} {name:<10} {m['reps']:>4} {m['total']:>8.3f} "
                f"{m['min']:>8.3f} {m['step'] * 1000:>8.1f} {m['rest']:>7.3f} "
                f"{m['step'] / row['floor']:>9.3f} {m['cpu_use']:>7.0%}"
            )
        print(f"{'':<5} {'':<16} {'UNet alone':<10} {'':>4} {'':>8} {'':>8} {row['floor'] * 1000:>8.1f}")
    print(f"\n{'ratio ours / diffusers':<28} {'median':>7} {'min':>7} {'step':>7}  goal (median)  max |Δpx|")
    for row in rows:
        met = "MET" if row["ratio_total"] <= 1.0 else "MISSED"
        parity = "ok" if row["diff"] <= PIXEL_GOAL else "MISMATCH: not apples to apples"
        print(
            f"{row['size'] + ' ' + row['sampler']:<28} {row['ratio_total']:>7.3f} {row['ratio_min']:>7.3f} "
            f"{row['ratio_step']:>7.3f}  <= 1.0 {met:<6}  {row['diff']:>3} (<= {PIXEL_GOAL}: {parity})"
        )
    before, after = (", ".join(f"{v:.2f}" for v in values) for values in load)
    print(
        "\nstep = median interval between step callbacks (one UNet call on the CFG batch + the update);"
        "\nrest = total - steps × step (text encoding, schedule, noise, VAE decode, PIL);"
        "\nstep/UNet = step over the bare UNet call on the same batch (the floor, measured in this run);"
        "\nCPU use = process CPU time / (wall × threads): well under 100% means other processes competed,"
        "\nthen trust the min and step ratios more than the medians."
        f"\nload average (1, 5, 15 min) before: {before}; after: {after}."
    )


# -- entry point -------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Benchmark txt2img: ours against diffusers' pipeline.")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--reps", type=int, default=3, help="timed reps per pipeline (tiny: 3×; default 3)")
    parser.add_argument("--sizes", default="tiny,mid", help="comma-separated: tiny, mid (default both)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS_DEFAULT, help="results JSON")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        parser.error(f"--sizes: unknown {unknown or sizes}; allowed: {', '.join(SIZES)}")
    if args.steps < WARMUP_STEPS or args.reps < 1:
        parser.error(f"--steps must be >= {WARMUP_STEPS} and --reps >= 1")
    args.sizes = sizes
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the report and write the results as JSON."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import diffusers as diffusers_package
    import transformers

    print(
        f"torch {torch.__version__}, diffusers {diffusers_package.__version__}, transformers "
        f"{transformers.__version__}; {os.cpu_count()} CPUs, {torch.get_num_threads()} threads",
        flush=True,
    )
    folder, load_before = Path(tempfile.mkdtemp(prefix="bench-txt2img-")), list(os.getloadavg())
    try:
        results = {name: bench_size(SIZES[name], folder, args.steps, args.reps) for name in args.sizes}
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the loaded weights stay mapped until exit
    rows = summarize(results, args.steps, args.threads)
    print_report(rows, args.steps, (load_before, list(os.getloadavg())))
    info = {"torch": torch.__version__, "threads": args.threads, "steps": args.steps, "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**info, "results": results, "summary": rows}, indent=2), encoding="utf-8")
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
