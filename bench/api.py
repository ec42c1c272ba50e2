"""API overhead: a job through ``latentstudio serve``'s HTTP API against a direct ``pipeline.run`` call.

Run: ``python bench/api.py [--steps N] [--reps N] [--clients N] [--device cpu|cuda]`` (about 1 minute on
2 cores with the defaults).

What is measured (one process, one run, so the differences hold on a noisy machine):

* **model**: the tiny SD1 checkpoint (``synthetic.tiny_spec``), 64×64, Euler, ``--steps`` (4), CFG 7, written
  to a temp models folder; the server and the direct baseline each load it once (warm before timing).
* **direct**: ``pipeline.run(params, components, ...)`` with the worker's arguments (embeddings, a
  conditioning cache, a step callback), the seed changing every rep; and the same plus PNG encoding and an
  atomic write (what the worker adds besides the store).
* **native API**: ``POST /api/v1/jobs`` then ``GET /api/v1/jobs/{id}?wait=60`` (long poll) over real HTTP
  to uvicorn on a loopback port in this process; optionally fetching the image too.
* **A1111 API**: ``POST /sdapi/v1/txt2img`` (the synchronous call, base64 PNG in the answer), when present.
* Each rep alternates direct and API calls; reported are medians (p50) and p90, and the end-to-end
  **overhead** = p50(API) − p50(direct). On a busy machine the pipeline's own variance swamps that
  difference, so two low-noise parts are measured too: **outside the worker** (client wall time minus the
  job's ``finished_at − started_at``: HTTP, validation, the durable insert, wake-up, the long-poll answer)
  and the **PNG encode + atomic write** the worker adds; their sum is the overhead checked against the goal
  (issue 6: ≤ 20 ms p50).
* **throughput** with ``--clients`` (8) concurrent clients: jobs/s through the API (one worker runs them in
  turn, so this is bounded by the pipeline: compare with direct sequential jobs/s) and plain requests/s
  of ``GET /api/v1/jobs/{id}`` and ``GET /healthz`` (the server's own ceiling, no generation).

Results: ``bench/results/api.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch

RESULTS_DEFAULT = Path(__file__).resolve().parent / "results" / "api.json"
GOAL_MS = 20.0


def _build_models(root: Path) -> Path:
    from latentstudio.models import synthetic
    from latentstudio.models.families import Family

    path = root / "models" / "Stable-diffusion" / "tiny.safetensors"
    path.parent.mkdir(parents=True)
    spec = synthetic.tiny_spec(Family.SD1)
    unet, vae, encoders = synthetic.build_components(spec, 0)
    synthetic.write_checkpoint(path, synthetic.single_file_state(Family.SD1, unet, vae, encoders))
    return root / "models"


def _direct(models: Path, root: Path, device: str, steps: int) -> Callable[[int, bool], float]:
    """A function running one job directly (seed, save?) exactly as the worker calls the pipeline."""
    from latentstudio.config import Settings
    from latentstudio.models.manager import ModelManager
    from latentstudio.pipeline.images import png_bytes, write_atomic
    from latentstudio.pipeline.params import GenerationParams
    from latentstudio.pipeline.run import ModelIdentity, run
    from latentstudio.prompts.conditioning import ConditioningCache

    settings = Settings(models_dir=models, data_dir=root / "direct", device=device)  # type: ignore[arg-type]
    manager = ModelManager(settings)
    components = manager.load(None)
    embeddings = manager.embeddings(components)
    cache = ConditioningCache()
    identity = ModelIdentity(name="tiny")
    out = root / "direct" / "out.png"

    def one(seed: int, save: bool) -> float:
        """Run one job; returns the seconds the PNG encode + atomic write took (0 without ``save``)."""
        params = GenerationParams(
            prompt="a red circle", steps=steps, width=64, height=64, sampler="Euler", seed=seed
        ).resolved()
        result = run(
            params, components, identity=identity, on_step=lambda _: None, embeddings=embeddings, cache=cache
        )
        if not save:
            return 0.0
        started = time.perf_counter()
        write_atomic(out, png_bytes(result.images[0], result.infotexts[0]))
        return time.perf_counter() - started

    return one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready within {timeout} s")
        time.sleep(0.05)


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p90_ms": 1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "n": len(ordered),
    }


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _native_job(client: httpx.Client, seed: int, steps: int, fetch: bool) -> float:
    """One job through the native API; returns the time spent outside the worker's run of it (HTTP,
    validation, store, wake-up, notification): client wall time − (finished_at − started_at)."""
    payload = {"prompt": "a red circle", "steps": steps, "width": 64, "height": 64, "sampler": "Euler"}
    started = time.perf_counter()
    job_id = client.post("/api/v1/jobs", json={**payload, "seed": seed}).json()["id"]
    view = client.get(f"/api/v1/jobs/{job_id}", params={"wait": 60}).json()
    wall = time.perf_counter() - started
    if view["status"] != "done":
        raise RuntimeError(f"job ended {view['status']}: {view['error']}")
    if fetch:
        client.get(view["images"][0]["url"]).raise_for_status()
    return float(wall - (view["finished_at"] - view["started_at"]))


def _sdapi_job(client: httpx.Client, seed: int, steps: int) -> None:
    payload = {"prompt": "a red circle", "steps": steps, "width": 64, "height": 64, "sampler_name": "Euler"}
    response = client.post("/sdapi/v1/txt2img", json={**payload, "seed": seed})
    response.raise_for_status()


def _latency(
    client: httpx.Client, direct: Callable[[int, bool], float], args: argparse.Namespace
) -> dict[str, Any]:
    has_sdapi = client.get("/openapi.json").json()["paths"].get("/sdapi/v1/txt2img") is not None
    runs: dict[str, Callable[[int], object]] = {
        "direct run": lambda s: direct(s, False),
        "direct run + PNG write": lambda s: direct(s, True),
        "native POST + long-poll": lambda s: _native_job(client, s, args.steps, False),
        "native + image GET": lambda s: _native_job(client, s, args.steps, True),
    }
    if has_sdapi:
        runs["sdapi txt2img"] = lambda s: _sdapi_job(client, s, args.steps)
    for fn in runs.values():  # warm-up (caches, first-call costs)
        for seed in range(2):
            fn(seed)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    outside: list[float] = []
    writes: list[float] = []
    for rep in range(args.reps):
        order = list(runs.items()) if rep % 2 == 0 else list(reversed(runs.items()))
        for name, fn in order:
            started = time.perf_counter()
            value = fn(1000 + rep)
            samples[name].append(time.perf_counter() - started)
            if name == "native POST + long-poll":
                outside.append(float(value))  # type: ignore[arg-type]
            elif name == "direct run + PNG write":
                writes.append(float(value))  # type: ignore[arg-type]
    stats = {name: _stats(values) for name, values in samples.items()}
    base = stats["direct run"]["p50_ms"]
    for values in stats.values():
        values["overhead_p50_ms"] = values["p50_ms"] - base
    stats["outside the worker (native)"] = {**_stats(outside), "overhead_p50_ms": _stats(outside)["p50_ms"]}
    stats["PNG encode + atomic write"] = {**_stats(writes), "overhead_p50_ms": _stats(writes)["p50_ms"]}
    return stats


def _concurrent(
    n: int, seconds: float | None, total: int | None, work: Callable[[httpx.Client, int], None], base: str
) -> float:
    """Operations per second with ``n`` client threads (each with its own connection)."""
    counter = iter(range(10**9))
    lock = threading.Lock()
    done = [0]
    deadline = time.perf_counter() + (seconds or 1e9)

    def client_loop() -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter)
                if total is not None and i >= total:
                    return
                work(client, i)
                with lock:
                    done[0] += 1

    threads = [threading.Thread(target=client_loop) for _ in range(n)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / (time.perf_counter() - started)


def _throughput(
    client: httpx.Client, direct: Callable[[int, bool], float], args: argparse.Namespace, base: str
) -> dict[str, float]:
    jobs = 4 * args.clients
    direct_rate = jobs / _timed(lambda: [direct(2000 + i, True) for i in range(jobs)])
    api_rate = _concurrent(
        args.clients, None, jobs, lambda c, i: _native_job(c, 3000 + i, args.steps, False), base
    )
    done_id = client.get("/api/v1/jobs", params={"status": "done", "limit": 1}).json()["items"][0]["id"]
    get_rate = _concurrent(
        args.clients, 3.0, None, lambda c, _: c.get(f"/api/v1/jobs/{done_id}").raise_for_status(), base
    )
    health_rate = _concurrent(
        args.clients, 3.0, None, lambda c, _: c.get("/healthz").raise_for_status(), base
    )
    return {
        "direct_sequential_jobs_per_s": direct_rate,
        "api_jobs_per_s": api_rate,
        "api_over_direct_job_rate": api_rate / direct_rate,
        "get_job_requests_per_s": get_rate,
        "healthz_requests_per_s": health_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS_DEFAULT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import uvicorn

    from latentstudio.config import Settings
    from latentstudio.server import build_app

    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        root = Path(tmp)
        models = _build_models(root)
        settings = Settings(models_dir=models, data_dir=root / "data", device=args.device, max_queue=1000)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(build_app(settings), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: server.started, 120)
            wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, 120)
            direct = _direct(models, root, args.device, args.steps)
            with httpx.Client(base_url=base, timeout=120) as client:
                load_before = os.getloadavg()
                latency = _latency(client, direct, args)
                throughput = _throughput(client, direct, args, base)
                load_after = os.getloadavg()
        finally:
            server.should_exit = True
            thread.join(60)
    _report(args, latency, throughput, (load_before, load_after))


def _report(
    args: argparse.Namespace, latency: dict[str, Any], throughput: dict[str, float], load: tuple[Any, Any]
) -> None:
    print(
        f"tiny SD1, 64×64, Euler, {args.steps} steps, {args.reps} reps, device {args.device}, "
        f"load avg {load[0][0]:.1f} → {load[1][0]:.1f}"
    )
    print(f"{'':28s} {'p50 ms':>9s} {'p90 ms':>9s} {'Δp50 vs direct':>15s}")
    for name, values in latency.items():
        print(f"{name:28s} {values['p50_ms']:9.1f} {values['p90_ms']:9.1f} {values['overhead_p50_ms']:15.1f}")
    overhead = latency["native POST + long-poll"]["overhead_p50_ms"]
    outside = latency["outside the worker (native)"]["p50_ms"]
    worker = latency["PNG encode + atomic write"]["p50_ms"]
    verdict = "meets" if outside + worker <= GOAL_MS else "misses"
    print(
        f"native API overhead p50: {overhead:.1f} ms end to end (noisy: a difference of two medians); "
        f"{outside:.1f} ms outside the worker + {worker:.1f} ms PNG write in it = {outside + worker:.1f} ms "
        f"({verdict} the ≤ {GOAL_MS:.0f} ms goal)"
    )
    print(
        f"{args.clients} clients: {throughput['api_jobs_per_s']:.1f} jobs/s through the API vs "
        f"{throughput['direct_sequential_jobs_per_s']:.1f} direct sequential "
        f"(×{throughput['api_over_direct_job_rate']:.2f}); "
        f"GET job {throughput['get_job_requests_per_s']:.0f} req/s; "
        f"GET /healthz {throughput['healthz_requests_per_s']:.0f} req/s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "latency": latency,
        "throughput": throughput,
        "load": [list(load[0]), list(load[1])],
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
