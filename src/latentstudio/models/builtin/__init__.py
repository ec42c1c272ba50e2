"""The built-in model shipped in the package: a tiny SD1-layout text-to-image model of flat shapes
(see MODEL_CARD.md here; ``latentstudio train shapes`` reproduces it).

Its sha256 (the infotext's ``Model hash``) is recorded here, so that a run never reads the whole file to
hash it: every ``latentstudio generate`` may use a fresh ``--data-dir`` and so an empty hash cache. The
record is trusted only while the file has the recorded size and :func:`fingerprint`; a file replaced by
``train shapes --ship`` fails that check and is hashed as any other checkpoint (and tests/test_startup.py
fails until the record here is updated).
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

BUILTIN_NAME = "latentstudio-shapes.safetensors"
BUILTIN_CONTROL_NAME = "latentstudio-shapes-canny.safetensors"
"""The built-in model's ControlNet (canny), listed while the built-in model is the one offered."""
BUILTIN_SHA256 = "e5f38f8f9cff6d950ba536eba26ae403a320158369cd407dcf9fb785a2122b2e"
"""sha256 of the whole shipped file."""
BUILTIN_SIZE = 15_176_566
"""Its size in bytes."""
BUILTIN_FINGERPRINT = "fdde871d72aeca1157ab29a82f4ae140ad9837da93f83f9c7d9eac1e84d70eff"
"""Its :func:`fingerprint`."""

_SAMPLES = 16
_SAMPLE_BYTES = 4096


def builtin_checkpoint() -> Path:
    """Path of the shipped checkpoint (it may be missing in a source tree that has not been trained)."""
    return Path(str(resources.files("latentstudio.models.builtin").joinpath(BUILTIN_NAME)))


def builtin_control() -> Path:
    """Path of the shipped ControlNet of the built-in model (``latentstudio train shapes-control``)."""
    return Path(str(resources.files("latentstudio.models.builtin").joinpath(BUILTIN_CONTROL_NAME)))


def fingerprint(path: Path) -> str:
    """sha256 of 16 blocks of 4 KiB spread evenly from the start to the end of the file (64 KiB read).

    The blocks fall in the header and in the weights of every component (text encoder, UNet, VAE), so a
    retrained model of the same architecture and size does not keep the fingerprint of the old one.
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        size = stream.seek(0, 2)
        last = max(size - _SAMPLE_BYTES, 0)
        for index in range(_SAMPLES):
            stream.seek(last * index // (_SAMPLES - 1))
            digest.update(stream.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def known_sha256(path: Path) -> str | None:
    """:data:`BUILTIN_SHA256` when ``path`` is the shipped file as recorded (same size and fingerprint),
    else None (any other file, or a shipped file that has been replaced: hash it)."""
    if Path(path).name != BUILTIN_NAME:
        return None
    shipped = builtin_checkpoint()
    try:
        if Path(path).resolve() != shipped.resolve() or shipped.stat().st_size != BUILTIN_SIZE:
            return None
        return BUILTIN_SHA256 if fingerprint(shipped) == BUILTIN_FINGERPRINT else None
    except OSError:
        return None
