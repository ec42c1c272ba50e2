"""Load a full-size SD1.5 single-file checkpoint: our loader against safetensors baselines, one run.

Run: ``python bench/load_checkpoint.py [--out DIR] [--dtype float16|float32] [--keep] [--reps N]
[--warm-cache]`` (about 5 minutes on 2 cores; needs ~2×file size of disk and ~12 GB of RAM).

What is measured (everything in the same run, so the ratios hold on a noisy machine):

* **build**: a random-weight SD1.5 checkpoint in the original single-file layout (1131 tensors, 1.07 G
  parameters: ~2.1 GB in fp16), written with ``safetensors.torch.save_file``. The modules are built on the
  ``meta`` device (no allocation, no init); only their key layout (``synthetic.single_file_state``) and
  shapes are used, then each tensor is filled with seeded ``randn * 0.02`` in the file dtype.
* **cold loads**, each in a fresh subprocess that imports what it uses first and then times only the load
  (so interpreter start and imports are excluded, first-call costs inside the load are not). Where
  permitted the page cache is dropped before each process, so the file is read from disk. Workers run in
  alternating order over ``--reps`` repetitions; medians are reported.

  - ``load_file lazy``: ``safetensors.torch.load_file`` alone (an mmap: no tensor byte is read);
  - ``load_file + read``: then every tensor copied into a scratch tensor that is dropped at once (reads
    every byte once, keeps nothing but the mapped file pages);
  - ``load_file + to(D)``: then every tensor converted to the other dtype D and kept (the least work a
    converting load can do, done the naive way: the whole file stays mapped until the end);
  - ``pread + to(D)``: ``safe_open(backend="pread")``, one tensor read and converted at a time (the peak
    memory a converting load can achieve: the converted weights and one source tensor);
  - ``ours -> fp16`` / ``ours -> fp32``: ``loader.load_checkpoint(path, device=cpu, dtype=...)``. The load
    in the file's dtype is zero-copy and lazy, so it is followed (untimed in "load") by a read of every
    parameter, to show where the deferred I/O and memory are paid: ``load + read`` compares with
    ``load_file + read``. The first fp32 load is followed by two UNet steps (64×64 latents, batch 1) to
    show the weights work; ``load + step 1`` compares with ``load_file + to(fp32)`` plus the first step of
    a control UNet whose weights never came from a file (a first step pays kernel and allocator warm-up
    whatever the loader did; single samples, so noisy).

  Peak RSS: the kernel's high-water mark (VmHWM) is reset through ``/proc/self/clear_refs`` after the
  imports and read after the load (after the read, for the zero-copy load); the RSS at the reset is
  subtracted. Mapped file pages count: they are clean page cache, reclaimable, but they are RSS.
* **warm switch**: a ``ModelManager`` (checkpoints_in_ram=2, CPU, fp32) with checkpoints A and B (a copy)
  loaded; switching back to A must hit the RAM cache. The uncached load of the same run is the baseline
  (both files are hashed first, so the sha256 the manager takes on a first load is not in it).

Goals (from the issue): cold load ours / load_file <= 1.3; warm switch <= 0.5 s; peak RSS / file <= 1.3.
A goal is shown only on like-for-like ratios; the others are printed as information.
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
Row = tuple[str, float, float | None]


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


def _import_all(kind: str) -> None:
    """What the worker uses, imported before its timer starts (baselines need only safetensors)."""
    import safetensors.torch  # noqa: F401

    if kind in BASELINE_KINDS:
        return
    import diffusers  # noqa: F401
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


def _after_ours(components: Any, dtype: torch.dtype, file_dtype: torch.dtype, steps: int) -> Metrics:
    """After our load: weight bytes; a full read where the load was zero-copy; UNet steps in fp32."""
    modules = [components.unet, components.vae, *components.text_encoders.values()]
    tensors = [t for m in modules for t in m.state_dict().values()]
    out: Metrics = {"weight_bytes": sum(t.numel() * t.element_size() for t in tensors)}
    if dtype == file_dtype:
        start = time.perf_counter()
        _read_all(tensors)
        out["read_seconds"] = time.perf_counter() - start
        out["hwm_after_read"] = _status()["VmHWM"]
    if steps and dtype == torch.float32:
        out["step_seconds"] = _unet_steps(components.unet, steps)
    return out


def run_worker(kind: str, path: Path, dtype: torch.dtype, file_dtype: torch.dtype, steps: int) -> Metrics:
    """One cold measurement in this (fresh) process: imports first, then only the operation is timed."""
    import resource

    _import_all(kind)
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
        metrics.update(_after_ours(kept, dtype, file_dtype, steps))
        if "hwm_after_read" in metrics:  # the zero-copy load pays its memory when the pages are read
            metrics["peak_rss_delta_after_read"] = metrics.pop("hwm_after_read") - before["VmRSS"]
    del kept
    return metrics


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def run_control(steps: int) -> Metrics:
    """UNet steps with weights that never came from a file (meta → ``to_empty`` → ``normal_``): the
    first-call cost of the kernels and the allocator, which a first step after any load also pays."""
    _import_all("control")
    from diffusers import UNet2DConditionModel

    from latentstudio.models.families import Family
    from latentstudio.models.synthetic import full_spec

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(full_spec(Family.SD1).unet)
    unet = unet.to_empty(device="cpu").eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in unet.parameters():
            param.normal_(0.0, 0.02, generator=generator)
    return {"step_seconds": _unet_steps(unet, steps)}


def run_switch(path_a: Path, path_b: Path, reps: int) -> Metrics:
    """Manager with A and B in RAM: seconds of uncached loads, then of switches back and forth."""
    _import_all("switch")
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
    """Every cold job ``reps`` times, in alternating order (forward, then reversed, ...); the first
    repetition of the fp32 load also runs two UNet steps (each takes seconds on a CPU)."""
    jobs = cold_jobs(file_dtype)
    runs: dict[str, list[Metrics]] = {key: [] for key, _, _ in jobs}
    for rep in range(reps):
        for key, kind, dtype in jobs if rep % 2 == 0 else jobs[::-1]:
            if drop:
                try_drop_caches()
            steps = 2 if rep == 0 and key == "ours_float32" else 0
            result = _spawn([kind, str(path), dtype, file_dtype, str(steps)])
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


def _load_rows(cold: Mapping[str, list[Metrics]], control: Metrics, file_dtype: str) -> list[Row]:
    name, load = labels(file_dtype), {k: _med(r["seconds"] for r in v) for k, v in cold.items()}
    same, conv = f"ours_{file_dtype}", "ours_float32" if file_dtype == "float16" else "ours_float16"
    read_after = _med(r["seconds"] + r["read_seconds"] for r in cold[same])
    base32 = "convert" if file_dtype == "float16" else "read"
    stepped = [r for r in cold["ours_float32"] if "step_seconds" in r]
    e2e = _med(r["seconds"] + r["step_seconds"][0] for r in stepped)
    return [
        (f"{name[same]} load / {name['lazy']}", load[same] / load["lazy"], None),
        (f"{name[same]} load / {name['read']}", load[same] / load["read"], None),
        (f"{name[same]} load + read / {name['read']}", read_after / load["read"], 1.3),
        (f"{name[conv]} load / {name['lazy']}", load[conv] / load["lazy"], None),
        (f"{name[conv]} load / {name['read']}", load[conv] / load["read"], None),
        (f"{name[conv]} load / {name['convert']}", load[conv] / load["convert"], 1.3),
        (
            f"ours -> fp32 load + step 1 / ({name[base32]} + control step 1)",
            e2e / (load[base32] + control["step_seconds"][0]),
            1.3,
        ),
    ]


def ratio_rows(
    cold: Mapping[str, list[Metrics]], extra: Mapping[str, Metrics], file_dtype: str
) -> list[Metrics]:
    """Every ratio against its baseline; ``goal`` only where the comparison is like for like."""
    name = labels(file_dtype)
    rows = _load_rows(cold, extra["control"], file_dtype)
    for key in (f"ours_{file_dtype}", "ours_float32" if file_dtype == "float16" else "ours_float16"):
        runs, zero_copy = cold[key], key == f"ours_{file_dtype}"
        field = "peak_rss_delta_after_read" if zero_copy else "peak_rss_delta"
        peak, what = _med(r[field] for r in runs), "load + read" if zero_copy else "load"
        bigger = runs[0]["weight_bytes"] > runs[0]["file_bytes"]  # fp16 → fp32: the weights alone are 2x
        goal = None if bigger else 1.3
        rows.append((f"{name[key]} peak RSS of {what} / file size", peak / runs[0]["file_bytes"], goal))
        rows.append((f"{name[key]} peak RSS of {what} / loaded weights", peak / runs[0]["weight_bytes"], 1.3))
    switch = extra["switch"]
    warm, uncached = _med(switch["switch_to_a_seconds"]), _med(switch["uncached_load_seconds"])
    rows.append(("warm switch back to A / uncached load (same run)", warm / uncached, None))
    rows.append(("warm switch back to A, seconds (goal is absolute)", warm, 0.5))
    return [
        {"what": w, "value": v, "goal": g, "meets_goal": None if g is None else v <= g} for w, v, g in rows
    ]


def _notes(runs: list[Metrics]) -> str:
    notes = [f"anon after {_med(r['rss_anon_delta'] for r in runs) / GIB:.2f} GiB"]
    if any("read_seconds" in r for r in runs):
        peak = _med(r["peak_rss_delta_after_read"] for r in runs) / GIB
        notes.append(
            f"then read all weights {_med(r['read_seconds'] for r in runs):.2f} s, peak {peak:.2f} GiB"
        )
    for r in runs:
        if "step_seconds" in r:
            notes.append("UNet step 1 / 2: " + " / ".join(f"{t:.2f}" for t in r["step_seconds"]) + " s")
    return "; ".join(notes)


def _print_table(cold: Mapping[str, list[Metrics]], extra: Mapping[str, Metrics], info: Metrics) -> None:
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
            f"   {_notes(runs)}"
        )
    steps = " / ".join(f"{t:.2f}" for t in extra["control"]["step_seconds"])
    print(f"{'control: UNet not from a file':<28} UNet step 1 / 2: {steps} s (first-call cost of a 1st step)")
    switch = extra["switch"]
    print(
        f"\nwarm switch (ModelManager, {switch['dtype']}, 2 in RAM): uncached loads "
        f"{', '.join(f'{s:.2f}' for s in switch['uncached_load_seconds'])} s (sha256 of both files "
        f"{switch['sha256_both_seconds']:.1f} s, excluded); switch to A "
        f"{', '.join(f'{s * 1000:.2f}' for s in switch['switch_to_a_seconds'])} ms; cache hit: "
        f"{switch['cache_hit']}"
    )


def print_report(
    cold: Mapping[str, list[Metrics]], extra: Mapping[str, Metrics], rows: list[Metrics], info: Metrics
) -> None:
    """The measurement table, the ratios with their goals, and the caveats."""
    _print_table(cold, extra, info)
    print(f"\n{'ratio (medians)':<72} {'value':>9}  goal")
    for row in rows:
        met = "MET" if row["meets_goal"] else "MISSED"
        goal = "(info)" if row["goal"] is None else f"<= {row['goal']}  {met}"
        print(f"{row['what']:<72} {row['value']:>9.3f}  {goal}")
    print(
        "\nmeaningful baselines: 'load_file lazy' reads no byte, so ratios against it only show fixed costs;"
        "\nthe like-for-like ones carry a goal (same dtype: load + read vs load_file + read; conversion:"
        "\nvs load_file + to(D); peak RSS of a converting load vs the loaded weights, alone 2x the file)."
        f"\nread = every tensor copied into a dropped scratch tensor. Peak RSS: {info['peak_method']}."
        f"\npage cache: {info['page_cache']}."
    )


# -- entry point -------------------------------------------------------------------------------------------
def _checkpoints(path_a: Path, path_b: Path, file_dtype: str) -> Metrics:
    """Build A (or reuse it), copy it to B; returns the build metrics."""
    if path_a.is_file():
        print(f"reusing {path_a}")
        build: Metrics = {"reused": True, "bytes": path_a.stat().st_size, "tensors": len(layout_shapes())}
    else:
        print(f"building {path_a} ...", flush=True)
        build = build_checkpoint(path_a, DTYPES[file_dtype])
        peak = "n/a" if build["peak_rss_delta"] is None else f"{build['peak_rss_delta'] / GIB:.2f} GiB"
        print(f"  built {build['bytes'] / GIB:.3f} GiB in {build['seconds']:.1f} s, peak RSS +{peak}")
    if not path_b.is_file():
        shutil.copyfile(path_a, path_b)
    return build


def run_bench(path_a: Path, path_b: Path, file_dtype: str, reps: int, *, drop: bool) -> Metrics:
    """Build the files, run every measurement, print the report; returns all results."""
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads", flush=True)
    build = _checkpoints(path_a, path_b, file_dtype)
    dropped = drop and try_drop_caches()
    page_cache = (
        "dropped before every fresh process: 'cold' loads read the file from disk"
        if dropped
        else "not dropped ("
        + ("not permitted" if drop else "--warm-cache")
        + "): 'cold' means the first load"
        " in a fresh process, with the file already in the page cache"
    )
    print(f"cold loads ({reps} reps, alternating order); page cache {'dropped' if dropped else 'warm'}")
    cold = cold_runs(path_a, file_dtype, reps, dropped)
    extra: dict[str, Metrics] = {}
    for name, args in (
        ("control", ["control", "2"]),
        ("switch", ["switch", str(path_a), str(path_b), str(reps)]),
    ):
        print(f"{name} ...", flush=True)
        if dropped:
            try_drop_caches()
        extra[name] = _spawn(args)
    rows = ratio_rows(cold, extra, file_dtype)
    info = {
        "file": build,
        "file_dtype": file_dtype,
        "page_cache": page_cache,
        "peak_method": cold["read"][0]["peak_method"],
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }
    print_report(cold, extra, rows, info)
    return {**info, "cold": cold, **extra, "ratios": rows}


def _worker_main(argv: list[str]) -> Metrics:
    if argv[0] == "switch":
        return run_switch(Path(argv[1]), Path(argv[2]), int(argv[3]))
    if argv[0] == "control":
        return run_control(int(argv[1]))
    kind, path, dtype, file_dtype, steps = argv
    return run_worker(kind, Path(path), DTYPES[dtype], DTYPES[file_dtype], int(steps))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (``--worker`` is internal: one measurement in a fresh process)."""
    parser = argparse.ArgumentParser(description="Benchmark loading a full-size SD1.5 checkpoint.")
    parser.add_argument(
        "--out", type=Path, help="folder for the checkpoints and results.json (default: temp)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="dtype of the file")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints (reused by the next run)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each cold load (default 3)")
    parser.add_argument("--warm-cache", action="store_true", help="never drop the page cache")
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
        paths = folder / f"{stem}-a.safetensors", folder / f"{stem}-b.safetensors"
        results = run_bench(*paths, args.dtype, args.reps, drop=not args.warm_cache)
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
