"""The built-in control model's recipe (``latentstudio train shapes-control``) and its model card."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from latentstudio.train.config import ControlConfig
from latentstudio.train.control_shapes import evaluate_control, load_for_eval


def control_recipe(
    output_dir: Path, base: Path, *, threads: int = 1, data_workers: int = 1, scale: float = 1.0
) -> ControlConfig:
    """The exact config of the shipped control model (``latentstudio train shapes-control``): a ControlNet
    of the built-in model on this module's data; ``scale`` < 1 shortens it (smoke runs)."""
    steps = max(2, round(5000 * scale))
    return ControlConfig(
        output_dir=str(output_dir), network="controlnet", base=str(base), data="shapes",
        output_name="latentstudio-shapes-canny", resolution=64, batch_size=64, steps=steps, lr=2e-4,
        warmup=min(100, steps), lr_steps=((round(steps * 0.8), 5e-5),), caption_dropout=0.2,
        ema_decay=0.998, checkpoint_every=250, sample_every=0, log_every=25, threads=threads,
        data_workers=data_workers, sample_prompts=(),
    )  # fmt: skip


def write_card(config: ControlConfig, file: Path, eval_subset: int, notes: str = "") -> Path:
    """``<file stem>.md`` beside ``file``: the data, the exact config, steps and time (from the run's
    ``log.jsonl``), the loss curve and :func:`evaluate_control` on ``eval_subset`` held-out pictures."""
    from latentstudio.models.loader import load_checkpoint
    from latentstudio.train.recipe import loss_curve, training_seconds

    components = load_checkpoint(Path(config.base), device=torch.device("cpu"), dtype=torch.float32)
    accuracy = evaluate_control(components, load_for_eval(file, components), eval_subset)
    seconds = training_seconds(Path(config.output_dir))
    curve = "\n".join(f"| {step} | {loss:.4f} |" for step, loss in loss_curve(Path(config.output_dir)))
    a = accuracy.as_dict()
    text = f"""# {file.stem} — the built-in model's ControlNet (canny)

A ControlNet of `latentstudio-shapes` (its UNet's encoder copied, zero convolutions; lllyasviel's cldm
layout, {file.stat().st_size / 1e6:.2f} MB fp16), conditioned on our `canny` preprocessor: upload a picture
with one shape, and the built-in model draws that outline in that place in the colours the prompt names.
Listed in `/controlnet/model_list` while the built-in model is the checkpoint offered.

## Data
`latentstudio.train.control_shapes`: one circle, square, triangle or star with its centre and size drawn
continuously (half-side 0.12–0.34 of the picture); the condition is the same outline in other colours (70 %)
or the same ones, drawn at 64² or 512², through `canny` (100/200) at a processor resolution of 64 or 512 and
fitted to 64² as the inference path fits it. Captions name the target colours and shape. Nothing downloaded.

## Training (`latentstudio train shapes-control`)
{config.steps} steps of batch {config.batch_size} in {seconds / 60:.0f} min on this project's 2-core CPU
(1 torch thread + 1 data worker, sharing the machine).{notes}

```json
{json.dumps(dataclasses.asdict(config), indent=2)}
```

| step | loss (ε MSE) |
|---|---|
{curve}

## Evaluation (`latentstudio eval shapes-control --subset {a["count"]}`)
Held-out pictures (another seed: centres and sizes never trained on), 20 steps DPM++ 2M, CFG 7, a canny
unit of weight 1; the IoU of the generated foreground with the condition's filled shape, and the colours read
by `eval shapes`' classifier against the prompt's.

| mean IoU | IoU ≥ 0.85 | foreground colour | background colour |
|---|---|---|---|
| {a["iou"]:.3f} | {a["iou_over_085"]:.1%} | {a["fg"]:.1%} | {a["bg"]:.1%} |
"""
    card = file.with_suffix(".md")
    card.write_text(text, encoding="utf-8")
    return card
