"""The ``latentstudio`` command line (typer). Commands build their own state; nothing runs at import."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="latentstudio",
    help="Stable Diffusion studio: web UI, A1111-compatible API, CLI and training. Offline by design.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelsDir = Annotated[
    Path,
    typer.Option("--models-dir", help="A1111-style models root (Stable-diffusion/, VAE/, Lora/ below it)."),
]
DataDir = Annotated[Path, typer.Option("--data-dir", help="Hash cache, job store and settings.")]


@app.callback()
def _root() -> None:
    """Stable Diffusion studio: web UI, A1111-compatible API, CLI and training. Offline by design."""


@app.command("models")
def models_command(
    models_dir: ModelsDir = Path("models"),
    data_dir: DataDir = Path("data"),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (stable keys).")] = False,
) -> None:
    """List checkpoints with title, hash, family and prediction type.

    Files that cannot be read are reported on stderr, one line each, and make the exit code 1.
    """
    from latentstudio.config import Settings
    from latentstudio.models.files import ModelFileError
    from latentstudio.models.manager import ModelManager

    manager = ModelManager(Settings(models_dir=models_dir, data_dir=data_dir, device="cpu"))
    rows: list[dict[str, Any]] = []
    failures = 0
    for info in manager.checkpoints():
        try:
            rows.append(dataclasses.asdict(manager.describe(info)))
        except (ModelFileError, OSError, ValueError) as e:
            failures += 1
            typer.echo(f"error: {e}", err=True)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif not rows:
        typer.echo(f"no usable checkpoints in {models_dir / 'Stable-diffusion'}")
    for row in [] if as_json else rows:
        typer.echo(f"{row['title']}\t{row['family']}\t{row['prediction']}\t{row['native_size']}px")
    if failures:
        raise typer.Exit(code=1)


def main() -> None:
    """Console-script entry point: make the process offline, then run the command."""
    from latentstudio.config import enforce_offline

    enforce_offline()
    app(prog_name="latentstudio")


if __name__ == "__main__":  # pragma: no cover
    main()
