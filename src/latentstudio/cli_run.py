"""``latentstudio generate``'s last step: run the job with a progress bar and write its files (the images in
A1111's ``outputs/`` layout; on request, the ControlNet units' detected maps beside them, where the
extension's "auto-save detected maps" writes them: ``<images folder>/detected_maps/<module>/``).

Heavy imports stay inside the functions: importing this module costs only typer.
"""

from __future__ import annotations

import sys
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


def run_and_save(
    components: Any, params: ResolvedParams, identity: Any, output: Path, save_maps: bool, **inputs: Any
) -> None:
    """Run the pipeline with a progress bar (``inputs``: ``run``'s optional ones); print each written path:
    the images, then (``save_maps``) the detected maps."""
    from tqdm import tqdm

    from latentstudio.pipeline.images import save_image
    from latentstudio.pipeline.run import NaNLatentError, StepInfo, run

    bar = tqdm(total=None, desc="sampling", unit="step", file=sys.stderr)

    def on_step(step: StepInfo) -> None:
        bar.total = step.total
        bar.update(step.step - bar.n)

    try:
        result = run(params, components, identity=identity, on_step=on_step, **inputs)
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
