"""The sd-webui-controlnet preprocessors that need downloaded annotator weights (depth, pose, soft edges,
line art, segmentation, normals …): which file each needs and where it is looked for.

The extension downloads these on first use into
``extensions/sd-webui-controlnet/annotator/downloads/<folder>/``. This server never downloads anything: it
reads a file the user placed there (beside an A1111 models folder) or in
``<models>/ControlNetPreprocessor/<folder>/`` (:func:`roots`, :func:`locate`). HED, PiDiNet, TEED/Anyline,
the line-art models (realistic, coarse, anime, anime denoise), M-LSD, MiDaS (depth and normals), Bae's
normals, LeReS (and its boosting), Depth Anything (v1, v2), OpenPose, the UniFormer and anime face
segmentations and LaMa run from their files (registered in :mod:`latentstudio.control.annotated`); the
others here (:data:`ANNOTATORS`, by label, with the extension's older names too) do not run yet (or never:
the ONNX and TorchScript ones): each is listed (``/controlnet/module_list`` ``unavailable``) with the file it
would need, and a request naming one is a 422 that names that file and folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DOWNLOADS = "extensions/sd-webui-controlnet/annotator/downloads"  # relative to the A1111 root
OWN_FOLDER = "ControlNetPreprocessor"  # under the models folder (Forge's name for it)


@dataclass(frozen=True)
class Annotator:
    """A weight-needing preprocessor: its modules' labels, the files (``<folder>/<file>``) it loads, and
    the extension's other (legacy) names for those modules, which a request may use too; ``program``: the
    format (ONNX, TorchScript) of a file that holds a program, not weights, which this server never runs."""

    modules: tuple[str, ...]
    files: tuple[str, ...]
    names: tuple[str, ...] = ()
    program: str = ""  # the file's format where it is a program rather than weights: never run


ANNOTATORS = (
    Annotator(("depth_zoe",), ("zoedepth/ZoeD_M12_N.pt",)),
    Annotator(
        ("dw_openpose_full",), ("openpose/dw-ll_ucoco_384.onnx", "openpose/yolox_l.onnx"), program="ONNX"
    ),
    Annotator(
        ("animal_openpose",), ("openpose/rtmpose-m_ap10k_256.onnx", "openpose/yolox_l.onnx"), program="ONNX"
    ),
    Annotator(
        ("densepose", "densepose_parula"),
        ("densepose/densepose_r50_fpn_dl.torchscript",),
        program="TorchScript",
    ),
    Annotator(
        ("seg_ofade20k",), ("oneformer/250_16_swin_l_oneformer_ade20k_160k.pth",), ("oneformer_ade20k",)
    ),
    Annotator(("seg_ofcoco",), ("oneformer/150_16_swin_l_oneformer_coco_100ep.pth",), ("oneformer_coco",)),
)
BY_MODULE = {module: annotator for annotator in ANNOTATORS for module in annotator.modules}
_BY_NAME = {**{name: annotator for annotator in ANNOTATORS for name in annotator.names}, **BY_MODULE}


def roots(models_dir: Path) -> tuple[Path, ...]:
    """The folders annotator files are looked for in, in order: ours under the models folder, then the
    extension's downloads folder beside it (an A1111 install's ``models/`` and ``extensions/``)."""
    return (Path(models_dir) / OWN_FOLDER, Path(models_dir).parent / DOWNLOADS)


def locate(files: Sequence[str], folders: Sequence[Path]) -> tuple[Path, ...] | None:
    """Each of ``files`` (``<folder>/<file>``) in the first of ``folders`` that has it; None if one is
    missing."""
    found = []
    for name in files:
        path = next((root / name for root in folders if (root / name).is_file()), None)
        if path is None:
            return None
        found.append(path)
    return tuple(found)


def missing(module: str, files: Sequence[str]) -> str:
    """The refusal for a runnable annotator whose file is not there: what to put where."""
    names = ", ".join(f.rsplit("/", 1)[1] for f in files)
    folder = files[0].rsplit("/", 1)[0]
    return (
        f"{module!r} needs annotator weights ({names}): put them in <models>/{OWN_FOLDER}/{folder}/ or "
        f"{DOWNLOADS}/{folder}/ (this server never downloads them)"
    )


def unavailable() -> dict[str, list[str]]:
    """Each weight-needing module with the files it needs, as ``<DOWNLOADS>/<folder>/<file>`` paths."""
    return {module: [f"{DOWNLOADS}/{f}" for f in annotator.files] for module, annotator in BY_MODULE.items()}


def refusal(module: str) -> str | None:
    """Why ``module`` cannot run here, naming its files and their folder; None if it is not one of these."""
    annotator = _BY_NAME.get(module)
    if annotator is None:
        return None
    files = ", ".join(f.rsplit("/", 1)[1] for f in annotator.files)
    folder = f"{DOWNLOADS}/{annotator.files[0].rsplit('/', 1)[0]}/"
    if annotator.program:
        return (
            f"{module!r} runs {annotator.program} models ({files}, which the extension keeps in {folder}): "
            "a program inside a model file, which this server never runs (only weights, through the "
            "safetensors or weights-only readers); send a detected map with module 'none' instead"
        )
    return (
        f"{module!r} needs annotator weights ({files}, which the extension keeps in {folder}); this server "
        "never downloads them and does not run this annotator yet — send a detected map with module "
        "'none', or use a preprocessor that needs no weights or one that runs from its file (HED, PiDiNet, "
        "TEED, line art, MLSD, MiDaS, LeReS, Bae's normals, Depth Anything, OpenPose, UniFormer, LaMa)"
    )
