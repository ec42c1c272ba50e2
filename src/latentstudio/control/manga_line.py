"""The ``lineart_anime_denoise`` annotator that needs ``manga_line/erika.pth`` (MangaLineExtraction's
"res_skip" network, Li et al., "Deep Extraction of Manga Structural Lines"), computed as sd-webui-controlnet
does (``annotator/manga_line``: ``res_skip`` and ``MangaLineExtration``; ``scripts/preprocessor/legacy/
processor.py``: ``lineart_anime_denoise``).

The network: a residual U-Net on one grey channel. Every convolution is preceded by batch norm
(eps 1e-3) and a leaky ReLU (slope 0.2); a residual unit is two such 3×3 convolutions added to its input
(through a 1×1 convolution where the channels or the stride change). The encoder's five stages have
2, 3, 5, 7 and 12 units with 24, 48, 96, 192 and 384 channels; each stage but the first halves the size
in its last unit (stride 2), so the bottom is at 1/16. The decoder's four stages (7, 5, 3, 2 units; 192,
96, 48, 24 channels) each double the size in their first unit (nearest-neighbour upsampling after its
first convolution and after its 1×1 shortcut) and add the encoder stage of that size; then a two-unit
stage to 16 channels and a 1×1 convolution (after batch norm and leaky ReLU) to one channel.

The computation: the image at the preprocessor resolution, edge-padded to multiples of 64 (so of 16);
converted to grey with OpenCV's ``RGB2GRAY`` (0.299 R + 0.587 G + 0.114 B, rounded to uint8); fed as
floats in [0, 255], not normalised. The network draws black lines on white in about that range; the map
is ``255 − output`` clipped to [0, 255] and truncated to uint8 (white lines on black: the extension's
automatic inversion happens here, not in the preprocessor), the padding cut off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from latentstudio.control import preprocess_ops as ops
from latentstudio.control.preprocessor_types import Preprocessor, Settings
from latentstudio.control.weights import load_network

FILE = "manga_line/erika.pth"  # under the annotator downloads folder
ENCODER = ((24, 2), (48, 3), (96, 5), (192, 7), (384, 12))  # (channels, units) of block0 … block4
DECODER = ((192, 7), (96, 5), (48, 3), (24, 2))  # block5 … block8
HEAD = (16, 2)  # block9
PREFIX = "module."  # a DataParallel save's key prefix, dropped where present (as the extension does)


class _Wrapped(nn.Module):
    """A sequence under the key ``model`` (the released layout's ``<name>.model.<i>``)."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


def _pre_activated(
    channels_in: int, channels_out: int, kernel: int, stride: int = 1, up: bool = False
) -> _Wrapped:
    """Batch norm, leaky ReLU, a ``kernel``-square convolution (zero padding ``kernel // 2``), and for
    ``up`` a 2× nearest-neighbour upsampling."""
    layers: list[nn.Module] = [
        nn.BatchNorm2d(channels_in, eps=1e-3),
        nn.LeakyReLU(0.2),
        nn.Conv2d(channels_in, channels_out, kernel, stride, kernel // 2),
    ]
    if up:
        layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    return _Wrapped(*layers)


class _Unit(nn.Module):
    """One residual unit: ``[N, C_in, H, W]`` → ``[N, C_out, H / stride, W / stride]`` (``× 2`` for
    ``up``); the shortcut is the identity unless the channels or the size change."""

    def __init__(self, channels_in: int, channels_out: int, stride: int = 1, up: bool = False) -> None:
        super().__init__()
        self.conv1 = _pre_activated(channels_in, channels_out, 3, stride, up)
        self.residual = _pre_activated(channels_out, channels_out, 3)
        self.shortcut: _Wrapped | None = None
        if channels_in != channels_out or stride != 1:
            projection = nn.Conv2d(channels_in, channels_out, 1, stride)
            self.shortcut = (
                _Wrapped(projection, nn.Upsample(scale_factor=2, mode="nearest"))
                if up
                else _Wrapped(projection)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.residual(self.conv1(x))
        skip = x if self.shortcut is None else self.shortcut(x)
        out: torch.Tensor = skip + branch
        return out


def _stage(
    channels_in: int, channels_out: int, units: int, *, down: bool = False, up: bool = False
) -> _Wrapped:
    """``units`` residual units; ``down``: the last one has stride 2; ``up``: the first one upsamples."""
    layers = []
    for i in range(units):
        stride = 2 if down and i == units - 1 else 1
        layers.append(_Unit(channels_in if i == 0 else channels_out, channels_out, stride, up and i == 0))
    return _Wrapped(*layers)


class MangaLineNetwork(nn.Module):
    """The extension's ``res_skip``: ``[N, 1, H, W]`` grey in [0, 255] → ``[N, 1, H, W]`` (``H`` and ``W``
    multiples of 16), about 255 on the background and lower on lines."""

    def __init__(self) -> None:
        super().__init__()
        channels = 1
        for i, (width, units) in enumerate(ENCODER):
            self.add_module(f"block{i}", _stage(channels, width, units, down=i > 0))
            channels = width
        for i, (width, units) in enumerate(DECODER, start=len(ENCODER)):
            self.add_module(f"block{i}", _stage(channels, width, units, up=True))
            channels = width
        self.block9 = _stage(channels, HEAD[0], HEAD[1])
        self.conv15 = _pre_activated(HEAD[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i in range(len(ENCODER)):
            h = self.get_submodule(f"block{i}")(h)
            skips.append(h)
        skips.pop()  # the bottom feeds the decoder, not a skip
        for i in range(len(DECODER)):
            h = skips.pop() + self.get_submodule(f"block{len(ENCODER) + i}")(h)
        out: torch.Tensor = self.conv15(self.block9(h))
        return out


def network(path: Path) -> MangaLineNetwork:
    """The network with ``path``'s weights (cached); a file with other tensors is ``ModelFileError``."""
    return load_network(path, MangaLineNetwork, "MangaLineExtraction res_skip", prefix=PREFIX)


def line_map(image: np.ndarray, path: Path) -> np.ndarray:
    """``MangaLineExtration.__call__``: ``[H, W, 3]`` uint8 RGB (``H``, ``W`` multiples of 16) → ``[H, W]``
    uint8, white lines on black."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    model = network(path)
    with torch.no_grad():
        drawn = model(torch.from_numpy(grey).float()[None, None])[0, 0].numpy()
    out: np.ndarray = (255 - drawn).clip(0, 255).astype(np.uint8)
    return out


def lineart_anime_denoise(image: np.ndarray, resolution: int, path: Path) -> np.ndarray:
    """The lineart_anime_denoise preprocessor: the line map at the preprocessor resolution (computed on the
    image padded to 64, the padding cut off), ``[h, w, 3]`` uint8."""
    padded, height, width = ops.resize_with_pad(image, resolution)
    return ops.gray_to_rgb(line_map(padded, path)[:height, :width])


def run(image: np.ndarray, s: Settings) -> np.ndarray:
    """The registry's call: ``[H, W, 3]`` uint8 → ``[h, w, 3]`` uint8 (``s.weights[0]``: the located
    file; no thresholds)."""
    return lineart_anime_denoise(image, s.resolution, s.weights[0])


ENTRIES: tuple[Preprocessor, ...] = (
    Preprocessor("lineart_anime_denoise", run, tags=("Lineart",), files=(FILE,)),
)
