"""ControlNet on the command line: ``latentstudio detect`` (a preprocessor on an image file) and the
``generate --control MODULE:MODEL:IMAGE[:WEIGHT]`` units (registered by :mod:`latentstudio.cli`).

Heavy imports stay inside the functions: importing this module costs only typer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel
    from PIL import Image

    from latentstudio.control.library import ControlFile, ControlLibrary
    from latentstudio.control.networks import ControlNetwork
    from latentstudio.control.units import ControlUnit
    from latentstudio.core import FieldError
    from latentstudio.models.discovery import CheckpointInfo
    from latentstudio.models.manager import ModelManager

CONTROL_FORM = "MODULE:MODEL:IMAGE[:WEIGHT]"

ControlOption = Annotated[
    list[str] | None,
    typer.Option(
        "--control",
        metavar=CONTROL_FORM,
        help="A ControlNet unit, e.g. canny:control_v11p_sd15_canny:edges.png:0.8 (repeatable, at most 3). "
        "MODULE and MODEL contain no ':'; the rest is the image path, unless its last ':' field reads as a "
        "number: then that is the weight (default 1).",
    ),
]

_DETECT_FIELDS = {  # a field preprocessors.detect refuses → the detect argument that sets it
    "module": "MODULE", "image": "INPUT", "processor_res": "--res", "threshold_a": "--threshold-a",
    "threshold_b": "--threshold-b", "seed": "--seed", "mask": "--mask",
}  # fmt: skip


def _refused(error: FieldError) -> typer.Exit:
    """The refusal as the CLI's one error line, ``error: field: message`` (as :mod:`latentstudio.cli`)."""
    typer.echo(f"error: {error.field}: {error.message}", err=True)
    return typer.Exit(code=1)


def detect_command(  # noqa: PLR0917 - the extension's /controlnet/detect fields
    module: Annotated[str, typer.Argument(metavar="MODULE", help="Preprocessor name or label, e.g. canny.")],
    input_image: Annotated[Path, typer.Argument(metavar="INPUT", help="The image to preprocess.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the map (.png).")],
    res: Annotated[int, typer.Option("--res", help="Processor resolution (-1: the module's default).")] = -1,
    threshold_a: Annotated[float, typer.Option(help="Threshold A (-1: the module's default).")] = -1,
    threshold_b: Annotated[float, typer.Option(help="Threshold B (-1: the module's default).")] = -1,
    seed: Annotated[int, typer.Option(help="Seed of random modules such as shuffle (-1: random).")] = -1,
    mask: Annotated[Path | None, typer.Option(help="The inpaint modules' mask (white: to redraw).")] = None,
    models_dir: Annotated[
        Path, typer.Option("--models-dir", help="Models root: annotator files in ControlNetPreprocessor/.")
    ] = Path("models"),
) -> None:
    """Run a ControlNet preprocessor on an image and write the detected map as PNG; print its path."""
    from PIL import Image

    from latentstudio.control import annotators, hint, preprocessors
    from latentstudio.core import FieldError
    from latentstudio.pipeline.images import png_bytes, write_atomic

    try:
        if output.suffix.lower() != ".png":
            raise FieldError("--output", f"the map is written as PNG: name a .png file, got {str(output)!r}")
        picture = hint.array(open_image(input_image, "INPUT"))
        masked = hint.array(open_image(mask, "--mask")) if mask is not None else None
        try:
            detected = preprocessors.detect(
                module, picture, res, threshold_a, threshold_b, None if seed == -1 else seed,
                roots=annotators.roots(models_dir), mask=masked,
            )  # fmt: skip
        except FieldError as e:
            raise FieldError(_DETECT_FIELDS.get(e.field, e.field), e.message) from None
        data = png_bytes(Image.fromarray(preprocessors.display(module, detected)), None)
        try:
            write_atomic(output, data)
        except OSError as e:
            raise FieldError("--output", f"cannot write {str(output)!r} ({e})") from None
    except FieldError as e:
        raise _refused(e) from None
    typer.echo(output)


def open_image(path: Path, option: str) -> Image.Image:
    """The image file at ``path``, decoded (so that a broken file fails here, not halfway through a
    job), else :class:`FieldError` on ``option``."""
    from PIL import Image

    from latentstudio.core import FieldError

    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise FieldError(option, f"cannot read image {str(path)!r} ({e})") from None


@dataclass(frozen=True)
class ControlSpec:
    """One ``--control`` value, parsed: nothing is read yet."""

    module: str
    model: str
    image: Path
    weight: float = 1.0


def parse_control(value: str) -> ControlSpec:
    """``MODULE:MODEL:IMAGE[:WEIGHT]`` → its fields, else :class:`FieldError` on ``--control``.

    The rule: MODULE and MODEL never contain ``:`` (module names and model stems do not), so they end at
    the first and second ``:``; the rest is IMAGE, except that when it holds a further ``:`` and the text
    after the last one reads as a number (:func:`float`), that is WEIGHT. So ``C:\\x\\edges.png`` and
    ``C:\\x\\edges.png:0.8`` both name the image ``C:\\x\\edges.png``; an image whose own name ends in
    ``:<number>`` needs an explicit weight after it.
    """
    from latentstudio.core import FieldError

    module, _, rest = value.partition(":")
    model, _, image = rest.partition(":")
    head, colon, tail = image.rpartition(":")
    weight = _number(tail) if colon and head else None
    if weight is not None:
        image = head
    if not (module.strip() and model.strip() and image):
        raise FieldError("--control", f"expected {CONTROL_FORM}, got {value!r}")
    return ControlSpec(module, model, Path(image), 1.0 if weight is None else weight)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def control_units(values: Sequence[str]) -> tuple[ControlUnit, ...]:
    """The ``--control`` values as units, their images opened (at most ``MAX_UNITS``); :class:`FieldError`
    on ``--control`` for a value of the wrong form or an image that cannot be read. The pipeline's
    parameters validate the rest (module, weight)."""
    from latentstudio.control.units import MAX_UNITS, ControlUnit
    from latentstudio.core import FieldError

    if len(values) > MAX_UNITS:
        raise FieldError("--control", f"at most {MAX_UNITS} ControlNet units, got {len(values)}")
    specs = [parse_control(value) for value in values]
    return tuple(
        ControlUnit(module=s.module, model=s.model, image=open_image(s.image, "--control"), weight=s.weight)
        for s in specs
    )


def as_option(error: FieldError, flags: Mapping[str, str]) -> FieldError:
    """``error`` with its field named as the ``generate`` option that sets it (``flags``: a
    ``GenerationParams`` field → its option); a unit's ``control.<i>[.<name>]`` becomes ``--control`` with
    ``unit <i + 1>[ <name>]:`` before the message."""
    from latentstudio.core import FieldError

    head, _, rest = error.field.partition(".")
    if head != "control":
        return FieldError(flags.get(error.field, error.field), error.message)
    index, _, name = rest.partition(".")
    where = f"unit {int(index) + 1} {name}".strip() if index.isdigit() else name
    return FieldError("--control", f"{where}: {error.message}" if where else error.message)


@dataclass(frozen=True)
class ControlFiles:
    """The model files of a job's units, in order, found and of the checkpoint's family."""

    library: ControlLibrary
    files: tuple[ControlFile, ...]

    def load(self, unet: UNet2DConditionModel) -> list[ControlNetwork]:
        """The networks, loaded for ``unet`` (a difference ControlNet is built on it); :class:`FieldError`
        on ``--control`` for a file that cannot be loaded."""
        from latentstudio.core import FieldError
        from latentstudio.models.files import ModelFileError

        networks = []
        for i, file in enumerate(self.files, 1):
            try:
                networks.append(self.library.load(file, unet))
            except (ModelFileError, OSError) as e:
                raise FieldError("--control", f"unit {i} model: {e}") from None
        return networks


def control_files(manager: ModelManager, info: CheckpointInfo, units: Sequence[ControlUnit]) -> ControlFiles:
    """Each unit's model file under ``<models-dir>/ControlNet``, checked against the family of the
    checkpoint ``info`` from its header (before anything is loaded); :class:`FieldError` on ``--control``
    naming the unit for a model not found, unreadable, or of another family."""
    from latentstudio.control import preprocessors
    from latentstudio.control.library import ControlLibrary, ControlModelNotFoundError
    from latentstudio.core import FieldError
    from latentstudio.models.files import ModelFileError

    library = ControlLibrary(
        manager.settings.models_dir, manager.device, manager.dtype, manager.builtin_control_files
    )
    family = manager.family(info).family  # from the header, cached: generate has read it already
    files = []
    for i, unit in enumerate(units, 1):
        missing = preprocessors.missing_files(unit.module, library.annotator_roots)
        if missing is not None:
            raise FieldError("--control", f"unit {i} module: {missing}")
        try:
            files.append(library.resolve(unit.model, family, info.name))
        except (ControlModelNotFoundError, ModelFileError, OSError) as e:
            raise FieldError("--control", f"unit {i} model: {e}") from None
    return ControlFiles(library, tuple(files))
