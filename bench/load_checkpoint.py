"""Load a full-size SD1.5 single-file checkpoint: our loader against safetensors baselines, one run.

Run: ``python bench/load_checkpoint.py [--out DIR] [--dtype float16|float32] [--keep] [--reps N]``.

What is measured (everything in the same run, so the ratios hold on a noisy machine):

* **build**: a random-weight SD1.5 checkpoint in the original single-file layout (1131 tensors, 1.07 G
  parameters: ~2.1 GB in fp16), written with ``safetensors.torch.save_file``. The modules are built on the
  ``meta`` device (no allocation, no init); only their key layout (``synthetic.single_file_state``) and
  shapes are used, then each tensor is filled with seeded ``randn * 0.02`` in the file dtype.
* **cold loads**, each in a fresh subprocess that imports everything first and then times only the load
  (so interpreter start and imports are excluded, first-call costs inside the load are not). Workers run in
  alternating order over ``--reps`` repetitions; medians are reported.

  - ``load_file lazy``: ``safetensors.torch.load_file`` alone (an mmap: no tensor byte is read);
  - ``load_file + read``: then every tensor copied into a scratch tensor that is dropped at once (reads
    every byte once, keeps nothing but the mapped file pages);
  - ``load_file + to(D)``: then every tensor converted to the other dtype D and kept (the least work a
    converting load can do, done the naive way: the whole file stays mapped until the end);
  - ``pread + to(D)``: ``safe_open(backend="pread")``, one tensor read and converted at a time (what a
    converting load can achieve for peak memory);
  - ``ours -> fp16`` / ``ours -> fp32``: ``loader.load_checkpoint(path, device=cpu, dtype=...)``. The load
    in the file's dtype is zero-copy and lazy, so it is followed (untimed in "load") by a read of every
    parameter, to show where the deferred I/O is paid: ``load + read`` compares with ``load_file + read``.
    The fp32 load is followed by two UNet steps (64×64 latents, batch 1): ``load + (step 1 - step 2)`` is
    its end-to-end cost, the first step paying any lazy cost left.

  Peak RSS: the kernel's high-water mark (VmHWM) is reset through ``/proc/self/clear_refs`` after the
  imports and read after the load; the RSS at the reset is subtracted.
* **warm switch**: a ``ModelManager`` (checkpoints_in_ram=2, CPU, fp32) with checkpoints A and B (a copy)
  loaded; switching back to A must hit the RAM cache. The uncached load of the same run is the baseline.

Goals (from the issue): cold load ours / load_file <= 1.3; warm switch <= 0.5 s; peak RSS / file <= 1.3.
"Cold" means the first load in a fresh process; the page cache is dropped only where that is permitted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

GIB = 1024**3
STEP_LATENT = 64
DTYPES = {"float16": torch.float16, "float32": torch.float32}
SHORT = {"float16": "fp16", "float32": "fp32"}
BASELINE_KINDS = ("lazy", "read", "convert", "pread_convert")
RESULTS_DEFAULT = Path(__file__).resolve().parent / "results" / "load_checkpoint.json"
Metrics = dict[str, Any]


# -- build -------------------------------------------------------------------------------------------------
def layout_shapes() -> dict[str, tuple[tuple[int, ...], bool]]:
    """Key → (shape, is the float32 ``alphas_cumprod``) of a full SD1.5 file, from meta-device modules."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentstudio.models.families import Family
    from latentstudio.models.synthetic import full_spec, single_file_state

    spec = full_spec(Family.SD1)
    text = {k: v for k, v in spec.text["text_encoder"].items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(spec.unet)
        vae = AutoencoderKL.from_config(spec.vae)
        encoder = CLIPTextModel(CLIPTextConfig(**text))
    state = single_file_state(Family.SD1, unet, vae, {"text_encoder": encoder})
    return {k: (tuple(v.shape), k == "alphas_cumprod") for k, v in state.items()}


def build_checkpoint(path: Path, dtype: torch.dtype, seed: int = 0) -> Metrics:
    """Write the random-weight checkpoint; returns its size, tensor count and the build time/peak RSS."""
    from safetensors.torch import save_file

    from latentstudio.models.families import Family
    from latentstudio.models.loader import default_alphas_cumprod

    reset = _reset_peak()
    base = _status()["VmRSS"]
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for key, (shape, is_schedule) in layout_shapes().items():
        if is_schedule:
            tensors[key] = default_alphas_cumprod(Family.SD1).float()
        else:
            tensors[key] = torch.randn(shape, generator=generator, dtype=dtype).mul_(0.02)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    seconds = time.perf_counter() - start
    peak = _status()["VmHWM"] - base if reset else None
    count = len(tensors)
    del tensors
    gc.collect()
    return {"seconds": seconds, "bytes": path.stat().st_size, "tensors": count, "peak_rss_delta": peak}


# -- measurement helpers (inside workers) ------------------------------------------------------------------
def _status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of this process, in bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def _read_all(tensors: Iterable[torch.Tensor]) -> None:
    """Read every byte of every tensor once (copy into a scratch tensor that is dropped at once)."""
    for t in tensors:
        torch.empty_like(t).copy_(t)


def _import_all() -> None:
    """Everything any worker uses, imported before any timer starts (the same set for every worker)."""
    import diffusers  # noqa: F401
    import safetensors.torch  # noqa: F401
    import transformers  # noqa: F401

    import latentstudio.models.loader
    import latentstudio.models.manager  # noqa: F401


# -- worker operations: (path, target dtype) -> something to keep alive until measured ---------------------
def _op_lazy(path: Path, dtype: torch.dtype) -> object:
    from safetensors.torch import load_file

    return load_file(path)


def _op_read(path: Path, dtype: torch.dtype) -> object:
    from safetensors.torch import load_file

    tensors = load_file(path)
    _read_all(tensors.values())
    return tensors


def _op_convert(path: Path, dtype: torch.dtype) -> object:
    from safetensors.torch import load_file

    return {k: v.to(dtype) for k, v in load_file(path).items()}


def _op_pread_convert(path: Path, dtype: torch.dtype) -> object:
    from safetensors import safe_open

    with safe_open(path, framework="pt", backend="pread") as f:
        return {k: f.get_tensor(k).to(dtype) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict


def _op_ours(path: Path, dtype: torch.dtype) -> object:
    from latentstudio.models.loader import load_checkpoint

    return load_checkpoint(path, device=torch.device("cpu"), dtype=dtype)


OPS: dict[str, Callable[[Path, torch.dtype], object]] = {
    "lazy": _op_lazy,
    "read": _op_read,
    "convert": _op_convert,
    "pread_convert": _op_pread_convert,
    "ours": _op_ours,
}


def _unet_steps(unet: Any, count: int) -> list[float]:
    """Seconds of ``count`` UNet forward passes at 64×64 latents, batch 1 (fails on a non-finite output)."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((1, 4, STEP_LATENT, STEP_LATENT), generator=generator)
    context = torch.randn((1, 77, unet.config.cross_attention_dim), generator=generator)
    timestep = torch.tensor([999])
    times = []
    with torch.inference_mode():
        for _ in range(count):
            start = time.perf_counter()
            out = unet(sample, timestep, encoder_hidden_states=context).sample
            times.append(time.perf_counter() - start)
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError("the UNet output is not finite")
    return times


def _after_ours(components: Any, dtype: torch.dtype, file_dtype: torch.dtype) -> Metrics:
    """After our load: weight bytes; a full read where the load was zero-copy; two UNet steps in fp32."""
    modules = [components.unet, components.vae, *components.text_encoders.values()]
    tensors = [t for m in modules for t in m.state_dict().values()]
    out: Metrics = {"weight_bytes": sum(t.numel() * t.element_size() for t in tensors)}
    if dtype == file_dtype:
        start = time.perf_counter()
        _read_all(tensors)
        out["read_seconds"] = time.perf_counter() - start
        out["rss_file_after_read"] = _status()["RssFile"]
    if dtype == torch.float32:
        out["step_seconds"] = _unet_steps(components.unet, 2)
    return out


def run_worker(kind: str, path: Path, dtype: torch.dtype, file_dtype: torch.dtype) -> Metrics:
    """One cold measurement in this (fresh) process: imports first, then only the operation is timed."""
    import resource

    _import_all()
    gc.collect()
    reset = _reset_peak()
    before = _status()
    start = time.perf_counter()
    kept = OPS[kind](path, dtype)
    seconds = time.perf_counter() - start
    after = _status()
    high = after["VmHWM"] if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    metrics: Metrics = {
        "seconds": seconds,
        "file_bytes": path.stat().st_size,
        "peak_rss_delta": high - before["VmRSS"],
        "peak_method": "VmHWM reset after imports" if reset else "ru_maxrss (includes imports)",
        "rss_anon_delta": after["RssAnon"] - before["RssAnon"],
        "rss_file_delta": after["RssFile"] - before["RssFile"],
    }
    if kind == "ours":
        metrics.update(_after_ours(kept, dtype, file_dtype))
    del kept
    return metrics


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def run_switch(path_a: Path, path_b: Path, reps: int) -> Metrics:
    """Manager with A and B in RAM: seconds of uncached loads, then of switches back and forth."""
    _import_all()
    from latentstudio.config import Settings
    from latentstudio.models.manager import ModelManager

    with tempfile.TemporaryDirectory(prefix="bench-load-data-") as data_dir:
        settings = Settings(
            models_dir=path_a.parent.parent, data_dir=Path(data_dir), device="cpu", checkpoints_in_ram=2
        )
        manager = ModelManager(settings)
        names = {info.path: info.name for info in manager.checkpoints()}
        a, b = names[path_a], names[path_b]
        _, hash_seconds = _timed(lambda: [manager.entry(info) for info in manager.checkpoints()])
        first_a, load_a = _timed(lambda: manager.load(a))
        _, load_b = _timed(lambda: manager.load(b))
        to_a, to_b = [], []
        for _ in range(reps):
            again, seconds = _timed(lambda: manager.load(a))
            to_a.append(seconds)
            to_b.append(_timed(lambda: manager.load(b))[1])
        return {
            "sha256_both_seconds": hash_seconds,
            "uncached_load_seconds": [load_a, load_b],
            "switch_to_a_seconds": to_a,
            "switch_to_b_seconds": to_b,
            "cache_hit": again is first_a,
            "loaded": len(manager.loaded()),
            "dtype": str(manager.dtype),
        }


# -- orchestration (parent process) ------------------------------------------------------------------------
def _spawn(args: list[str]) -> Metrics:
    """Run this script as a worker in a fresh interpreter; its last ``RESULT`` line is the answer."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {' '.join(args)} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    result: Metrics = json.loads(lines[-1].removeprefix("RESULT "))
    return result


def try_drop_caches() -> bool:
    """Drop the page cache (needs privileges); False where it is not permitted."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3", encoding="ascii")
    except OSError:
        return False
    return True


def cold_jobs(file_dtype: str) -> list[tuple[str, str, str]]:
    """(result key, worker kind, target dtype) of every cold measurement."""
    other = "float32" if file_dtype == "float16" else "float16"
    return [
        ("lazy", "lazy", file_dtype),
        ("read", "read", file_dtype),
        ("convert", "convert", other),
        ("pread_convert", "pread_convert", other),
        ("ours_float16", "ours", "float16"),
        ("ours_float32", "ours", "float32"),
    ]


def cold_runs(path: Path, file_dtype: str, reps: int, drop: bool) -> dict[str, list[Metrics]]:
    """Every cold job ``reps`` times, in alternating order (forward, then reversed, ...)."""
    jobs = cold_jobs(file_dtype)
    runs: dict[str, list[Metrics]] = {key: [] for key, _, _ in jobs}
    for rep in range(reps):
        for key, kind, dtype in jobs if rep % 2 == 0 else jobs[::-1]:
            if drop:
                try_drop_caches()
            result = _spawn([kind, str(path), dtype, file_dtype])
            runs[key].append(result)
            print(f"  rep {rep + 1}/{reps} {key:<14} {result['seconds']:7.3f} s", flush=True)
    return runs


# -- report ------------------------------------------------------------------------------------------------
def labels(file_dtype: str) -> dict[str, str]:
    """Display names of the result keys."""
    other = "float32" if file_dtype == "float16" else "float16"
    return {
        "lazy": "load_file lazy",
        "read": "load_file + read",
        "convert": f"load_file + to({SHORT[other]})",
        "pread_convert": f"pread + to({SHORT[other]})",
        f"ours_{file_dtype}": f"ours -> {SHORT[file_dtype]} (zero-copy)",
        f"ours_{other}": f"ours -> {SHORT[other]} (convert)",
    }


def _med(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def ratio_rows(cold: Mapping[str, list[Metrics]], switch: Metrics, file_dtype: str) -> list[Metrics]:
    """Every ratio against its baseline; ``goal`` only where the comparison is like for like."""
    name, load = labels(file_dtype), {k: _med(r["seconds"] for r in v) for k, v in cold.items()}
    same, conv = f"ours_{file_dtype}", "ours_float32" if file_dtype == "float16" else "ours_float16"
    read_after = _med(r["seconds"] + r["read_seconds"] for r in cold[same])
    base32 = "convert" if file_dtype == "float16" else "read"
    e2e = _med(r["seconds"] + r["step_seconds"][0] - r["step_seconds"][1] for r in cold["ours_float32"])
    rows = [
        (f"{name[same]} load / {name['lazy']}", load[same] / load["lazy"], None),
        (f"{name[same]} load / {name['read']}", load[same] / load["read"], None),
        (f"{name[same]} load + read / {name['read']}", read_after / load["read"], 1.3),
        (f"{name[conv]} load / {name['lazy']}", load[conv] / load["lazy"], None),
        (f"{name[conv]} load / {name['read']}", load[conv] / load["read"], None),
        (f"{name[conv]} load / {name['convert']}", load[conv] / load["convert"], 1.3),
        (f"ours -> fp32 load + (step1 - step2) / {name[base32]}", e2e / load[base32], 1.3),
    ]
    for key in (same, conv):
        runs = cold[key]
        file_bytes = runs[0]["file_bytes"]
        peak = _med(r["peak_rss_delta"] for r in runs)
        rows.append((f"{name[key]} peak RSS / file size", peak / file_bytes, 1.3 if key == same else None))
        rows.append((f"{name[key]} peak RSS / loaded weights", peak / runs[0]["weight_bytes"], 1.3))
    uncached = _med(switch["uncached_load_seconds"])
    warm = _med(switch["switch_to_a_seconds"])
    rows.append(("warm switch back to A / uncached load (same run)", warm / uncached, None))
    rows.append(("warm switch back to A, seconds (goal is absolute)", warm, 0.5))
    return [
        {"what": w, "value": v, "goal": g, "meets_goal": None if g is None else v <= g} for w, v, g in rows
    ]


def _notes(key: str, runs: list[Metrics]) -> str:
    notes = []
    if "read_seconds" in runs[0]:
        notes.append(f"then read all weights {_med(r['read_seconds'] for r in runs):.2f} s")
    if "step_seconds" in runs[0]:
        first, second = _med(r["step_seconds"][0] for r in runs), _med(r["step_seconds"][1] for r in runs)
        notes.append(f"UNet step 1 / 2: {first:.2f} / {second:.2f} s")
    anon = _med(r["rss_anon_delta"] for r in runs) / GIB
    return "; ".join([f"anon after {anon:.2f} GiB", *notes])


def print_report(
    cold: Mapping[str, list[Metrics]], switch: Metrics, rows: list[Metrics], info: Metrics
) -> None:
    """The measurement table, the ratios with their goals, and the caveats."""
    file_bytes = info["file"]["bytes"]
    print(f"\nfile: {file_bytes / GIB:.3f} GiB, {info['file']['tensors']} tensors, {info['file_dtype']}")
    head = f"{'median s':>9} {'min s':>7} {'peak dRSS GiB':>14} {'peak/file':>9}"
    print(f"{'cold load (fresh process)':<28} {head}")
    for key, label in labels(info["file_dtype"]).items():
        runs = cold[key]
        secs = [r["seconds"] for r in runs]
        peak = _med(r["peak_rss_delta"] for r in runs)
        print(
            f"{label:<28} {_med(secs):>9.3f} {min(secs):>7.3f} {peak / GIB:>14.2f} {peak / file_bytes:>9.2f}"
            f"   {_notes(key, runs)}"
        )
    print(
        f"\nwarm switch (ModelManager, {switch['dtype']}, 2 in RAM): uncached loads "
        f"{', '.join(f'{s:.2f}' for s in switch['uncached_load_seconds'])} s (sha256 of both files "
        f"{switch['sha256_both_seconds']:.1f} s, excluded); switch to A "
        f"{', '.join(f'{s * 1000:.2f}' for s in switch['switch_to_a_seconds'])} ms; cache hit: "
        f"{switch['cache_hit']}"
    )
    print(f"\n{'ratio':<62} {'value':>9}  goal")
    for row in rows:
        goal = (
            "(info)"
            if row["goal"] is None
            else f"<= {row['goal']}  {'MET' if row['meets_goal'] else 'MISSED'}"
        )
        print(f"{row['what']:<62} {row['value']:>9.3f}  {goal}")
    print(
        "\nmeaningful baselines: 'load_file lazy' reads no byte, so ratios against it only show fixed costs;"
        "\nthe like-for-like ones carry a goal (same dtype: load + read vs load_file + read; conversion:"
        "\nvs load_file + to(D); peak RSS of a converting load vs the loaded weights, alone 2x the file)."
        f"\nread = every tensor copied into a dropped scratch tensor. Peak RSS: {info['peak_method']}."
    )
    if not info["page_cache_dropped"]:
        print(
            "page cache: could not drop it (/proc/sys/vm/drop_caches not writable), so 'cold' means the"
            "\nfirst load in a fresh process with the file already in the page cache (no disk reads)."
        )


# -- entry point -------------------------------------------------------------------------------------------
def run_bench(path_a: Path, path_b: Path, file_dtype: str, reps: int) -> Metrics:
    """Build (or reuse) the two files, run every measurement, print the report; returns all results."""
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads", flush=True)
    if path_a.is_file():
        build: Metrics = {"reused": True, "bytes": path_a.stat().st_size, "tensors": len(layout_shapes())}
        print(f"reusing {path_a}")
    else:
        print(f"building {path_a} ...", flush=True)
        build = build_checkpoint(path_a, DTYPES[file_dtype])
        peak = "n/a" if build["peak_rss_delta"] is None else f"{build['peak_rss_delta'] / GIB:.2f} GiB"
        print(f"  built {build['bytes'] / GIB:.3f} GiB in {build['seconds']:.1f} s, peak RSS +{peak}")
    if not path_b.is_file():
        shutil.copyfile(path_a, path_b)
    dropped = try_drop_caches()
    print(f"cold loads ({reps} reps, alternating order; page cache dropped: {dropped}) ...", flush=True)
    cold = cold_runs(path_a, file_dtype, reps, dropped)
    print("warm switch ...", flush=True)
    switch = _spawn(["switch", str(path_a), str(path_b), str(reps)])
    rows = ratio_rows(cold, switch, file_dtype)
    info = {
        "file": build,
        "file_dtype": file_dtype,
        "page_cache_dropped": dropped,
        "peak_method": cold["read"][0]["peak_method"],
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }
    print_report(cold, switch, rows, info)
    return {**info, "cold": cold, "switch": switch, "ratios": rows}


def _worker_main(argv: list[str]) -> Metrics:
    if argv[0] == "switch":
        return run_switch(Path(argv[1]), Path(argv[2]), int(argv[3]))
    kind, path, dtype, file_dtype = argv
    return run_worker(kind, Path(path), DTYPES[dtype], DTYPES[file_dtype])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (``--worker`` is internal: one measurement in a fresh process)."""
    parser = argparse.ArgumentParser(description="Benchmark loading a full-size SD1.5 checkpoint.")
    parser.add_argument(
        "--out", type=Path, help="folder for the checkpoints and results.json (default: temp)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="dtype of the file")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints (reused by the next run)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each cold load (default 3)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--worker``, one measurement) and write the results as JSON."""
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(_worker_main(args.worker)), flush=True)
        return 0
    root = args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="bench-load-"))
    folder = root / "models" / "Stable-diffusion"
    stem = f"sd15-random-{SHORT[args.dtype]}"
    try:
        results = run_bench(
            folder / f"{stem}-a.safetensors", folder / f"{stem}-b.safetensors", args.dtype, args.reps
        )
        target = root / "results.json" if args.out else RESULTS_DEFAULT
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"\nresults: {target}")
    finally:
        if not args.keep:
            shutil.rmtree(root / "models" if args.out else root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
