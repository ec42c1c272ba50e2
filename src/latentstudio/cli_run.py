"""``latentstudio generate``'s last steps: load the models, run the job (or its prompts file) with a progress
bar and write its files (the images in A1111's ``outputs/`` layout; on request, the ControlNet units'
detected maps beside them, where the extension's "auto-save detected maps" writes them:
``<images folder>/detected_maps/<module>/``).

Heavy imports stay inside the functions: importing this module costs only typer.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from latentstudio.pipeline.params import ResolvedParams
    from latentstudio.pipeline.run import GenerationResult

DetectedMapsOption = Annotated[
    bool,
    typer.Option(
        "--save-detected-maps",
        help="Also write each ControlNet unit's detected map (to <images>/detected_maps/<module>/).",
    ),
]

PromptsFileOption = Annotated[
    Path | None,
    typer.Option(
        help="A1111's 'Prompts from file': one generation per line (a prompt, or --prompt … --steps N … "
        "options), put before the PROMPT argument."
    ),
]


@dataclass(frozen=True)
class Loaded:
    """A job's models: the checkpoint, how the infotext names it, and ``run``'s optional inputs."""

    components: Any
    identity: Any
    inputs: dict[str, Any]


def load_models(manager: Any, info: Any, params: ResolvedParams) -> Loaded:
    """The checkpoint ``info``, the hires checkpoint and the ControlNet units' networks the job needs
    (each checked to be of the family before anything is loaded)."""
    from latentstudio.cli_control import control_files
    from latentstudio.pipeline.hires import HiresModel, check_model
    from latentstudio.pipeline.infotexts import model_identity

    control_models = control_files(manager, info, params.control)  # found, of the family: nothing loaded
    components = manager.load(info)
    hires_model = None
    if params.hires is not None and params.hires.checkpoint is not None:
        hr_info = manager.find(params.hires.checkpoint)
        hires_model = HiresModel(manager.load(hr_info), model_identity(manager, hr_info))
        check_model(params, components, hires_model)
    inputs = {
        "embeddings": manager.embeddings(components), "loras": manager.lora_networks,
        "hypernetworks": manager.hypernetworks,
        "hires_model": hires_model, "controls": control_models.load(components.unet),
        "annotator_roots": control_models.library.annotator_roots,
    }  # fmt: skip
    return Loaded(components, model_identity(manager, info, components), inputs)


def prompts_file_params(params: ResolvedParams, path: Path, policy: Any, random_seed: bool) -> ResolvedParams:
    """``params`` running A1111's "Prompts from file or textbox" over the lines of ``path`` (UTF-8); a
    refused line is a ``--prompts-file`` error naming its number."""
    from latentstudio.core import FieldError
    from latentstudio.pipeline import scripts

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FieldError("--prompts-file", f"{path}: {e}") from None
    try:
        return scripts.prepare("Prompts from file or textbox", [False, False, "start", text], params,
                               policy=policy, env=scripts.ScriptEnv(), random_seed=random_seed)  # fmt: skip
    except FieldError as e:
        raise FieldError("--prompts-file", e.message) from None


def run_and_save(loaded: Loaded, params: ResolvedParams, output: Path, save_maps: bool) -> None:
    """Run the pipeline (or the prompts file's script) with a progress bar; print each written path: the
    images, then (``save_maps``) the detected maps."""
    from tqdm import tqdm

    from latentstudio.pipeline.images import save_image
    from latentstudio.pipeline.run import NaNLatentError, StepInfo, run
    from latentstudio.pipeline.scripts import JOB_MODEL, Model, ScriptContext, run_script

    bar = tqdm(total=None, desc="sampling", unit="step", file=sys.stderr)

    def generate(one: ResolvedParams, index: int = 0, count: int = 1, model: Model = JOB_MODEL) -> Any:
        """One generation, the bar counting over a script's ``count`` of them."""

        def on_step(step: StepInfo) -> None:
            bar.total = count * step.total
            bar.update(index * step.total + step.step - bar.n)

        return run(one, loaded.components, identity=loaded.identity, on_step=on_step, **loaded.inputs)

    def no_upscaler(image: Any, name: str, scale: float) -> Any:
        raise ValueError("the command line runs no upscaling script")

    try:
        if params.script is None:
            result = generate(params)
        else:  # --prompts-file: the job's model throughout
            result = run_script(params, ScriptContext(generate=generate, upscale=no_upscaler, upscalers=()))
    except NaNLatentError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1) from None
    finally:
        bar.close()
    folder = output / ("img2img-images" if params.is_img2img else "txt2img-images")
    for image, text, seed in zip(result.images, result.infotexts, result.seeds, strict=True):
        typer.echo(save_image(image, folder, seed, text))
    for path in save_detected_maps(result, folder / "detected_maps") if save_maps else []:
        typer.echo(path)


def save_detected_maps(result: GenerationResult, folder: Path) -> list[Path]:
    """Write the job's detected maps, each under ``folder/<module>/`` (the unit's preprocessor; numbered as
    the images are), and return the paths."""
    from latentstudio.control import preprocessors
    from latentstudio.pipeline.images import save_image

    modules = [preprocessors.find(u.module).name for u in result.params.control if u.save_detected_map]
    if not modules or not result.detected_maps:
        return []
    per_unit = len(result.detected_maps) // len(modules)  # one per pass (two with the hires fix)
    seed = result.seeds[0] if result.seeds else -1
    return [
        save_image(picture, folder / modules[i // per_unit], seed, None)
        for i, picture in enumerate(result.detected_maps)
    ]
