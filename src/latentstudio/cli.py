"""The ``latentstudio`` command line (typer). Commands build their own state; nothing runs at import."""

from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from latentstudio.cli_control import ControlOption, as_option, control_units, detect_command
from latentstudio.cli_run import (
    DetectedMapsOption,
    PromptsFileOption,
    load_models,
    prompts_file_params,
    run_and_save,
)
from latentstudio.cli_train import eval_app, train_app
from latentstudio.cli_train_control import add_control_commands

if TYPE_CHECKING:
    from latentstudio.core import FieldError

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


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def _refused(error: FieldError) -> typer.Exit:
    """A refused field as the CLI's one error line, ``error: field: message``: the one place the CLI shows
    a :class:`~latentstudio.core.FieldError`."""
    return _fail(f"{error.field}: {error.message}")


class _OwnProcess:
    """``ctx.obj`` of a command started by :func:`main`: the command owns the interpreter process."""


@contextmanager
def _importing(ctx: typer.Context) -> Iterator[None]:
    """Run a command's heavy imports (torch, diffusers, transformers, …) without the cyclic garbage collector.

    They create ~500 000 long-lived objects and no garbage; the collector's passes over the growing heap while
    they are created cost 0.6–1.4 s of ~10 s on 2 cores (bench/startup.py). In a process of its own (started
    by :func:`main`) the objects are then frozen (:func:`gc.freeze`: later collections skip them, as CPython
    recommends for start-up state); called in-process (tests), nothing is frozen, so that the caller's
    garbage is still collected. The collector's previous state is restored.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if isinstance(ctx.obj, _OwnProcess):
            gc.freeze()
        if enabled:
            gc.enable()


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


@app.command("loras")
def loras_command(
    models_dir: ModelsDir = Path("models"),
    data_dir: DataDir = Path("data"),
    lora_dir: Annotated[
        Path | None, typer.Option("--lora-dir", help="LoRA folder (default: <models-dir>/Lora).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (stable keys).")] = False,
) -> None:
    """List LoRA files (Lora/ and LyCORIS/) with alias, hash, base family and rank.

    Files that cannot be read are reported on stderr, one line each, and make the exit code 1.
    """
    from latentstudio.config import Settings
    from latentstudio.models.files import ModelFileError
    from latentstudio.models.manager import ModelManager

    settings = Settings(models_dir=models_dir, data_dir=data_dir, lora_dir=lora_dir, device="cpu")
    library = ModelManager(settings).lora_library
    rows: list[dict[str, Any]] = []
    errors = []
    for info in library.infos():
        try:
            rows.append(dataclasses.asdict(library.describe(info)))
        except (ModelFileError, OSError, ValueError) as e:
            errors.append(str(e))
    for line in [*library.errors, *errors]:
        typer.echo(f"error: {line}", err=True)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif not rows:
        typer.echo(f"no usable LoRA files in {', '.join(str(d) for d in settings.resolved_lora_dirs())}")
    for row in [] if as_json else rows:
        rank = row["rank"] if row["rank"] is not None else "?"
        typer.echo(f"{row['name']}\t{row['alias']}\t{row['shorthash']}\t{row['family'] or '?'}\trank {rank}")
    if library.errors or errors:
        raise typer.Exit(code=1)


_FLAGS = {  # a nested GenerationParams field → the generate option that sets it
    "hires.scale": "--hr-scale", "hires.upscaler": "--hr-upscaler", "hires.steps": "--hr-steps",
    "hires.checkpoint": "--hr-checkpoint", "hires.denoising_strength": "--denoising-strength",
    "inpaint.mask": "--mask", "inpaint.blur": "--mask-blur",
}  # fmt: skip


@app.command("generate")
def generate_command(  # noqa: PLR0917 - one option per generation parameter, as A1111's UI
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="The prompt (A1111 syntax).")] = "",
    negative_prompt: Annotated[str, typer.Option("--negative-prompt", "-n")] = "",
    model: Annotated[str | None, typer.Option(help="Checkpoint name, hash or path (default: first).")] = None,
    models_dir: ModelsDir = Path("models"),
    data_dir: DataDir = Path("data"),
    sampler: Annotated[str, typer.Option(help="A1111 sampler name, e.g. 'Euler a'.")] = "DPM++ 2M",
    scheduler: Annotated[str, typer.Option(help="A1111 schedule type, e.g. Karras.")] = "Automatic",
    steps: int = 20,
    cfg_scale: float = 7.0,
    seed: int = -1,
    width: Annotated[int | None, typer.Option(help="Default: the model's native size.")] = None,
    height: Annotated[int | None, typer.Option(help="Default: the model's native size.")] = None,
    batch_size: int = 1,
    n_iter: int = 1,
    clip_skip: int = 1,
    init_image: Annotated[Path | None, typer.Option(help="img2img: the initial image.")] = None,
    denoising_strength: float = 0.75,
    mask: Annotated[Path | None, typer.Option(help="Inpainting: mask image, white = repaint.")] = None,
    mask_blur: int = 4,
    color_correction: Annotated[
        bool, typer.Option("--color-correction", help="img2img: keep the init image's colours (as A1111).")
    ] = False,
    hr_scale: Annotated[float, typer.Option(help="Hires fix: second pass at this scale (1: off).")] = 1.0,
    hr_upscaler: Annotated[str, typer.Option(help="Hires upscaler: Latent…, Lanczos, Nearest.")] = "Latent",
    hr_steps: Annotated[int, typer.Option(help="Hires second-pass steps (0: as the first pass).")] = 0,
    hr_checkpoint: Annotated[
        str | None, typer.Option(help="Hires second pass with this checkpoint (same family as --model).")
    ] = None,
    rng: Annotated[str, typer.Option(help="Noise source: cpu, gpu or nv.")] = "cpu",
    tiling: Annotated[bool, typer.Option("--tiling", help="Seamless picture (A1111 Tiling).")] = False,
    tiling_axes: Annotated[str, typer.Option(help="The edges --tiling joins: both, x or y.")] = "both",
    output: Annotated[Path, typer.Option(help="Output root (A1111 outputs/ layout).")] = Path("outputs"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    control: ControlOption = None,
    save_detected_maps: DetectedMapsOption = False,
    prompts_file: PromptsFileOption = None,
) -> None:
    """Generate images and print the written paths (PNG with A1111 infotext)."""
    with _importing(ctx):
        from PIL import Image, UnidentifiedImageError

        from latentstudio.config import Settings
        from latentstudio.core import FieldError
        from latentstudio.models.files import ModelFileError
        from latentstudio.models.manager import ModelManager, ModelNotFoundError
        from latentstudio.pipeline.params import GenerationParams, Hires, Inpaint, Policy, TilingMode

    source = _rng_source(rng)
    try:
        settings = Settings(models_dir=models_dir, data_dir=data_dir, device=device)  # type: ignore[arg-type]
        manager = ModelManager(settings)
        info = manager.default_checkpoint() if model is None else manager.find(model)
        native = manager.family(info).native_size  # from the file's header: nothing is loaded yet
        hires = Hires(hr_scale, upscaler=hr_upscaler, steps=hr_steps, denoising_strength=denoising_strength,
                      checkpoint=hr_checkpoint) if hr_scale != 1.0 else None  # fmt: skip
        _check_options(tiling_axes, hr_checkpoint, hires)
        params = GenerationParams(
            prompt=prompt, negative_prompt=negative_prompt, sampler=sampler, scheduler=scheduler, steps=steps,
            cfg_scale=cfg_scale, seed=seed, width=width or native, height=height or native,
            batch_size=batch_size, n_iter=n_iter, clip_skip=clip_skip, rng=source,
            init_image=Image.open(init_image) if init_image is not None else None,
            denoising_strength=denoising_strength, color_correction=color_correction, hires=hires,
            tiling=TilingMode(tiling_axes) if tiling else TilingMode.NONE,
            inpaint=Inpaint(Image.open(mask), blur=mask_blur) if mask is not None else None,
            control=control_units(control or []),
        ).resolved(Policy(max_side=settings.max_side))  # fmt: skip
        if prompts_file is not None:
            params = prompts_file_params(params, prompts_file, Policy(max_side=settings.max_side), seed == -1)
        loaded = load_models(manager, info, params)
    except FieldError as e:  # a parameter (GenerationParams.resolved) or an option the pipeline refuses
        raise _refused(as_option(e, _FLAGS)) from None
    except (ValueError, OSError, UnidentifiedImageError, ModelFileError, ModelNotFoundError) as e:
        raise _fail(str(e)) from None
    run_and_save(loaded, params, output, save_detected_maps)


def _check_options(tiling_axes: str, hr_checkpoint: str | None, hires: Any) -> None:
    from latentstudio.core import FieldError

    if tiling_axes not in ("both", "x", "y"):
        raise FieldError("--tiling-axes", f"{tiling_axes!r} is not one of both, x, y")
    if hr_checkpoint is not None and hires is None:
        raise FieldError("--hr-checkpoint", "the hires fix is off (set --hr-scale above 1)")


def _rng_source(rng: str) -> Any:
    from latentstudio.core import FieldError
    from latentstudio.samplers.noise import RngSource

    try:
        return RngSource(rng.upper())
    except ValueError:
        raise _refused(FieldError("--rng", f"{rng!r} is not one of cpu, gpu, nv")) from None


@app.command("png-info")
def png_info_command(
    file: Annotated[Path, typer.Argument(help="A PNG written by latentstudio, A1111, Forge, …")],
    as_json: Annotated[bool, typer.Option("--json", help="The parsed parameters as JSON.")] = False,
) -> None:
    """Print the generation parameters stored in an image."""
    from PIL import Image, UnidentifiedImageError

    from latentstudio import infotext
    from latentstudio.pipeline.images import read_infotext

    try:
        with Image.open(file) as image:
            text = read_infotext(image)
    except (OSError, UnidentifiedImageError) as e:
        raise _fail(f"{file}: cannot read image ({e})") from None
    if text is None:
        raise _fail(f"{file}: no generation parameters in this image")
    typer.echo(json.dumps(infotext.parse(text), indent=2, ensure_ascii=False) if as_json else text)


@app.command("serve")
def serve_command(  # noqa: PLR0917 - one option per server setting
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 7860,
    models_dir: ModelsDir = Path("models"),
    data_dir: DataDir = Path("data"),
    api_auth: Annotated[
        str | None,
        typer.Option(
            help="HTTP Basic credentials user:pass[,user2:pass2] for every route "
            "(or LATENTSTUDIO_API_AUTH, which other users cannot see in the process list)."
        ),
    ] = None,
    max_queue: Annotated[int | None, typer.Option(min=1, help="Queued jobs before 429; default 100.")] = None,
    cors_allow_origins: Annotated[
        str | None, typer.Option(help="Comma-separated origins allowed by CORS (default: none).")
    ] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="Allow a non-loopback bind without --api-auth.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    no_ui: Annotated[
        bool, typer.Option("--no-ui", help="Serve the APIs only, without the web UI at /.")
    ] = False,
) -> None:
    """Serve the web UI (/), the native job API (/api/v1) and the A1111-compatible API (/sdapi/v1)."""
    with _importing(ctx):
        import uvicorn
        from pydantic import ValidationError

        from latentstudio.config import Settings
        from latentstudio.server import build_app, credentials_problem

    overrides: dict[str, Any] = {"models_dir": models_dir, "data_dir": data_dir, "device": device}
    if api_auth is not None:
        overrides["api_auth"] = api_auth
    if max_queue is not None:
        overrides["max_queue"] = max_queue
    if no_ui:
        overrides["ui"] = False
    if cors_allow_origins is not None:
        overrides["cors_allow_origins"] = tuple(o.strip() for o in cors_allow_origins.split(",") if o.strip())
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        raise _fail(str(e)) from None
    problem = credentials_problem(settings)
    if problem is not None:
        raise _fail(problem)
    if settings.api_auth is None and not _is_loopback(host) and not insecure_no_auth:
        raise _fail(
            f"--host {host} is reachable from other machines: set --api-auth (or LATENTSTUDIO_API_AUTH), "
            "or pass --insecure-no-auth to serve without authentication"
        )
    with _importing(ctx):  # the web UI (Gradio) is imported while the app is built
        served = build_app(settings)
    uvicorn.run(served, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)


def _is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


app.command("detect")(detect_command)
add_control_commands(train_app, eval_app)
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")


def main() -> None:
    """Console-script entry point: make the process offline, then run the command.

    When the command has finished, every object is frozen (:func:`gc.freeze`) so that the interpreter's final
    collections at exit do not walk the libraries' ~500 000 objects again (~1.5 s after ``generate``). Exit
    handlers still run and objects are still released by reference counting; only cyclic garbage left at
    that moment is not collected before the process ends.
    """
    from latentstudio.config import enforce_offline

    enforce_offline()
    try:
        app(prog_name="latentstudio", obj=_OwnProcess())
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
