"""What a ControlNet / T2I-Adapter unit costs: load time, and steps/s with one unit against none on the same
model, in the same run (ratios; these machines are noisy).

Files are random weights in the exact released layouts: a full-size SD1.5 checkpoint, lllyasviel's cldm
ControlNet (control_v11p_sd15_canny's 340 tensors) and TencentARC's full adapter (t2iadapter_canny_sd15v2's 38
tensors), all fp16 as released. ``--size tiny`` runs the test suite's tiny widths instead (a quick check).

Goal (issue 17): a ControlNet unit adds at most the extra network's forward per step — the per-step time with
the unit over the time without is compared with (UNet + ControlNet forward) / UNet forward measured bare; an
adapter runs once per pass, so its per-step cost should vanish.

    python bench/controlnet.py                 # full size, 256², 8 steps, 2 reps (~10 min on 2 cores)
    python bench/controlnet.py --size tiny     # seconds
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from latentstudio.control import synthetic as control_synthetic
from latentstudio.control.library import ControlLibrary
from latentstudio.control.networks import ControlNetwork
from latentstudio.control.units import ControlUnit
from latentstudio.models import loader, synthetic
from latentstudio.models.families import Family
from latentstudio.models.loader import Components
from latentstudio.pipeline.params import GenerationParams
from latentstudio.pipeline.run import ModelIdentity, run

CPU = torch.device("cpu")
RESULTS = Path(__file__).parent / "results"
IDENTITY = ModelIdentity("random", None)


def write_files(folder: Path, size: str) -> tuple[Path, Path, Path]:
    """The checkpoint, the ControlNet and the adapter, in their released layouts (fp16)."""
    checkpoint = folder / "Stable-diffusion" / "sd15.safetensors"
    cn = folder / "ControlNet" / "control_v11p_sd15_canny.safetensors"
    adapter = folder / "ControlNet" / "t2iadapter_canny_sd15v2.safetensors"
    if size == "tiny":
        spec = synthetic.tiny_spec(Family.SD1)
        unet, vae, encoders = synthetic.build_components(spec)
        synthetic.write_checkpoint(checkpoint, synthetic.single_file_state(Family.SD1, unet, vae, encoders))
        control_synthetic.tiny_controlnet_file(cn, Family.SD1)
        control_synthetic.tiny_adapter_file(adapter)
        return checkpoint, cn, adapter
    spec = synthetic.full_spec(Family.SD1)
    synthetic.write_checkpoint(checkpoint, synthetic.random_single_file_state(spec))
    shapes = control_synthetic.cldm_shapes(control_synthetic.controlnet_config(spec.unet))
    synthetic.write_checkpoint(cn, control_synthetic.random_state(shapes), dtype=torch.float16)
    adapter_shapes = control_synthetic.tencent_adapter_shapes((320, 640, 1280, 1280), cin=64)
    synthetic.write_checkpoint(adapter, control_synthetic.random_state(adapter_shapes), dtype=torch.float16)
    return checkpoint, cn, adapter


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _picture(side: int) -> Image.Image:
    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 230
    pixels[side // 3 : side // 2, side // 3 : 2 * side // 3] = 40
    return Image.fromarray(pixels)


def bench_generation(
    components: Components, networks: dict[str, ControlNetwork], side: int, steps: int, reps: int
) -> dict[str, float]:
    """Per configuration (no unit, a ControlNet unit, an adapter unit): the median time of one sampling step
    (between consecutive step callbacks, the first step left out: it holds the pass's setup) and the median
    job time; job − steps × step is the job's fixed cost (preprocessing, fitting the map, encoding,
    decoding)."""
    image = _picture(side)
    units = {
        "none": ((), ()),
        "controlnet": ((ControlUnit(module="canny", model="cn", image=image),), (networks["controlnet"],)),
        "adapter": ((ControlUnit(module="canny", model="ad", image=image),), (networks["adapter"],)),
    }
    out: dict[str, float] = {}
    warm = GenerationParams(prompt="warm up", steps=2, width=side, height=side, sampler="Euler").resolved()
    run(warm, components, identity=IDENTITY)  # first-call allocations and kernels, outside the timings
    for name, (unit, nets) in units.items():
        params = GenerationParams(
            prompt="a box on a table", negative_prompt="blurry", steps=steps, seed=3, width=side, height=side,
            sampler="Euler", control=unit,
        ).resolved()  # fmt: skip
        intervals: list[float] = []
        jobs: list[float] = []
        for _ in range(reps):
            marks: list[float] = []
            start = time.perf_counter()
            run(params, components, identity=IDENTITY, controls=nets,
                on_step=lambda _s, m=marks: m.append(time.perf_counter()))  # fmt: skip
            jobs.append(time.perf_counter() - start)
            intervals += [b - a for a, b in itertools.pairwise(marks[1:])]
        out[f"step_{name}_s"] = statistics.median(intervals)
        out[f"job_{name}_s"] = statistics.median(jobs)
        out[f"fixed_{name}_s"] = out[f"job_{name}_s"] - steps * out[f"step_{name}_s"]
    return out


def bench_forward(components: Components, network: ControlNetwork, side: int, reps: int) -> dict[str, float]:
    """Bare forwards at the CFG batch (2): the UNet, and the ControlNet."""
    latent = side // 8
    x = torch.randn(2, 4, latent, latent)
    t = torch.tensor([500.0, 500.0])
    width = int(components.unet.config.cross_attention_dim)
    context = torch.randn(2, 77, width)
    hint = torch.rand(2, 3, side, side)
    with torch.inference_mode():
        unet = [_timed(lambda: components.unet(x, t, encoder_hidden_states=context)) for _ in range(reps + 1)]
        cn = [
            _timed(lambda: network.module(x, t, encoder_hidden_states=context, controlnet_cond=hint))
            for _ in range(reps + 1)
        ]
    return {"unet_forward": statistics.median(unet[1:]), "controlnet_forward": statistics.median(cn[1:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--side", type=int, default=None, help="picture side (default 256 full, 64 tiny)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    side = args.side or (256 if args.size == "full" else 64)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "models"
        checkpoint, cn_path, adapter_path = write_files(folder, args.size)
        components = loader.load_checkpoint(checkpoint, device=CPU, dtype=torch.float32)
        library = ControlLibrary(folder, CPU, torch.float32)
        loads: dict[str, float] = {}
        networks: dict[str, ControlNetwork] = {}
        for name, path in (("controlnet", cn_path), ("adapter", adapter_path)):
            file = library.find(path.stem)
            start = time.perf_counter()
            networks[name] = library.load(file, components.unet)
            loads[f"{name}_load_s"] = time.perf_counter() - start
            loads[f"{name}_cached_load_s"] = _timed(lambda f=file: library.load(f, components.unet))
        jobs = bench_generation(components, networks, side, args.steps, args.reps)
        forwards = bench_forward(components, networks["controlnet"], side, args.reps)
    result: dict[str, Any] = {
        "size": args.size,
        "side": side,
        "steps": args.steps,
        **loads,
        **forwards,
        **jobs,
    }
    result["ratio_controlnet_step"] = jobs["step_controlnet_s"] / jobs["step_none_s"]
    result["ratio_adapter_step"] = jobs["step_adapter_s"] / jobs["step_none_s"]
    result["ratio_forward_floor"] = (forwards["unet_forward"] + forwards["controlnet_forward"]) / forwards[
        "unet_forward"
    ]
    for key, value in result.items():
        print(f"{key:28s} {value:.3f}" if isinstance(value, float) else f"{key:28s} {value}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"controlnet-{args.size}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
