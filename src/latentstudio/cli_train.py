"""``latentstudio train …`` and ``latentstudio eval …`` (typer sub-apps mounted by :mod:`latentstudio.cli`).

Heavy imports stay inside the commands: nothing runs at import.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

train_app = typer.Typer(help="Train models (Hugging Face accelerate; `accelerate launch` for DDP).",
                        no_args_is_help=True)  # fmt: skip
eval_app = typer.Typer(help="Evaluate models.", no_args_is_help=True)

Output = Annotated[Path, typer.Option("--output-dir", help="Run folder: config, log, checkpoints, final/.")]
Threads = Annotated[int, typer.Option(help="torch CPU threads (1 is fastest on a busy machine; 0: default).")]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="A config.json written by an earlier run (overrides flags).")
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


@train_app.command("vae")
def train_vae_command(  # noqa: PLR0917 - one option per setting
    output_dir: Output = Path("runs/vae"),
    steps: int = 1500,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    threads: Threads = 1,
    config: ConfigFile = None,
) -> None:
    """Train a small AutoencoderKL (8× downscale, 4 latent channels) on the procedural shapes set."""
    from latentstudio.train.config import VaeConfig
    from latentstudio.train.loop import train
    from latentstudio.train.tasks import VaeTask

    cfg = VaeConfig.load(config) if config else VaeConfig(
        output_dir=str(output_dir), steps=steps, batch_size=batch_size, lr=lr, seed=seed, threads=threads
    )  # fmt: skip
    result = train(VaeTask(cfg), cfg)
    typer.echo(json.dumps({"output": str(result.output_dir / "final"), "seconds": round(result.seconds, 1)}))


@train_app.command("model")
def train_model_command(  # noqa: PLR0917 - one option per setting
    vae: Annotated[
        Path | None, typer.Option(help="The final/ folder of a `train vae` run (required without --config).")
    ] = None,
    output_dir: Output = Path("runs/model"),
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 1e-3,
    objective: Annotated[str, typer.Option(help="epsilon or v_prediction.")] = "epsilon",
    min_snr_gamma: Annotated[float, typer.Option(help="Min-SNR-γ weighting (0: off).")] = 5.0,
    noise_offset: float = 0.0,
    seed: int = 0,
    threads: Threads = 1,
    config: ConfigFile = None,
) -> None:
    """Train a text-to-image UNet + CLIP text encoder from scratch on the shapes set, in the VAE's latents;
    writes an SD1 single-file checkpoint (final/model.safetensors)."""
    from latentstudio.train.config import ModelConfig
    from latentstudio.train.loop import train
    from latentstudio.train.tasks import ModelTask

    if objective not in ("epsilon", "v_prediction"):
        raise _fail(f"--objective: {objective!r} is not one of epsilon, v_prediction")
    if config is None and vae is None:
        raise _fail("--vae: required without --config (the final/ folder of `train vae`)")
    cfg = ModelConfig.load(config) if config else ModelConfig(
        output_dir=str(output_dir), vae=str(vae), steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        objective=objective, min_snr_gamma=min_snr_gamma, noise_offset=noise_offset,  # type: ignore[arg-type]
        threads=threads,
    )  # fmt: skip
    if not (Path(cfg.vae) / "vae.safetensors").is_file():
        raise _fail(f"--vae: no vae.safetensors in {cfg.vae} (give the final/ folder of `train vae`)")
    result = train(ModelTask(cfg), cfg)
    typer.echo(json.dumps({"output": str(result.output_dir / "final"), "seconds": round(result.seconds, 1)}))


@train_app.command("lora")
def train_lora_command(  # noqa: PLR0917 - one option per setting
    base: Annotated[Path, typer.Option(help="Base checkpoint: SD1/SD2/SDXL file or diffusers folder.")],
    data: Annotated[Path, typer.Option(help="Images + same-name .txt captions (N_name/: N repeats).")],
    output_dir: Output = Path("runs/lora"),
    output_name: Annotated[str, typer.Option(help="File stem, ss_output_name (default: data dir).")] = "",
    rank: int = 16,
    alpha: float = 8.0,
    steps: int = 1000,
    batch_size: int = 1,
    lr: float = 1e-4,
    resolution: int = 512,
    bucket_step: Annotated[int, typer.Option(help="Bucket sides are multiples of this (kohya: 64).")] = 64,
    train_text_encoder: Annotated[bool, typer.Option(help="Also put LoRA on the text encoder(s).")] = False,
    mixed_precision: Annotated[str, typer.Option(help="no, fp16 or bf16 (GPU).")] = "no",
    sample_prompt: Annotated[list[str] | None, typer.Option(help="Sample prompt (repeatable).")] = None,
    sample_every: int = 250,
    checkpoint_every: int = 250,
    seed: int = 0,
    threads: Threads = 1,
    config: ConfigFile = None,
) -> None:
    """Train a LoRA on a kohya-style image folder: final/<name>.safetensors (kohya keys, ss_* metadata)."""
    from latentstudio.models.files import ModelFileError
    from latentstudio.train.loop import train
    from latentstudio.train.lora import LoraConfig, LoraTask
    from latentstudio.train.lora_data import DataError

    if mixed_precision not in ("no", "fp16", "bf16"):
        raise _fail(f"--mixed-precision: {mixed_precision!r} is not one of no, fp16, bf16")
    cfg = LoraConfig.load(config) if config else LoraConfig(
        output_dir=str(output_dir), base=str(base), data=str(data), output_name=output_name, rank=rank,
        alpha=alpha, steps=steps, batch_size=batch_size, lr=lr, resolution=resolution,
        bucket_step=bucket_step,
        train_text_encoder=train_text_encoder, mixed_precision=mixed_precision,  # type: ignore[arg-type]
        sample_prompts=tuple(sample_prompt or ()), sample_every=sample_every,
        checkpoint_every=checkpoint_every, seed=seed, threads=threads,
    )  # fmt: skip
    if not Path(cfg.base).exists():
        raise _fail(f"--base: {cfg.base}: no such file")
    try:
        task = LoraTask(cfg)
    except (DataError, ModelFileError, OSError, ValueError) as e:
        raise _fail(str(e)) from None
    for warning in task.warnings:
        typer.echo(f"warning: {warning}", err=True)
    try:
        result = train(task, cfg)
    except DataError as e:  # an image that decodes badly only when its latent is cached
        raise _fail(str(e)) from None
    file = result.output_dir / "final" / f"{task.name}.safetensors"
    typer.echo(json.dumps({"output": str(file), "seconds": round(result.seconds, 1)}))


@train_app.command("shapes")
def train_shapes_command(  # noqa: PLR0917 - one option per setting
    output_dir: Output = Path("runs/shapes"),
    threads: Threads = 1,
    ship: Annotated[
        bool, typer.Option(help="Copy the result over the packaged built-in model and write its model card.")
    ] = False,
    eval_subset: Annotated[
        int, typer.Option(min=1, help="Prompts of the eval set for the card (--ship).")
    ] = 400,
    data_workers: Annotated[
        int | None,
        typer.Option(help="Processes rendering the next batches (default: 4 with a GPU, none without)."),
    ] = None,
    captions: Annotated[
        str, typer.Option(help="templates (the shipped model's five) or grammar (any phrasing; issue 18).")
    ] = "templates",
) -> None:
    """Reproduce the built-in model: `train vae` then `train model` with the shipped recipe (resumable).
    Minutes on a GPU; the model stage's batch of 512 takes hours on a small CPU. `--captions grammar`
    trains the model stage on the caption grammar instead of the five templates."""
    import os

    import torch

    from latentstudio.models.loader import load_checkpoint
    from latentstudio.train.eval_shapes import evaluate
    from latentstudio.train.recipe import CARD_NAME, builtin_model_path, model_card, run_recipe, shapes_recipe

    if data_workers is None:
        data_workers = min(4, (os.cpu_count() or 1) - 1) if torch.accelerator.is_available() else 0
    if captions not in ("templates", "grammar"):
        raise _fail(f"--captions: {captions!r} is not one of templates, grammar")
    recipe = shapes_recipe(output_dir, threads=threads, data_workers=data_workers,
                           captions=captions)  # type: ignore[arg-type]  # fmt: skip
    path = run_recipe(recipe, builtin_model_path() if ship else None)
    if ship:
        components = load_checkpoint(path, device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            accuracy, heldout = (evaluate(components, eval_subset, phrasing=p).as_dict()
                                 for p in ("templates", "heldout"))  # fmt: skip
        card = model_card(recipe, path, accuracy, heldout=heldout)
        (path.parent / CARD_NAME).write_text(card, encoding="utf-8")
    typer.echo(str(path))


@train_app.command("shapes-phrasing")
def train_shapes_phrasing_command(  # noqa: PLR0917 - one option per setting
    output_dir: Output = Path("runs/shapes-phrasing"),
    init: Annotated[
        Path | None, typer.Option(help="Checkpoint to fine-tune (default: the built-in model).")
    ] = None,
    steps: int = 500,
    batch_size: int = 128,
    lr: float = 3e-4,
    threads: Threads = 1,
    data_workers: Annotated[
        int | None,
        typer.Option(help="Processes rendering the next batches (default: 4 with a GPU, none without)."),
    ] = None,
    ship: Annotated[
        bool,
        typer.Option(
            help="Copy the result over the packaged built-in model and add the fine-tune to its card."
        ),
    ] = False,
    eval_subset: Annotated[
        int, typer.Option(min=1, help="Prompts of each eval set for the card (--ship).")
    ] = 400,
) -> None:
    """Teach the built-in model's text encoder the caption grammar (ordinary phrasings) by distillation from
    its five templates, the UNet frozen; resumable; writes final/model.safetensors."""
    import os
    import shutil

    import torch

    from latentstudio.models.files import ModelFileError
    from latentstudio.models.loader import load_checkpoint
    from latentstudio.train.eval_shapes import evaluate
    from latentstudio.train.loop import train
    from latentstudio.train.phrasing import PhrasingTask
    from latentstudio.train.recipe import (
        CARD_NAME,
        builtin_model_path,
        phrasing_card,
        phrasing_recipe,
        training_seconds,
    )

    if init is not None and not init.is_file():
        raise _fail(f"--init: {init}: no such file")
    if data_workers is None:
        data_workers = min(4, (os.cpu_count() or 1) - 1) if torch.accelerator.is_available() else 0
    cfg = phrasing_recipe(output_dir, init=init, threads=threads, data_workers=data_workers, steps=steps,
                          batch_size=batch_size, lr=lr)  # fmt: skip
    try:
        task = PhrasingTask(cfg)
    except (ModelFileError, OSError, ValueError) as e:
        raise _fail(str(e)) from None
    result = train(task, cfg)
    path = result.output_dir / "final" / "model.safetensors"
    if ship:
        destination = builtin_model_path()
        shutil.copyfile(path, destination)
        components = load_checkpoint(destination, device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            accuracy, heldout = (evaluate(components, eval_subset, phrasing=p).as_dict()
                                 for p in ("templates", "heldout"))  # fmt: skip
        card_path = destination.parent / CARD_NAME
        where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"the CPU, {threads} thread(s)"
        minutes = training_seconds(output_dir) / 60
        notes = f"This run: {cfg.steps} steps of batch {cfg.batch_size} in {minutes:.0f} min on {where}.\n"
        card = phrasing_card(card_path.read_text(encoding="utf-8"), cfg, accuracy, heldout, notes)
        card_path.write_text(card, encoding="utf-8")
        path = destination
    typer.echo(json.dumps({"output": str(path), "seconds": round(result.seconds, 1)}))


@eval_app.command("shapes")
def eval_shapes_command(  # noqa: PLR0917 - one option per setting
    model: Annotated[Path | None, typer.Option(help="Checkpoint file (default: the built-in model).")] = None,
    subset: Annotated[int, typer.Option(min=1, help="How many prompts of each fixed set.")] = 96,
    prompt_set: Annotated[
        str,
        typer.Option(
            "--set", help="templates (training templates 1, 2), heldout (unseen phrasings) or both."
        ),
    ] = "both",
    steps: int = 20,
    sampler: str = "DPM++ 2M",
    cfg_scale: float = 7.0,
    threads: Threads = 1,
    images: Annotated[
        Path | None, typer.Option(help="Also write each picture here (a folder per set).")
    ] = None,
) -> None:
    """Foreground colour / background colour / shape / position accuracy (JSON) at the model's native size,
    per prompt set; position over the prompts that name one (``position_count``)."""
    import numpy as np
    import torch
    from PIL import Image

    from latentstudio.models.files import ModelFileError
    from latentstudio.models.loader import load_checkpoint
    from latentstudio.train.eval_shapes import PHRASINGS, Reading, evaluate
    from latentstudio.train.recipe import builtin_model_path

    if prompt_set not in (*PHRASINGS, "both"):
        raise _fail(f"--set: {prompt_set!r} is not one of {', '.join(PHRASINGS)}, both")
    if threads:
        torch.set_num_threads(threads)
    path = model or builtin_model_path()
    try:
        components = load_checkpoint(path, device=torch.device("cpu"), dtype=torch.float32)
    except (ModelFileError, OSError) as e:
        raise _fail(str(e)) from None
    report: dict[str, object] = {"model": str(path), "steps": steps}
    for phrasing in [p for p in PHRASINGS if prompt_set in (p, "both")]:
        folder = images / phrasing if images is not None else None

        def save(index: int, image: np.ndarray, reading: Reading, folder: Path | None = folder) -> None:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(
                    folder / f"{index:03d}-{reading.fg}-{reading.shape}-on-{reading.bg}.png"
                )

        with torch.no_grad():
            accuracy = evaluate(components, subset, steps=steps, sampler=sampler, cfg_scale=cfg_scale,
                                on_image=save, phrasing=phrasing)  # fmt: skip
        report[phrasing] = {**accuracy.as_dict(), "position_count": accuracy.position_count}
    typer.echo(json.dumps(report, indent=2))
    sys.stdout.flush()
