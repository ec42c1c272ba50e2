"""Peak memory of a 2048×2048 model upscale (×4 from 512²): tiled against untiled, each in a fresh process.

Run: ``python bench/upscale.py [--filters 64] [--blocks 2] [--tile 192] [--overlap 8]`` (~2–6 min on 2 cores).

The model is an ESRGAN (RRDBNet, Real-ESRGAN key layout) with random weights, loaded from a safetensors
file through ``UpscalerRegistry`` exactly as a user's model would be. Real ESRGAN models have 64 filters
and 23 RRDB blocks; the default here (64 filters, 2 blocks) keeps a CPU run short while keeping the real
upsampling path (nearest ×2, conv, nearest ×2, conv, HR conv, last conv at full resolution), which is
where untiled memory peaks: every activation there is 2048² × filters × 4 bytes.

Each child process imports torch, loads the model, records its RSS (``base``), runs ``upscale(image,
name, scale=4)`` and reports its peak RSS (``ru_maxrss``). The tiled child uses the registry's defaults:
``--tile`` (A1111's 192) cut to the registry's ``max_tile_output`` (96 px for a ×4 model; ``--max-tile-output
0`` keeps ``--tile``). Goal (issue 9): tiled peak ≤ 25% of untiled peak. The peak above ``base`` (the
upscale's own memory) and the share of the untiled peak that ``base`` alone takes are printed too.
Results: bench/results/upscale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS_DEFAULT = Path(__file__).resolve().parent / "results" / "upscale.json"
NAME = "bench-esrgan"


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(models: Path, tiled: bool, args: argparse.Namespace) -> dict[str, object]:
    """One measurement in this (fresh) process; returns what the parent prints."""
    import torch
    from PIL import Image

    from latentstudio.postprocess.tiling import Tiling
    from latentstudio.postprocess.upscalers import UpscalerRegistry, tiling_for_scale, upscale

    torch.set_num_threads(args.threads)
    max_output = args.max_tile_output or None
    tiling = Tiling(args.tile, args.overlap) if tiled else None
    registry = UpscalerRegistry(models, tiling=tiling, max_tile_output=max_output)
    model = registry.model(NAME)  # load before measuring the base
    if tiling is not None and max_output is not None:
        tiling = tiling_for_scale(tiling, int(model.scale), max_output)
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(512, 512, 3, generator=g) * 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    base = _rss_mib()
    start = time.perf_counter()
    out = upscale(image, NAME, scale=4, registry=registry)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    used = [tiling.size, tiling.overlap] if tiling is not None else None
    return {"tiled": tiled, "tiling": used, "size": list(out.size), "seconds": seconds, "base_mib": base,
            "peak_mib": peak}  # fmt: skip


def _run_child(models: Path, tiled: bool, args: argparse.Namespace) -> dict[str, object]:
    command = [sys.executable, __file__, "--child", str(models), "--tiled", str(int(tiled)),
               "--tile", str(args.tile), "--overlap", str(args.overlap),
               "--threads", str(args.threads), "--max-tile-output", str(args.max_tile_output)]  # fmt: skip
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    from latentstudio.postprocess.upscalers import MAX_TILE_OUTPUT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--tile", type=int, default=192)
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--max-tile-output", type=int, default=MAX_TILE_OUTPUT, help="0: no cap")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DEFAULT)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tiled", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, bool(args.tiled), args)))
        return

    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (tests/)
    from tests.esrgan_files import random_esrgan_state

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        (models / "ESRGAN").mkdir()
        state = random_esrgan_state(filters=args.filters, blocks=args.blocks, scale=4)
        save_file(state, models / "ESRGAN" / f"{NAME}.safetensors")
        runs = [_run_child(models, tiled, args) for tiled in (False, True)]
    untiled, tiled = runs
    ratio = float(tiled["peak_mib"]) / float(untiled["peak_mib"])  # type: ignore[arg-type]
    own = (float(tiled["peak_mib"]) - float(tiled["base_mib"])) / (  # type: ignore[arg-type]
        float(untiled["peak_mib"]) - float(untiled["base_mib"])  # type: ignore[arg-type]
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    size, overlap = tiled["tiling"]  # type: ignore[misc]
    print(f"ESRGAN {args.filters} filters, {args.blocks} RRDB blocks, ×4: 512² → {tiled['size']}; "
          f"tiles {size} px (--tile {args.tile}, max output {args.max_tile_output or 'none'}), overlap "
          f"{overlap}, {args.threads} threads, load {load}")  # fmt: skip
    for run in runs:
        label = "tiled  " if run["tiled"] else "untiled"
        print(f"  {label} peak RSS {run['peak_mib']:7.0f} MiB (base {run['base_mib']:4.0f} MiB)"
              f"  {run['seconds']:6.1f} s")  # fmt: skip
    verdict = "meets" if ratio <= 0.25 else "misses"
    floor = float(untiled["base_mib"]) / float(untiled["peak_mib"])  # type: ignore[arg-type]
    print(f"  tiled / untiled peak RSS = {ratio:.3f} ({verdict} the ≤ 0.25 goal); above base: {own:.3f}; "
          f"base alone: {floor:.3f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                    "ratio": ratio, "ratio_above_base": own, "base_share": floor},
                               indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
