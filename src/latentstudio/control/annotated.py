"""The sd-webui-controlnet preprocessors that need annotator weights and run here, from the files the user
placed (:mod:`latentstudio.control.annotators` says where they are looked for, and lists the ones that do not
run yet). Each entry's ``files`` are located before it runs and passed as :attr:`Settings.weights`."""

from __future__ import annotations

from functools import partial

import numpy as np

from latentstudio.control import (
    anime_face,
    depth_anything,
    hed,
    lama,
    leres,
    lineart,
    lineart_anime,
    manga_line,
    midas,
    mlsd,
    normal_bae,
    openpose,
    pidinet,
    teed,
    uniformer,
)
from latentstudio.control.preprocessor_types import Preprocessor, Settings


def _hed(image: np.ndarray, s: Settings, *, safe: bool = False) -> np.ndarray:
    return hed.softedge(image, s.resolution, s.weights[0], safe=safe)


def _lineart(image: np.ndarray, s: Settings) -> np.ndarray:
    return lineart.lineart(image, s.resolution, s.weights[0])


ENTRIES = (
    Preprocessor("hed", _hed, aliases=("softedge_hed",), tags=("SoftEdge",), files=(hed.FILE,)),
    Preprocessor(
        "hed_safe",
        partial(_hed, safe=True),
        aliases=("softedge_hedsafe",),
        tags=("SoftEdge",),
        files=(hed.FILE,),
    ),
    Preprocessor(
        "scribble_hed",
        lambda img, s: hed.scribble(img, s.resolution, s.weights[0]),
        tags=("Scribble", "SparseCtrl"),
        files=(hed.FILE,),
    ),
    Preprocessor(
        "lineart", _lineart, aliases=("lineart_realistic",), tags=("Lineart",), files=(lineart.REALISTIC,)
    ),
    Preprocessor("lineart_coarse", _lineart, tags=("Lineart",), files=(lineart.COARSE,)),
    *mlsd.ENTRIES,
    *midas.ENTRIES,
    *openpose.ENTRIES,
    *pidinet.ENTRIES,
    *teed.ENTRIES,
    *depth_anything.ENTRIES,
    *lineart_anime.ENTRIES,
    *manga_line.ENTRIES,
    *leres.ENTRIES,
    *normal_bae.ENTRIES,
    *uniformer.ENTRIES,
    *anime_face.ENTRIES,
    *lama.ENTRIES,
)
