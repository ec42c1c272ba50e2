"""``latentstudio train controlnet|t2i-adapter|shapes-control`` and ``latentstudio eval shapes-control``,
added to the ``train`` / ``eval`` sub-apps of :mod:`latentstudio.cli_train` by :func:`add_control_commands`.

Heavy imports stay inside the commands: nothing runs at import.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

Output = Annotated[Path, typer.Option("--output-dir", help="Run folder: config, log, checkpoints, final/.")]
Threads = Annotated[int, typer.Option(help="torch CPU threads (1 is fastest on a busy machine; 0: default).")]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="A config.json written by an earlier run (overrides flags).")
]
_HELP = {
    "controlnet": "Train a ControlNet (a copy of the base UNet's encoder, zero convolutions) for a frozen "
    "SD1/SD2/SDXL checkpoint: final/<name>.safetensors in lllyasviel's cldm layout (sd-webui-controlnet "
    "loads it).",
    "t2i-adapter": "Train a T2I-Adapter (TencentARC's, from scratch) for a frozen SD1/SD2/SDXL checkpoint: "
    "final/<name>.safetensors in Tencent's layout.",
}


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def _train_command(kind: str) -> Callable[..., None]:
    """The ``train <kind>`` command (the same options for both kinds)."""

    def command(  # noqa: PLR0917 - one option per setting
        base: Annotated[Path, typer.Option(help="Base checkpoint: SD1/SD2/SDXL file or diffusers folder.")],
        data: Annotated[Path, typer.Option(help="Images + same-name .txt captions (N_name/: N repeats).")],
        conditioning_data: Annotated[
            Path | None, typer.Option(help="Condition images: the same relative paths and stems as --data.")
        ] = None,
        preprocessor: Annotated[
            str, typer.Option(help="Or make the conditions with one of our preprocessors (canny, …; cached).")
        ] = "",
        processor_res: int = 512,
        threshold_a: float | None = None,
        threshold_b: float | None = None,
        output_dir: Output = Path(f"runs/{kind}"),
        output_name: Annotated[str, typer.Option(help="File stem (default: the data folder's name).")] = "",
        resolution: int = 512,
        hint_channels: Annotated[int, typer.Option(help="Channels of the control image: 3 or 1.")] = 3,
        steps: int = 1000,
        batch_size: int = 4,
        grad_accum: int = 1,
        lr: float = 1e-5,
        warmup: int = 0,
        caption_dropout: Annotated[float, typer.Option(help="Fraction of empty prompts (paper: 0.5).")] = 0.5,
        ema_decay: Annotated[float, typer.Option(help="EMA of the weights (0: off).")] = 0.0,
        mixed_precision: Annotated[str, typer.Option(help="no, fp16 or bf16 (GPU).")] = "no",
        gradient_checkpointing: bool = False,
        sample_prompt: Annotated[list[str] | None, typer.Option(help="Sample prompt (repeatable).")] = None,
        sample_every: int = 250,
        checkpoint_every: int = 250,
        seed: int = 0,
        threads: Threads = 1,
        data_workers: Annotated[int, typer.Option(help="Processes loading the next batches.")] = 0,
        config: ConfigFile = None,
    ) -> None:
        from latentstudio.core import FieldError
        from latentstudio.models.files import ModelFileError
        from latentstudio.train.config import ControlConfig
        from latentstudio.train.control import ControlTask
        from latentstudio.train.loop import train
        from latentstudio.train.lora_data import DataError

        if mixed_precision not in ("no", "fp16", "bf16"):
            raise _fail(f"--mixed-precision: {mixed_precision!r} is not one of no, fp16, bf16")
        try:
            cfg = ControlConfig.load(config) if config else ControlConfig(
                output_dir=str(output_dir), network=kind, base=str(base), data=str(data),  # type: ignore[arg-type]
                conditioning_data=str(conditioning_data or ""), preprocessor=preprocessor,
                processor_res=processor_res, threshold_a=threshold_a, threshold_b=threshold_b,
                output_name=output_name, resolution=resolution, hint_channels=hint_channels, steps=steps,
                batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup=warmup,
                caption_dropout=caption_dropout, ema_decay=ema_decay,
                mixed_precision=mixed_precision,  # type: ignore[arg-type]
                gradient_checkpointing=gradient_checkpointing, sample_prompts=tuple(sample_prompt or ()),
                sample_every=sample_every, checkpoint_every=checkpoint_every, seed=seed, threads=threads,
                data_workers=data_workers,
            )  # fmt: skip
            if not Path(cfg.base).exists():
                raise _fail(f"--base: {cfg.base}: no such file")
            task = ControlTask(cfg)
            for warning in task.warnings:
                typer.echo(f"warning: {warning}", err=True)
            result = train(task, cfg)
        except FieldError as e:
            raise _fail(f"--preprocessor: {e.message}") from None
        except (DataError, ModelFileError, OSError, ValueError) as e:
            raise _fail(str(e)) from None
        file = result.output_dir / "final" / f"{task.name}.safetensors"
        typer.echo(json.dumps({"output": str(file), "seconds": round(result.seconds, 1)}))

    command.__doc__ = _HELP[kind]
    return command


def shapes_control_command(
    output_dir: Output = Path("runs/shapes-control"),
    threads: Threads = 1,
    data_workers: Annotated[int, typer.Option(help="Processes drawing the next batches.")] = 1,
    ship: Annotated[
        bool, typer.Option(help="Copy the result beside the packaged built-in model and write its card.")
    ] = False,
    eval_subset: Annotated[int, typer.Option(min=1, help="Held-out pictures for the card (--ship).")] = 200,
) -> None:
    """Reproduce the built-in control model: a canny ControlNet of the built-in model, trained on shapes
    anywhere (resumable; the model card records the config, time and eval numbers)."""
    import shutil

    from latentstudio.models.builtin import builtin_checkpoint, builtin_control
    from latentstudio.train.control import ControlTask
    from latentstudio.train.control_recipe import control_recipe, write_card
    from latentstudio.train.loop import train

    config = control_recipe(output_dir, builtin_checkpoint(), threads=threads, data_workers=data_workers)
    file = output_dir / "final" / f"{config.output_name}.safetensors"
    if not file.is_file():
        train(ControlTask(config), config)
    if ship:
        shutil.copyfile(file, builtin_control())
        write_card(config, builtin_control(), eval_subset)
    typer.echo(str(builtin_control() if ship else file))


def eval_shapes_control_command(  # noqa: PLR0917 - one option per setting
    model: Annotated[Path | None, typer.Option(help="Control file (default: the built-in one).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint (default: the built-in model).")] = None,
    subset: Annotated[int, typer.Option(min=1, help="How many held-out pictures.")] = 96,
    steps: int = 20,
    cfg_scale: float = 7.0,
    threads: Threads = 1,
    images: Annotated[Path | None, typer.Option(help="Also write condition | result pictures here.")] = None,
) -> None:
    """Shape IoU and colour accuracy of a canny control model of the built-in model on held-out shapes
    (JSON); see latentstudio.train.control_shapes."""
    import numpy as np
    import torch
    from PIL import Image

    from latentstudio.models.builtin import builtin_checkpoint, builtin_control
    from latentstudio.models.files import ModelFileError
    from latentstudio.models.loader import load_checkpoint
    from latentstudio.train.control_shapes import ControlSample, evaluate_control, load_for_eval

    if threads:
        torch.set_num_threads(threads)
    try:
        components = load_checkpoint(checkpoint or builtin_checkpoint(), device=torch.device("cpu"),
                                     dtype=torch.float32)  # fmt: skip
        network = load_for_eval(model or builtin_control(), components)
    except (ModelFileError, OSError) as e:
        raise _fail(str(e)) from None

    def save(index: int, sample: ControlSample, image: np.ndarray, iou: float) -> None:
        if images is not None:
            images.mkdir(parents=True, exist_ok=True)
            side = image.shape[0]
            condition = Image.fromarray(sample.condition).resize((side, side))
            pair = Image.new("RGB", (2 * side, side))
            pair.paste(condition, (0, 0))
            pair.paste(Image.fromarray(image), (side, 0))
            pair.save(
                images / f"{index:03d}-iou{iou:.2f}-{sample.fg}-{sample.shape.shape}-on-{sample.bg}.png"
            )

    accuracy = evaluate_control(components, network, subset, steps=steps, cfg_scale=cfg_scale, on_image=save)
    typer.echo(json.dumps({"model": str(model or builtin_control()), **accuracy.as_dict()}, indent=2))


def add_control_commands(train: typer.Typer, evaluate: typer.Typer) -> None:
    """Add the control-training commands to the ``train`` and ``eval`` apps."""
    for kind in ("controlnet", "t2i-adapter"):
        train.command(kind)(_train_command(kind))
    train.command("shapes-control")(shapes_control_command)
    evaluate.command("shapes-control")(eval_shapes_control_command)
