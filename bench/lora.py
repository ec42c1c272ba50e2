"""LoRA application: weight merging (ours) against forward hooks, one run.

Run: ``python bench/lora.py [--reps N] [--threads N] [--rank R]`` (about 4 minutes on 2 cores; ~9 GB RAM).

What is measured (everything in the same process and run, so the ratios hold on a noisy machine):

* **models**: random-weight SD1 models in fp32 on the CPU, built on the ``meta`` device and filled with
  ``randn · 0.02`` (no init, no file): ``full`` is SD1.5 (UNet 860 M + CLIP-L 123 M parameters), ``mid``
  the SD1 structure at reduced width of ``bench/txt2img.py`` (UNet [160, 320, 640, 640], CLIP 12 × 384).
* **LoRAs**: three kohya files (fp16 safetensors, rank ``--rank`` = 32, alpha 16) on the modules kohya's
  default LoRA trains: every Linear / 1×1 conv inside the UNet's transformer blocks (q, k, v, out, ff,
  proj_in/out: 192 modules on SD1.5) and the CLIP attention / MLP (72), read through ``LoraNetworks``.
* **apply + remove on ``full``** (the goal: ≤ 1 s for three rank-32 LoRAs):

  - ``merge``: ``LoraNetworks.activate`` with new strengths each rep (so nothing is cached: three LoRAs
    merged into 264 weights with one ``addmm`` each) then ``deactivate`` (the base tensors swapped back);
    the first activation, which also reads, checks and hashes the files, is reported apart;
  - ``merge cached``: the same strengths as the previous job (the merged set is swapped back in);
  - ``hooks``: ``register_forward_hook`` on the 264 modules with the three LoRAs' factors concatenated per
    module (``y + (x·D)·U``, fp32, the same fusing as the merge), then removing the handles.
* **per step on ``mid``** (256×256 image: 32×32 latents, CFG batch of 2, 77-token context): the UNet call
  with no LoRA (baseline), with the three LoRAs merged (must equal the baseline: the same kernels) and
  with the three LoRAs as hooks; medians of ``--reps`` calls after a warm-up, alternating the order.

Results: ``bench/results/lora.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS_DEFAULT = Path(__file__).resolve().parent / "results" / "lora.json"
N_LORAS = 3
Metrics = dict[str, Any]


def build(size: str) -> Any:
    """Components of a random SD1 model (UNet and CLIP only; no VAE, no tokenizer), fp32 on the CPU."""
    from latentstudio.core import Prediction
    from latentstudio.models import synthetic
    from latentstudio.models.families import Family, FamilyInfo
    from latentstudio.models.loader import Components

    spec = synthetic.full_spec(Family.SD1)
    if size == "mid":
        unet = {**spec.unet, "block_out_channels": [160, 320, 640, 640], "cross_attention_dim": 384}
        text = {**spec.text["text_encoder"], "hidden_size": 384, "intermediate_size": 1536}
        text.update(num_attention_heads=6, num_hidden_layers=12)
        spec = synthetic.ModelSpec(Family.SD1, unet, spec.vae, {"text_encoder": text})
    with torch.device("meta"):
        unet_module, _, encoders = synthetic.build_components(spec, noise=0.0)
    generator = torch.Generator().manual_seed(0)
    for module in (unet_module, *encoders.values()):
        module.to_empty(device="cpu")
        with torch.no_grad():
            for tensor in (*module.parameters(), *module.buffers()):
                if tensor.is_floating_point():
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
        module.eval().requires_grad_(False)
    info = FamilyInfo(Family.SD1, Prediction.EPSILON, False, 512)
    cpu = torch.device("cpu")
    return Components(
        Path(size), info, unet_module, None, encoders, {}, torch.zeros(1000), cpu, torch.float32
    )


def kohya_targets(components: Any) -> dict[str, torch.nn.Module]:
    """kohya's default LoRA modules, by their kohya names."""
    targets: dict[str, torch.nn.Module] = {}
    for path, module in components.unet.named_modules():
        conv1x1 = isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1)
        if ".attentions." in path and (isinstance(module, torch.nn.Linear) or conv1x1):
            targets["lora_unet_" + path.replace(".", "_")] = module
    for path, module in components.text_encoders["text_encoder"].named_modules():
        if ".layers." in path and isinstance(module, torch.nn.Linear):
            canonical = path if path.startswith("text_model.") else "text_model." + path
            targets["lora_te_" + canonical.replace(".", "_")] = module
    return targets


def write_loras(components: Any, folder: Path, rank: int) -> list[Path]:
    """Three kohya LoRA files for ``components`` (fp16, alpha = rank / 2)."""
    from safetensors.torch import save_file

    targets = kohya_targets(components)
    paths = []
    for n in range(N_LORAS):
        generator = torch.Generator().manual_seed(100 + n)
        state = {}
        for key, module in targets.items():
            weight = module.weight
            state[f"{key}.lora_down.weight"] = (
                torch.randn((rank, *weight.shape[1:]), generator=generator) * 0.01
            )
            up_shape = (weight.shape[0], rank, *([1, 1] if weight.ndim == 4 else []))
            state[f"{key}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * 0.01
            state[f"{key}.alpha"] = torch.tensor(rank / 2)
        path = folder / f"bench{n}.safetensors"
        save_file({k: v.half() for k, v in state.items()}, str(path))
        paths.append(path)
    return paths


def networks_for(folder: Path) -> Any:
    from latentstudio.models.hashes import HashCache
    from latentstudio.models.lora import LoraLibrary, LoraNetworks

    return LoraNetworks(LoraLibrary([folder], HashCache(folder / "hashes.json")))


def requests(strength: float) -> list[Any]:
    from latentstudio.models.lora import LoraRequest

    return [LoraRequest(f"bench{n}", strength, strength) for n in range(N_LORAS)]


def add_hooks(components: Any, networks: Any, strength: float) -> list[Any]:
    """Forward hooks adding ``Σ m·s·up(down(x))`` (factors concatenated per module) to each LoRA module."""
    from latentstudio.models.lora.deltas import lora_factors
    from latentstudio.models.lora.keys import ModuleIndex

    index = ModuleIndex(components)
    factors: dict[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for n in range(N_LORAS):
        _, weights = networks._load(
            networks.library.find(f"bench{n}")
        )  # the parsed file, as the merge reads it
        for patch in weights.patches:
            target = index.find(patch.key)
            up, down = lora_factors(patch, target.module.weight)
            factors.setdefault(target.module, []).append((up * strength, down))
    handles = []
    for module, pairs in factors.items():
        up = torch.cat([u for u, _ in pairs], dim=1)
        down = torch.cat([d for _, d in pairs], dim=0)
        handles.append(module.register_forward_hook(_hook(module, up, down)))
    return handles


def _hook(module: torch.nn.Module, up: torch.Tensor, down: torch.Tensor) -> Callable[..., torch.Tensor]:
    if isinstance(module, torch.nn.Conv2d):  # a 1×1 conv: the same low-rank product per pixel
        down4, up4 = down[:, :, None, None], up[:, :, None, None]
        return lambda _m, inputs, output: (
            output + torch.nn.functional.conv2d(torch.nn.functional.conv2d(inputs[0], down4), up4)
        )
    return lambda _m, inputs, output: output + (inputs[0] @ down.t()) @ up.t()


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_apply(folder: Path, rank: int, reps: int) -> Metrics:
    """Apply + remove of three LoRAs on full-size SD1.5: merge (cold, warm, cached) and hooks."""
    components = build("full")
    write_loras(components, folder, rank)
    networks = networks_for(folder)
    start = time.perf_counter()
    patched = networks.activate(components, requests(1.0)).patched
    first = time.perf_counter() - start
    first_remove = _timed(networks.deactivate)
    merge, remove, cached, hooks = [], [], [], []
    for rep in range(reps):
        strength = 0.5 + rep / 10  # new strengths: nothing cached
        merge.append(_timed(lambda s=strength: networks.activate(components, requests(s))))
        remove.append(_timed(networks.deactivate))
        cached.append(
            _timed(lambda s=strength: networks.activate(components, requests(s)))
            + _timed(networks.deactivate)
        )
        handles: list[Any] = []
        start = time.perf_counter()
        handles = add_hooks(components, networks, strength)
        for handle in handles:
            handle.remove()
        hooks.append(time.perf_counter() - start)
    return {
        "first_apply": first, "first_remove": first_remove, "merge_apply": merge, "merge_remove": remove,
        "merge_cached_apply_remove": cached, "hooks_apply_remove": hooks, "patched_weights": patched,
    }  # fmt: skip


def bench_step(folder: Path, rank: int, reps: int) -> Metrics:
    """One UNet call on the CFG batch (2 × 4 × 32 × 32) without LoRA, with merged LoRAs and with hooks."""
    components = build("mid")
    write_loras(components, folder, rank)
    networks = networks_for(folder)
    unet = components.unet
    generator = torch.Generator().manual_seed(1)
    x = torch.randn((2, 4, 32, 32), generator=generator)
    t = torch.tensor([500.0, 500.0])
    context = torch.randn((2, 77, 384), generator=generator)

    def step() -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
        return out

    def merged() -> float:
        networks.activate(components, requests(1.0))
        try:
            return _timed(step)
        finally:
            networks.deactivate()

    def hooked() -> float:
        handles = add_hooks(components, networks, 1.0)
        try:
            return _timed(step)
        finally:
            for handle in handles:
                handle.remove()

    variants: dict[str, Callable[[], float]] = {
        "base": lambda: _timed(step),
        "merged": merged,
        "hooks": hooked,
    }
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(reps):
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(variants[name]())
    return {f"step_{name}": values for name, values in times.items()}


def _med(values: list[float]) -> float:
    return statistics.median(values)


def report(apply: Metrics, step: Metrics) -> dict[str, float]:
    """Print the table and return the summary."""
    merge = _med(apply["merge_apply"]) + _med(apply["merge_remove"])
    summary = {
        "first_apply_s": apply["first_apply"],
        "merge_apply_s": _med(apply["merge_apply"]),
        "merge_remove_s": _med(apply["merge_remove"]),
        "merge_apply_remove_s": merge,
        "merge_cached_apply_remove_s": _med(apply["merge_cached_apply_remove"]),
        "hooks_apply_remove_s": _med(apply["hooks_apply_remove"]),
        "step_base_s": _med(step["step_base"]),
        "step_merged_s": _med(step["step_merged"]),
        "step_hooks_s": _med(step["step_hooks"]),
    }
    summary["step_merged_over_base"] = summary["step_merged_s"] / summary["step_base_s"]
    summary["step_hooks_over_base"] = summary["step_hooks_s"] / summary["step_base_s"]
    print(f"\nSD1.5 size, {N_LORAS} LoRAs, {apply['patched_weights']} patched weights")
    print(f"  first apply (read, check, hash, merge)   {apply['first_apply']:8.3f} s")
    print(f"  merge apply / remove                      {summary['merge_apply_s']:8.3f} s / "
          f"{summary['merge_remove_s']:.4f} s   (goal apply + remove <= 1 s: {merge:.3f} s)")  # fmt: skip
    print(f"  merge, same LoRAs as the last job         {summary['merge_cached_apply_remove_s']:8.4f} s")
    print(f"  hooks apply + remove                      {summary['hooks_apply_remove_s']:8.3f} s")
    print("mid size, one UNet step (CFG batch 2, 32×32 latents)")
    for name in ("base", "merged", "hooks"):
        seconds = summary[f"step_{name}_s"]
        print(f"  {name:7s} {seconds:7.3f} s   × {seconds / summary['step_base_s']:.3f} of base")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS_DEFAULT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; {os.cpu_count()} CPUs, {args.threads} threads, load {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        (Path(tmp) / "full").mkdir()
        (Path(tmp) / "mid").mkdir()
        apply = bench_apply(Path(tmp) / "full", args.rank, args.reps)
        gc.collect()  # the full-size model is gone before the mid one is built
        step = bench_step(Path(tmp) / "mid", args.rank, args.reps)
    summary = report(apply, step)
    print(f"load after: {os.getloadavg()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"torch": torch.__version__, "threads": args.threads, "rank": args.rank, "loras": N_LORAS,
               "raw": {**apply, **step}, "summary": summary}  # fmt: skip
    args.out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
