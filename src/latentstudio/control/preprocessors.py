"""The ControlNet preprocessors that need no weights, as sd-webui-controlnet (Mikubill, main branch) defines
and computes them: :data:`PREPROCESSORS` (by module name) and :func:`detect`.

What it matches, module by module: the names the extension's ``/controlnet/module_list`` gives and the
labels it gives with ``alias_names=true`` (here :attr:`Preprocessor.aliases`; :func:`detect` takes either,
as the extension's ``Preprocessor.get_preprocessor`` does); the sliders of its ``module_detail`` (label,
min, max, default, step, in :meth:`Preprocessor.module_detail`); the list order of
``get_sorted_preprocessors`` (:func:`module_list`); and the image each returns, ``[H, W, 3]`` uint8 RGB
(:mod:`latentstudio.control.preprocess_ops` says how each is computed and at what size).

Sources: ``scripts/supported_preprocessor.py`` (``PreprocessorParameter`` defaults: step 0.01; the default
Resolution slider 64–2048, 512, step 8), ``scripts/preprocessor/model_free_preprocessors.py`` (none,
canny, invert, blur_gaussian, scribble_xdog, shuffle) and ``scripts/preprocessor/legacy/
preprocessor_compiled.py`` + ``processor.py`` (lineart_standard, recolor_*, color, threshold, tile_*). The
legacy wrapper stores its resolution setting as ``self.resolution``, never ``slider_resolution``, so every
legacy preprocessor keeps the default Resolution slider in ``module_detail``, even those that ignore it
(tile_*, recolor_*); :attr:`Preprocessor.uses_resolution` says which read it. There is no ``scribble_thr``
module: that function was never registered and is gone; ``threshold`` is the thresholding preprocessor.

Parameters: ``None`` (or -1, the A1111 API's "unset") takes the slider's default. The extension replaces
any out-of-range value by the default silently; here an out-of-range or non-finite value is refused with
:class:`~latentstudio.core.FieldError` naming ``processor_res``, ``threshold_a`` or ``threshold_b``. A value
for a slider the module does not have is ignored, as in the extension. Steps are not enforced (the
extension does not either: pixel-perfect resolutions are any integer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from latentstudio.control import annotated, annotators
from latentstudio.control import preprocess_ops as ops
from latentstudio.control.preprocessor_types import RESOLUTION, UNSET, Preprocessor, Settings, Slider
from latentstudio.core import FieldError
from latentstudio.models.files import ModelFileError

__all__ = ["RESOLUTION", "UNSET", "Preprocessor", "Settings", "Slider"]  # re-exported: the record types


def _identity(image: np.ndarray, _: Settings) -> np.ndarray:
    return image.copy()


def _lineart_standard(image: np.ndarray, s: Settings) -> np.ndarray:
    return ops.lineart_standard(image, s.resolution)


def _threshold(image: np.ndarray, s: Settings) -> np.ndarray:
    return ops.threshold(image, s.resolution, s.a)


def _tile_resample(image: np.ndarray, s: Settings) -> np.ndarray:
    try:
        return ops.tile_resample(image, s.a)
    except ValueError as e:
        raise FieldError("threshold_a", str(e)) from e


_GAMMA = Slider("Gamma Correction", 0.1, 2.0, 1.0, 0.001)
_VARIATION = Slider("Variation", 3.0, 32.0, 8.0, 1.0)

_ALL = (
    # scripts/preprocessor/model_free_preprocessors.py
    Preprocessor("none", _identity, uses_resolution=False, priority=10, tags=("InstructP2P",)),
    Preprocessor(
        "canny",
        lambda img, s: ops.canny(img, s.resolution, s.a, s.b),
        threshold_a=Slider("Low Threshold", 1, 255, 100, 1),
        threshold_b=Slider("High Threshold", 1, 255, 200, 1),
        priority=100,
        tags=("Canny",),
    ),
    Preprocessor(
        "invert",
        lambda img, _: 255 - img,
        aliases=("invert (from white bg & black line)",),
        resolution=None,
        uses_resolution=False,
        priority=20,
        tags=("Canny", "Lineart", "Scribble", "MLSD"),
    ),
    Preprocessor(
        "blur_gaussian",
        lambda img, s: ops.blur_gaussian(img, s.resolution, s.a),
        threshold_a=Slider("Sigma", 0.01, 64.0, 9.0),
        tags=("Tile",),
    ),
    Preprocessor(
        "scribble_xdog",
        lambda img, s: ops.scribble_xdog(img, s.resolution, s.a),
        threshold_a=Slider("XDoG Threshold", 1, 64, 32),
        tags=("Scribble", "SparseCtrl"),
    ),
    Preprocessor(
        "shuffle",
        lambda img, s: ops.shuffle(img, s.seed),
        resolution=None,  # hidden and fixed at 512 (ops.SHUFFLE_RESOLUTION)
        uses_resolution=False,
        tags=("Shuffle",),
    ),
    # scripts/preprocessor/legacy/preprocessor_compiled.py, computed in legacy/processor.py
    Preprocessor(
        "lineart_standard",
        _lineart_standard,
        aliases=("lineart_standard (from white bg & black line)",),
        priority=100,
        tags=("Lineart",),
    ),
    Preprocessor(
        "recolor_intensity",
        lambda img, s: ops.recolor(img, s.a, luminance=False),
        uses_resolution=False,
        threshold_a=_GAMMA,
        tags=("Recolor",),
    ),
    Preprocessor(
        "recolor_luminance",
        lambda img, s: ops.recolor(img, s.a, luminance=True),
        uses_resolution=False,
        threshold_a=_GAMMA,
        priority=100,
        tags=("Recolor",),
    ),
    Preprocessor(
        "color",
        lambda img, s: ops.color_grid(img, s.resolution),
        aliases=("t2ia_color_grid",),
        tags=("T2I-Adapter",),
    ),
    Preprocessor("threshold", _threshold, threshold_a=Slider("Binarization Threshold", 0, 255, 127)),
    Preprocessor("tile_colorfix", _identity, threshold_a=_VARIATION, uses_resolution=False, tags=("Tile",)),
    Preprocessor(
        "tile_colorfix+sharp",
        _identity,
        threshold_a=_VARIATION,
        threshold_b=Slider("Sharpness", 0.0, 2.0, 1.0, 0.01),
        uses_resolution=False,
        tags=("Tile",),
    ),
    Preprocessor(
        "tile_resample",
        _tile_resample,
        threshold_a=Slider("Down Sampling Rate", 1.0, 8.0, 1.0, 0.01),
        uses_resolution=False,
        priority=100,
        tags=("Tile",),
    ),
    # scripts/preprocessor/inpaint.py: the picture and its mask, as they are; the pipeline does the rest
    Preprocessor(
        "inpaint",
        _identity,
        aliases=("inpaint_global_harmonious",),
        resolution=None,
        uses_resolution=False,
        tags=("Inpaint",),
        accepts_mask=True,
    ),
    Preprocessor(
        "inpaint_only",
        _identity,
        resolution=None,
        uses_resolution=False,
        priority=100,
        tags=("Inpaint",),
        accepts_mask=True,
    ),
    *annotated.ENTRIES,  # the legacy preprocessors that need annotator weights and run here
)

PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in _ALL}
_BY_ALIAS: dict[str, Preprocessor] = {alias: p for p in _ALL for alias in p.aliases}


def find(module: str) -> Preprocessor:
    """The preprocessor called ``module`` (its name or an alias), else :class:`FieldError` on ``module``
    listing the names allowed."""
    found = _BY_ALIAS.get(module) or PREPROCESSORS.get(module)
    needs_weights = annotators.refusal(module)
    if found is None and needs_weights is not None:
        raise FieldError("module", needs_weights)
    if found is None:
        names = ", ".join(module_list())
        aliases = ", ".join(repr(a) for a in _BY_ALIAS)
        raise FieldError("module", f"unknown ControlNet module {module!r}; allowed: {names} (or {aliases})")
    return found


def module_list(alias_names: bool = False, roots: Sequence[Path] = ()) -> list[str]:
    """The names (or labels) in the extension's ``get_sorted_preprocessors`` order: ``none`` first, then by
    ``str(priority).zfill(8) + label``, descending; a module that needs annotator weights only when its
    files are found in ``roots`` (:func:`annotators.roots`)."""
    usable = (p for p in _ALL if p.name != "none" and _runnable(p, roots))
    rest = sorted(usable, key=lambda p: str(p.priority).zfill(8) + p.label, reverse=True)
    return [p.label if alias_names else p.name for p in [PREPROCESSORS["none"], *rest]]


def control_types(models: list[str], roots: Sequence[Path] = ()) -> dict[str, dict[str, object]]:
    """The extension's ``/controlnet/control_types`` over these preprocessors and the listed ``models``
    (titles): "All", then every tag in sorted order, each with the labels of its preprocessors ("none"
    first), the models whose name holds the tag or one of its aliases (``tag_to_filters``; "None" first),
    the default preprocessor (the first after "none") and the default model (one with "11" in its name,
    else the first listed). ``roots``: where annotator files are found (as :func:`module_list`)."""
    everything = ["None", *models]
    listed = module_list(True, roots)
    types: dict[str, dict[str, object]] = {
        "All": {"module_list": listed, "model_list": everything, "default_option": "none",
                "default_model": "None"},
    }  # fmt: skip
    for tag in sorted({t for p in _ALL for t in p.tags if p.label in listed}):
        labels = [label for label in listed if label == "none" or tag in find(label).tags]
        filters = {tag.lower(), *_TAG_FILTERS.get(tag.lower(), ())}
        chosen = [m for m in everything if m.lower() == "none" or any(f in m.lower() for f in filters)]
        default = chosen[1] if len(chosen) > 1 else "None"
        default = next((m for m in chosen if "11" in m.split("[")[0]), default)
        option = labels[1] if len(labels) > 1 else labels[0]
        types[tag] = {"module_list": labels, "model_list": chosen, "default_option": option,
                      "default_model": default}  # fmt: skip
    return types


_TAG_FILTERS = {  # the extension's Preprocessor.tag_to_filters aliases
    "instructp2p": ("ip2p",), "segmentation": ("seg",), "normalmap": ("normal",),
    "t2i-adapter": ("t2i_adapter", "t2iadapter", "t2ia"), "ip-adapter": ("ip_adapter", "ipadapter"),
    "openpose": ("openpose", "densepose"), "instant-id": ("instant_id", "instantid"), "scribble": ("sketch",),
    "tile": ("blur",),
}  # fmt: skip


def module_detail(alias_names: bool = False, roots: Sequence[Path] = ()) -> dict[str, dict[str, object]]:
    """The extension's ``module_detail`` for these modules, keyed as :func:`module_list`."""
    return {key: find(key).module_detail() for key in module_list(alias_names, roots)}


def missing_files(module: str, roots: Sequence[Path]) -> str | None:
    """Why ``module`` (a known one) cannot run for want of its annotator files in ``roots``; None if it
    can."""
    p = find(module)
    return None if _runnable(p, roots) else annotators.missing(p.label, p.files)


def unavailable(roots: Sequence[Path] = ()) -> dict[str, list[str]]:
    """The extension's weight-needing modules that cannot run here, with the files each needs: those not
    run here yet, and those that run but whose files are not in ``roots``."""
    missing = {p.label: [f"{annotators.DOWNLOADS}/{f}" for f in p.files] for p in _ALL
               if not _runnable(p, roots)}  # fmt: skip
    return {**missing, **annotators.unavailable()}


def _runnable(p: Preprocessor, roots: Sequence[Path]) -> bool:
    """Whether ``p`` needs no annotator files or finds them all in ``roots``."""
    return not p.files or annotators.locate(p.files, roots) is not None


def display(module: str, detected: np.ndarray) -> np.ndarray:
    """A detected map as the extension shows and returns it: an inpaint module's with the masked part half
    transparent (:func:`ops.show_mask`), the others as they are."""
    return ops.show_mask(detected) if find(module).accepts_mask else detected


def numpy_seed(seed: int, subseed: int) -> int:
    """The numpy seed the extension sets before preprocessing for a generation (``set_numpy_seed``):
    ``(max(seed, 0) + max(subseed, 0)) & 0xFFFFFFFF``, with -1 seeds already resolved to the first image's."""
    return (max(seed, 0) + max(subseed, 0)) & 0xFFFFFFFF


def detect(  # noqa: PLR0917 - the extension's /controlnet/detect fields, in its order
    module: str,
    image: np.ndarray,
    processor_res: int | None = None,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
    seed: int | None = None,
    roots: Sequence[Path] = (),
    *,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Run the preprocessor ``module`` (name or alias) on ``image`` and return ``[H', W', 3]`` uint8 RGB
    (``[H, W, 4]`` for an inpaint module: the picture and ``mask``, see :func:`ops.with_mask`).

    ``image`` is uint8 ``[H, W, 3]`` RGB (``[H, W]``, ``[H, W, 1]`` and RGBA are converted as the extension's
    ``HWC3`` does: grey repeated, alpha composited over white). ``seed`` seeds shuffle's numpy
    ``RandomState`` (see :func:`numpy_seed`); ``None``: fresh entropy, as the extension's ``/detect``.
    ``roots``: where a weight-needing module's files are found. Raises :class:`FieldError` for an unknown
    module, a missing or unusable annotator file (on ``module``), a bad image, or a parameter out of its
    slider's range."""
    return detect_with_pose(module, image, processor_res, threshold_a, threshold_b, seed, roots, mask=mask)[0]


def detect_with_pose(  # noqa: PLR0917 - as detect
    module: str,
    image: np.ndarray,
    processor_res: int | None = None,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
    seed: int | None = None,
    roots: Sequence[Path] = (),
    *,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, object] | None]:
    """:func:`detect`, and for a pose estimator (the openpose modules) the pose it found as the extension's
    JSON (``/controlnet/detect``'s ``poses``); None for the others."""
    preprocessor = find(module)
    if not isinstance(image, np.ndarray) or min(image.shape[:2], default=0) < 1:
        raise FieldError("image", "expected a non-empty image array")
    float_map = preprocessor.accepts_mask and image.dtype == np.float32  # fitted before (LaMa outpainting)
    try:
        rgb = image if float_map else ops.hwc3(image)
    except ValueError as e:
        raise FieldError("image", str(e)) from e
    if preprocessor.accepts_mask:
        try:
            rgb = ops.with_mask(rgb, mask)
        except ValueError as e:
            raise FieldError("mask", str(e)) from e
    settings = preprocessor.settings(processor_res, threshold_a, threshold_b, seed)
    if preprocessor.files:
        weights = annotators.locate(preprocessor.files, roots)
        if weights is None:
            raise FieldError("module", annotators.missing(preprocessor.label, preprocessor.files))
        settings = dataclasses.replace(settings, weights=weights)
    try:
        if preprocessor.pose is not None:
            return preprocessor.pose(rgb, settings)
        return preprocessor.run(rgb, settings), None
    except ModelFileError as e:
        raise FieldError("module", str(e)) from e
