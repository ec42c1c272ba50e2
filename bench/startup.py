"""Start-up time: ``latentstudio generate`` with the built-in model, split into interpreter, imports, model
load and sampling, and ``latentstudio serve`` until ``/readyz`` answers 200, against import baselines.

Run: ``python bench/startup.py [--reps 5] [--steps 20] [--threads N] [--no-serve] [--no-ladder]
[--baseline-src DIR]`` (about 8 minutes on 2 idle cores with the defaults; every number is a fresh process,
the cases taken in turn ``--reps`` times so that a change in the machine's load hits all of them alike).
``--baseline-src`` adds ``generate`` and ``serve`` importing latentstudio from another source tree (``git
archive <rev> src | tar -x -C DIR`` gives ``DIR/src``) in the same rounds, with the ratio of this version's
medians to its.

What is measured, each in a fresh process with an empty temp models folder (so the built-in model is used)
and a fresh ``--data-dir`` (an empty hash cache, as a first run):

* **baselines** (``python -c …``): ``pass`` (the interpreter), ``import torch`` (the floor of any command that
  touches a model: every ratio is against its median), and ``libraries``: exactly the library classes the
  command needs (``torch``, diffusers' ``UNet2DConditionModel`` and ``AutoencoderKL``, transformers'
  ``CLIPTextModel`` and ``CLIPTokenizer``, accelerate's ``init_empty_weights``, safetensors), which is the
  floor of ``generate``'s imports without changing those libraries;
* **ladder** (what the library floor is made of): ``import torch`` plus ``torch._dynamo`` (diffusers.utils
  imports it), plus ``scipy.optimize`` and ``scipy.stats`` (transformers.loss and diffusers'
  single-file utils import them), plus ``torchvision`` (transformers.image_utils imports it);
* **imports**: the command's own import path (``latentstudio.cli``, ``latentstudio.models.manager``,
  ``latentstudio.pipeline.run``);
* **generate**: the real console command ``latentstudio generate "a red circle"`` (the model's native size,
  ``--steps``, DPM++ 2M), wall time from spawn to exit; then the same command run by a probe that times,
  as the command imports and runs them, ``ModelManager`` (its construction ends the import phase),
  ``ModelManager.load``, ``pipeline.run`` and its sampling loop (``run_pass``), giving the split:
  interpreter start + exit, CLI module (typer), imports (everything from ``main()`` to the model manager:
  torch, diffusers, transformers, ours, the settings), load (file, modules, tokenizer), encode + decode
  (``pipeline.run`` outside the sampling loop), sampling, other (the manager, model hash, embeddings, the
  PNG write, the remaining small imports);
* **serve**: ``latentstudio serve --no-ui`` and ``latentstudio serve`` (with the web UI) from spawn until
  ``/readyz`` answers 200 (the worker has loaded the built-in model), and until the first HTTP answer.

Timings on a shared machine are noisy: the table has medians and minima of wall time, the median CPU time
(user + sys of the process and its children) and CPU use (CPU / wall); load averages are printed before and
after. ``PYTHONDONTWRITEBYTECODE=1`` in the environment means latentstudio's own modules are compiled from
source in every process (an installed wheel has bytecode): the script says when it is set.

Results: ``bench/results/startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

RESULTS_DEFAULT = Path(__file__).resolve().parent / "results" / "startup.json"
PROMPT = "a red circle"

LIBRARIES = (
    "import torch, safetensors.torch\n"
    "from accelerate import init_empty_weights\n"
    "from diffusers import AutoencoderKL, UNet2DConditionModel\n"
    "from transformers import CLIPTextModel, CLIPTokenizer"
)
NO_GC = "import gc\ngc.disable()\n"  # as the generate and serve commands import their libraries
BASELINES = {
    "python": "pass",
    "import torch": "import torch",
    "libraries": LIBRARIES,
    "libraries, GC off": NO_GC + LIBRARIES,
}
LADDER = {
    "torch + torch._dynamo": "import torch, torch._dynamo",
    "torch + scipy.optimize/stats": "import torch, scipy.optimize, scipy.stats",
    "torch + torchvision": "import torch, torchvision",
}
IMPORTS = {
    "imports, GC off": NO_GC
    + "import latentstudio.cli, latentstudio.models.manager, latentstudio.pipeline.run"
}
# Each baseline reports the time of its own code (its imports), without the interpreter's start and exit.
TIMED = (
    "import sys as _sys, time as _time\n_t0 = _time.perf_counter()\n{code}\n"
    "_sys.stderr.write(f'\\nIMPORTED {{_time.perf_counter() - _t0}}\\n')"
)

# The real command with timers around its phases; argv after -c are the command's arguments. The command
# imports its modules itself (as it would without the probe); a meta-path hook adds the timers to
# ModelManager and pipeline.run when they are imported.
PROBE = r"""
import importlib.abc, json, os, sys, time
from pathlib import Path
t0 = time.perf_counter()
marks = {}
spans = {"load": 0.0, "pipeline": 0.0, "sampling": 0.0}
def timed(name, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        marks.setdefault(name, start)
        try:
            return fn(*args, **kwargs)
        finally:
            spans[name] = spans.get(name, 0.0) + time.perf_counter() - start
    return wrapper
def patch_manager(module):
    module.ModelManager.__init__ = timed("manager", module.ModelManager.__init__)
    module.ModelManager.load = timed("load", module.ModelManager.load)
def patch_run(module):
    module.run = timed("pipeline", module.run)
    module.run_pass = timed("sampling", module.run_pass)
PATCHES = {"latentstudio.models.manager": patch_manager, "latentstudio.pipeline.run": patch_run}
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        execute = spec.loader.exec_module
        def exec_module(module):
            execute(module)
            PATCHES[name](module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Hook())
from latentstudio import cli
sys.argv = ["latentstudio", *sys.argv[1:]]
t1 = time.perf_counter()
code = 0
try:
    cli.main()
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else 1
t2 = time.perf_counter()
phases = {"cli": t1 - t0, "imports": marks["manager"] - t1, "command": t2 - t1, **spans}
Path(os.environ["STARTUP_PROBE_OUT"]).write_text(json.dumps(phases))
sys.exit(code)
"""


class Workspace:
    """Temp folders: an empty models root, and a fresh data/output folder per run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = root / "models"
        (self.models / "Stable-diffusion").mkdir(parents=True)
        self._runs = 0

    def fresh(self) -> Path:
        self._runs += 1
        run = self.root / f"run{self._runs}"
        run.mkdir()
        return run


def console_command() -> list[str]:
    """The installed ``latentstudio`` script beside this interpreter, else ``python -m latentstudio.cli``."""
    script = Path(sys.executable).with_name("latentstudio")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "latentstudio.cli"]


def timed_run(command: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall and CPU seconds of one process (and its children) from spawn to exit; it must succeed."""
    return _run(command, cwd, env)[0]


def import_run(code: str, *, cwd: Path) -> dict[str, float]:
    """:func:`timed_run` of ``python -c code``, and the time of the code itself (``inside``)."""
    result, stderr = _run([sys.executable, "-c", TIMED.format(code=code)], cwd, None)
    return {**result, "inside": float(stderr.rsplit("IMPORTED ", 1)[1])}


def _run(command: list[str], cwd: Path, env: dict[str, str] | None) -> tuple[dict[str, float], str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"wall": wall, "cpu": cpu}, done.stderr


def generate_args(run: Path, models: Path, steps: int) -> list[str]:
    return ["generate", PROMPT, "--models-dir", str(models), "--data-dir", str(run / "data"),
            "--output", str(run / "outputs"), "--steps", str(steps)]  # fmt: skip


def source_env(src: Path | None) -> dict[str, str]:
    """The environment of a child: as ours, or importing latentstudio from another source tree first."""
    if src is None:
        return dict(os.environ)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }


def generate(ws: Workspace, steps: int, src: Path | None = None) -> dict[str, float]:
    run = ws.fresh()
    return timed_run(
        [*console_command(), *generate_args(run, ws.models, steps)], cwd=run, env=source_env(src)
    )


def generate_split(ws: Workspace, steps: int, src: Path | None = None) -> dict[str, float]:
    """The command through :data:`PROBE`: its wall time and the phases it recorded."""
    run = ws.fresh()
    out = run / "phases.json"
    env = {**source_env(src), "STARTUP_PROBE_OUT": str(out)}
    result = timed_run([sys.executable, "-c", PROBE, *generate_args(run, ws.models, steps)], cwd=run, env=env)
    phases: dict[str, float] = json.loads(out.read_text())
    return {
        **result,
        "start_exit": result["wall"] - phases["cli"] - phases["command"],
        "cli": phases["cli"],
        "imports": phases["imports"],
        "load": phases["load"],
        "encode_decode": phases["pipeline"] - phases["sampling"],
        "sampling": phases["sampling"],
        "other": phases["command"] - phases["imports"] - phases["load"] - phases["pipeline"],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


def serve(ws: Workspace, ui: bool, src: Path | None = None, timeout: float = 180.0) -> dict[str, float]:
    """Seconds from spawning ``latentstudio serve`` to its first HTTP answer and to ``/readyz`` 200."""
    run = ws.fresh()
    port = _free_port()
    command = [*console_command(), "serve", "--port", str(port), "--models-dir", str(ws.models),
               "--data-dir", str(run / "data"), *([] if ui else ["--no-ui"])]  # fmt: skip
    url = f"http://127.0.0.1:{port}/readyz"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = (run / "serve.log").open("w")
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=run, env=source_env(src), stdout=log, stderr=subprocess.STDOUT)
    http = ready = None
    try:
        while ready is None:
            if time.perf_counter() - began > timeout or process.poll() is not None:
                tail = (run / "serve.log").read_text()[-3000:]
                raise SystemExit(f"{' '.join(command)}: not ready after {timeout:.0f} s\n{tail}")
            status = _status(url)
            now = time.perf_counter() - began
            if status is not None and http is None:
                http = now
            if status == 200:
                ready = now
            else:
                time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"wall": ready, "http": http or ready, "cpu_to_exit": cpu}


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


SPLIT_LABELS = {
    "start_exit": "interpreter start + exit",
    "cli": "CLI module (typer)",
    "imports": "imports (torch, diffusers, …, ours)",
    "load": "model load (file, modules, tokenizer)",
    "encode_decode": "prompt encode + VAE decode",
    "sampling": "sampling",
    "other": "other (manager, hash, embeddings, PNG)",
}


def report(results: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Print the table and the splits; return the summary written to the results file."""
    floor = _median(results["import torch"], "wall")
    head = f"{'case':30s} {'median s':>9s} {'min s':>7s} {'CPU s':>7s} {'CPU use':>8s} {'/ torch':>8s}"
    print(f"\n{head} {'import s':>9s} {'min':>6s}")
    summary: dict[str, Any] = {}
    for name, rows in results.items():
        wall, low = _median(rows, "wall"), min(r["wall"] for r in rows)
        cpu_key = "cpu" if "cpu" in rows[0] else "cpu_to_exit"
        cpu = _median(rows, cpu_key)
        use = "" if cpu_key != "cpu" else f"{cpu / wall:8.0%}"
        summary[name] = {"median_s": wall, "min_s": low, "cpu_s": cpu, "over_torch": wall / floor}
        line = f"{name:30s} {wall:9.2f} {low:7.2f} {cpu:7.2f} {use:>8s} {wall / floor:8.2f}"
        inside = "inside" if "inside" in rows[0] else "imports" if "imports" in rows[0] else None
        if inside is not None:
            summary[name]["import_s"] = _median(rows, inside)
            line += f" {_median(rows, inside):9.2f} {min(r[inside] for r in rows):6.2f}"
        print(line)
    print("(import s: the imports alone, without interpreter start and exit; generate: its import phase)")
    print("(serve: seconds to /readyz 200; its CPU column runs to the process's exit)")
    for name, rows in results.items():
        if name.startswith("serve"):
            print(f"  {name}: first HTTP answer after {_median(rows, 'http'):.2f} s (median)")
    for name, rows in results.items():
        if name.startswith("generate, split"):
            total = _median(rows, "wall")
            print(f"\n{name} (probe, median of {len(rows)}; total {total:.2f} s):")
            for part, label in SPLIT_LABELS.items():
                value = _median(rows, part)
                print(f"  {label:42s} {value:6.2f} s {value / total:6.1%}")
            summary[name]["split"] = {part: _median(rows, part) for part in SPLIT_LABELS}
    ours = _median(results["imports, GC off"], "inside")
    on, off = _median(results["libraries"], "inside"), _median(results["libraries, GC off"], "inside")
    print(f"\nimports of the command {ours:.2f} s against the library floor {off:.2f} s (ratio "
          f"{ours / off:.2f}; both with the collector off, as the command imports); the floor with it on: "
          f"{on:.2f} s")  # fmt: skip
    for name, rows in results.items():
        if name.endswith(BASELINE_TAG):
            case = name.removesuffix(BASELINE_TAG)
            ratio = _median(results[case], "wall") / _median(rows, "wall")
            print(f"{case}: {ratio:.2f} × the baseline (medians)")
    return summary


BASELINE_TAG = " [baseline]"


def load_averages() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="fresh processes per case, taken in turn")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps of generate")
    parser.add_argument("--no-serve", action="store_true", help="skip the serve cases")
    parser.add_argument("--no-ladder", action="store_true", help="skip the composition of the library floor")
    parser.add_argument(
        "--baseline-src", type=Path, default=None,
        help="also run generate and serve importing latentstudio from this folder (another version's src/, "
        "e.g. from `git archive HEAD src | tar -x -C /tmp/base`), in the same rounds",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=0,
        help="OMP_NUM_THREADS / MKL_NUM_THREADS of every child (0: torch's default, one per core); 1 is "
        "steadier on a busy machine, where 2 OpenMP threads on 2 shared cores make sampling erratic",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS_DEFAULT)
    args = parser.parse_args(argv)
    if args.threads:
        os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))

    codes = {**BASELINES, **({} if args.no_ladder else LADDER), **IMPORTS}
    cpus, version = os.cpu_count(), sys.version.split()[0]
    print(
        f"{cpus} CPUs, load averages {load_averages()}; python {version}; threads {args.threads or 'default'}"
    )
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("PYTHONDONTWRITEBYTECODE is set: latentstudio's modules compile from source in every process")
    root = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        ws = Workspace(root)
        cases: dict[str, Callable[[], dict[str, float]]] = {
            name: partial(import_run, code, cwd=root) for name, code in codes.items()
        }
        sources = [("", None), *([(BASELINE_TAG, args.baseline_src.resolve())] if args.baseline_src else [])]
        for tag, src in sources:
            cases[f"generate{tag}"] = partial(generate, ws, args.steps, src)
            cases[f"generate, split{tag}"] = partial(generate_split, ws, args.steps, src)
            if not args.no_serve:
                cases[f"serve --no-ui{tag}"] = partial(serve, ws, False, src)
                cases[f"serve (UI){tag}"] = partial(serve, ws, True, src)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for rep in range(args.reps):
            for name, case in cases.items():
                results[name].append(case())
            print(f"rep {rep + 1}/{args.reps} done, load averages {load_averages()}", flush=True)
        summary = report(results)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"load averages after: {load_averages()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "reps": args.reps,
        "steps": args.steps,
        "threads": args.threads,
        "summary": summary,
        "runs": results,
    }
    args.out.write_text(json.dumps(record, indent=2))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
