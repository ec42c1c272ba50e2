"""The ``lineart_anime`` annotator that needs lllyasviel's ``netG.pth`` (the Anime2Sketch generator),
computed as sd-webui-controlnet does (``annotator/lineart_anime``: a pix2pix U-Net;
``scripts/preprocessor/legacy/processor.py``: ``lineart_anime``).

The network: an eight-level U-Net. Each level halves the picture with a 4×4 stride-2 convolution and
doubles it back with a 4×4 stride-2 transposed one, the level's input concatenated (first) with what came
back up; 64, 128, 256 and then 512 channels at every deeper level. Going down: leaky ReLU (0.2) before each
convolution but the first, instance norm (no affine, no running statistics) after each but the first and
the deepest; going up: ReLU before each transposed convolution, instance norm after each but the last,
whose single channel goes through tanh. Every convolution has a bias. Eight halvings bring 256 pixels to
one, so the sides must be multiples of 256. (The extension's leaky ReLU works in place, so the input it
concatenates has been through it; the ReLU that comes next makes that the same as concatenating the input.)

The preprocessor: the picture at the preprocessor resolution (padded to multiples of 64) is stretched with
cubic interpolation to the next multiples of 256 (even when it already is one), scaled to [-1, 1] and run
through the network; the output, ``tanh × 127.5 + 127.5`` in float32, is resized (cubic) back to the
padded size, clipped to [0, 255] and truncated: dark lines on white. That is inverted (white lines), the
padding cut off, grey to RGB.

The released file was saved from a ``DataParallel`` wrapper: its keys start with ``module.``, which is
dropped where present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from latentstudio.control import preprocess_ops as ops
from latentstudio.control.preprocessor_types import Preprocessor, Settings
from latentstudio.control.weights import load_network

FILE = "lineart_anime/netG.pth"  # under the annotator downloads folder
PREFIX = "module."  # DataParallel's prefix on the released file's keys
LEVELS = 8  # halvings in the U-Net
WIDTH = 64  # channels after the first halving
BLOCK = 2**LEVELS  # the network's input sides are multiples of this (256)


class _Level(nn.Module):
    """One U-Net level (``model``, a sequence whose indices are the released keys): ``[1, C, H, W]`` →
    ``[1, C + outer, H, W]`` (the input, then the ``outer`` channels that came back up); the outermost
    level (``channels_in`` given) gives only those, ``[1, outer, H, W]`` after tanh."""

    def __init__(self, outer: int, inner: int, deeper: _Level | None, channels_in: int | None = None) -> None:
        super().__init__()
        down = nn.Conv2d(outer if channels_in is None else channels_in, inner, 4, stride=2, padding=1)
        up = nn.ConvTranspose2d(inner if deeper is None else 2 * inner, outer, 4, stride=2, padding=1)
        layers: list[nn.Module]
        if channels_in is not None:
            if deeper is None:
                raise ValueError("the outermost level needs a deeper one")
            layers = [down, deeper, nn.ReLU(), up, nn.Tanh()]
        elif deeper is None:
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), up, nn.InstanceNorm2d(outer)]
        else:
            layers = [nn.LeakyReLU(0.2), down, nn.InstanceNorm2d(inner), deeper,
                      nn.ReLU(), up, nn.InstanceNorm2d(outer)]  # fmt: skip
        self.model = nn.Sequential(*layers)
        self.outermost = channels_in is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out if self.outermost else torch.cat([x, out], dim=1)


class LineartAnimeNetwork(nn.Module):
    """The extension's ``UnetGenerator(3, 1, 8, 64)`` with instance norm: ``[1, 3, H, W]`` in [-1, 1]
    (``H``, ``W`` multiples of ``2**levels``) → ``[1, 1, H, W]`` in [-1, 1]. ``width`` and ``levels`` (at
    least 5) are the released file's unless a test asks for a smaller network of the same layout."""

    def __init__(self, width: int = WIDTH, levels: int = LEVELS) -> None:
        super().__init__()
        if levels < 5:
            raise ValueError(f"the U-Net has at least 5 levels, got {levels}")
        level = _Level(8 * width, 8 * width, None)
        for _ in range(levels - 5):
            level = _Level(8 * width, 8 * width, level)
        for outer in (4 * width, 2 * width, width):
            level = _Level(outer, 2 * outer, level)
        self.model = _Level(1, width, level, channels_in=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


def _released() -> LineartAnimeNetwork:
    """The released file's network (:data:`WIDTH` and :data:`LEVELS` read when it is built)."""
    return LineartAnimeNetwork(WIDTH, LEVELS)


def network(path: Path) -> LineartAnimeNetwork:
    """The network with ``path``'s weights (:func:`weights.load_network`, ``module.`` dropped)."""
    return load_network(path, _released, "anime line-art U-Net", prefix=PREFIX)


def sketch(image: np.ndarray, model: nn.Module, block: int = BLOCK) -> np.ndarray:
    """``LineartAnimeDetector.__call__``: ``[H, W, 3]`` uint8 → ``[H, W]`` uint8, dark lines on white. The
    picture is stretched (cubic) to the next multiples of ``block`` for the network and its output back.
    The network's input is channels-last in memory, as the extension's (a rearranged numpy array) is."""
    import cv2

    height, width = image.shape[:2]
    size = (block * -(-width // block), block * -(-height // block))  # cv2's (width, height)
    stretched = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    x = torch.from_numpy(stretched).float() / 127.5 - 1.0
    with torch.no_grad():
        line = (model(x.permute(2, 0, 1)[None])[0, 0] * 127.5 + 127.5).numpy()
    back = cv2.resize(line, (width, height), interpolation=cv2.INTER_CUBIC)
    out: np.ndarray = back.clip(0, 255).astype(np.uint8)
    return out


def lineart_anime(image: np.ndarray, resolution: int, path: Path) -> np.ndarray:
    """The lineart_anime preprocessor: the inverted sketch of the image at the preprocessor resolution
    (computed on the padded image, the padding cut off after), ``[h, w, 3]`` uint8, white lines."""
    padded, height, width = ops.resize_with_pad(image, resolution)
    return ops.gray_to_rgb(255 - sketch(padded, network(path))[:height, :width])


def run(image: np.ndarray, s: Settings) -> np.ndarray:
    """The registry's call: ``[H, W, 3]`` uint8 → ``[h, w, 3]`` uint8 (``s.weights[0]``: the located
    file; no thresholds)."""
    return lineart_anime(image, s.resolution, s.weights[0])


ENTRIES: tuple[Preprocessor, ...] = (Preprocessor("lineart_anime", run, tags=("Lineart",), files=(FILE,)),)
