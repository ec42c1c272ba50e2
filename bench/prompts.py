"""Prompt parsing + encoding of a ~300-token prompt with edits: cold against cached.

Run: ``python bench/prompts.py [--reps N]`` (about 1 minute on 2 cores).

What is measured (one process, one run):

* the prompt: ~300 CLIP tokens (5 chunks) with emphasis, prompt editing ``[from:to:when]`` and an
  alternation ``[a|b]``, 20 steps → several distinct schedule texts, plus a negative prompt;
* **parse**: ``schedules`` + ``split_and`` + the attention parse and tokenization into 75-token chunks of
  every schedule text (no text encoder) — the part that runs on every job even when cached;
* **cold**: parse and encode every distinct schedule text with a fresh ``ConditioningCache`` (what a job
  pays for a prompt it has not seen), on the tiny test CLIP and on a full-size SD1 CLIP ViT-L/14 text
  encoder (123 M parameters, random weights, fp32, CPU);
* **cached**: the same call again with the warm cache shared across jobs (what the worker pays when a
  prompt repeats: the parse, the cache keys and the lookups).

Goal (issue 4): cached ≤ 1 ms. Results: ``bench/results/prompts.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS_DEFAULT = Path(__file__).resolve().parent / "results" / "prompts.json"
STEPS = 20
NEGATIVE = "(blurry:1.3), low quality, [watermark], text, jpeg artifacts, deformed hands, extra fingers"


def long_prompt() -> str:
    """~300 tokens: descriptive phrases with emphasis, two edits and an alternation."""
    phrases = [
        "a (highly detailed:1.2) photograph of an old lighthouse on a rocky coast",
        "[stormy:calm:0.4] sea with [crashing waves|gentle ripples]",
        "golden hour light, ((dramatic clouds)), seagulls in the distance",
        "[oil painting:photograph:8], sharp focus, 35mm lens, f/1.8",
        "intricate stonework, moss on the rocks, wet sand, reflections",
        "(volumetric fog:0.8), cinematic composition, rule of thirds",
        "by a famous landscape painter, trending on an art site, award winning",
        "warm and cold color contrast, soft shadows, high dynamic range",
    ]
    return ", ".join(phrases * 3)


def build(folder: Path) -> tuple[Any, Any]:
    """Tiny SD1 components (loaded from a real single file) and a copy with a full-size CLIP-L encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentstudio.models import loader, synthetic
    from latentstudio.models.families import Family

    spec = synthetic.tiny_spec(Family.SD1)
    unet, vae, encoders = synthetic.build_components(spec, seed=0)
    state = synthetic.single_file_state(spec.family, unet, vae, encoders)
    path = synthetic.write_checkpoint(folder / "tiny.safetensors", state)
    tiny = loader.load_checkpoint(path, device=torch.device("cpu"), dtype=torch.float32)
    config = CLIPTextConfig(**synthetic.full_spec(Family.SD1).text["text_encoder"])
    full_encoder = CLIPTextModel(config).eval()
    full = dataclasses.replace(tiny, text_encoders={"text_encoder": full_encoder})
    return tiny, full


def parse_only(components: Any, prompt: str, negative: str) -> int:
    """Everything but the encoder: schedules, AND split and chunking of each text; returns chunk count."""
    from latentstudio.prompts import schedules, split_and
    from latentstudio.prompts.conditioning import prompt_chunks

    chunks = 0
    for text in [part for part, _ in split_and(prompt)] + [negative]:
        for _, scheduled in schedules(text, STEPS):
            chunks += len(prompt_chunks(components, "text_encoder", scheduled)[0])
    return chunks


def conditionings(components: Any, prompt: str, negative: str, cache: Any) -> int:
    """What the pipeline does per job: schedules, then each distinct text through the cache/encoder."""
    from latentstudio.prompts import schedules, split_and
    from latentstudio.prompts.conditioning import TextOptions, encode_prompts

    options, database, count = TextOptions(), None, 0
    for text in [part for part, _ in split_and(prompt)] + [negative]:
        for _, scheduled in schedules(text, STEPS):

            def encode(t: str = scheduled) -> tuple[Any, tuple[Any, ...]]:
                return encode_prompts(components, [t], options), ()

            cache.get_or_encode(components, scheduled, options, database, encode)
            count += 1
    return count


def timings(fn: Callable[[], object], reps: int) -> list[float]:
    """Seconds of ``reps`` calls."""
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def measure(components: Any, prompt: str, reps: int, cold_reps: int) -> dict[str, Any]:
    """Parse, cold and cached timings for one set of components."""
    from latentstudio.prompts.conditioning import ConditioningCache

    torch.set_grad_enabled(False)
    parse = timings(lambda: parse_only(components, prompt, NEGATIVE), reps)
    cold = timings(lambda: conditionings(components, prompt, NEGATIVE, ConditioningCache()), cold_reps)
    warm = ConditioningCache()
    texts = conditionings(components, prompt, NEGATIVE, warm)
    cached = timings(lambda: conditionings(components, prompt, NEGATIVE, warm), reps)
    return {"texts": texts, "parse": parse, "cold": cold, "cached": cached}


def main(argv: list[str] | None = None) -> int:
    """Run, print the table and write the JSON results."""
    parser = argparse.ArgumentParser(description="Benchmark prompt parsing + encoding, cold vs cached.")
    parser.add_argument("--reps", type=int, default=200, help="reps of the parse and cached timings")
    parser.add_argument("--cold-reps", type=int, default=5, help="reps of the cold timing")
    parser.add_argument("--out", type=Path, default=RESULTS_DEFAULT)
    args = parser.parse_args(argv)
    from latentstudio.prompts.conditioning import prompt_chunks

    folder = Path(tempfile.mkdtemp(prefix="bench-prompts-"))
    try:
        tiny, full = build(folder)
        prompt = long_prompt()
        chunks, tokens = prompt_chunks(tiny, "text_encoder", prompt)
        print(f"prompt: {len(prompt)} characters, {tokens} tokens, {len(chunks)} chunks; {STEPS} steps")
        results = {
            name: measure(c, prompt, args.reps, args.cold_reps)
            for name, c in (("tiny", tiny), ("full", full))
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    head = f"{'encoder':<8} {'texts':>5} {'parse ms':>9} {'cold ms':>9} {'cached ms':>10}"
    print(f"\n{head} {'cold/cached':>12}  goal")
    for name, r in results.items():
        parse, cold, cached = (statistics.median(r[k]) * 1000 for k in ("parse", "cold", "cached"))
        met = "MET" if cached <= 1.0 else "MISSED"
        print(
            f"{name:<8} {r['texts']:>5} {parse:>9.3f} {cold:>9.1f} {cached:>10.3f} {cold / cached:>12.0f}  "
            f"cached <= 1 ms {met}"
        )
    print(
        "\nmedians; texts = schedule entries looked up per job (edits/alternation + negative);"
        "\ncold = fresh cache (parse + encode every text), cached = warm cache shared across jobs;"
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs,"
        f" load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"prompt": prompt, "tokens": tokens, "results": results}, indent=2))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
