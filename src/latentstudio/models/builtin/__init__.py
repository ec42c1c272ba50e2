"""The built-in model shipped in the package: a tiny SD1-layout text-to-image model of flat shapes
(see MODEL_CARD.md here; ``latentstudio train shapes`` reproduces it)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUILTIN_NAME = "latentstudio-shapes.safetensors"


def builtin_checkpoint() -> Path:
    """Path of the shipped checkpoint (it may be missing in a source tree that has not been trained)."""
    return Path(str(resources.files("latentstudio.models.builtin").joinpath(BUILTIN_NAME)))
