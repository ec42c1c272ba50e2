"""The line-art annotators that need lllyasviel's ``sk_model.pth`` (lineart_realistic) or ``sk_model2.pth``
(lineart_coarse), computed as sd-webui-controlnet does (``annotator/lineart``: the "informative drawings"
generator; ``scripts/preprocessor/legacy/processor.py``: ``lineart``, ``lineart_coarse``).

The network: the picture in [0, 1]; a 7×7 convolution to 64 channels, two stride-2 convolutions to 256,
three residual blocks, two transposed convolutions back to 64 and a 7×7 convolution to one channel with a
sigmoid (reflection padding around the 7×7 and residual convolutions; instance norm and ReLU after each
convolution but the last). The line map is that × 255, inverted (black lines on white become white lines).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from latentstudio.control import preprocess_ops as ops
from latentstudio.control.weights import load_network

REALISTIC = "lineart/sk_model.pth"
COARSE = "lineart/sk_model2.pth"


def _conv_norm_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.InstanceNorm2d(channels), nn.ReLU()]


class _Residual(nn.Module):
    """Two reflection-padded 3×3 convolutions with instance norm, added to the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), *_conv_norm_relu(nn.Conv2d(channels, channels, 3), channels),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.conv_block(x)
        return out


class LineartNetwork(nn.Module):
    """The extension's ``Generator(3, 1, 3)``: ``[1, 3, H, W]`` in [0, 1] → ``[1, 1, H, W]`` in [0, 1]
    (``H`` and ``W`` multiples of 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), *_conv_norm_relu(nn.Conv2d(3, 64, 7), 64))
        self.model1 = nn.Sequential(
            *_conv_norm_relu(nn.Conv2d(64, 128, 3, stride=2, padding=1), 128),
            *_conv_norm_relu(nn.Conv2d(128, 256, 3, stride=2, padding=1), 256),
        )
        self.model2 = nn.Sequential(*(_Residual(256) for _ in range(3)))
        self.model3 = nn.Sequential(
            *_conv_norm_relu(nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1), 128),
            *_conv_norm_relu(nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), 64),
        )
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model4(self.model3(self.model2(self.model1(self.model0(x)))))
        return out


def lines(image: np.ndarray, path: Path) -> np.ndarray:
    """``LineartDetector.__call__``: ``[H, W, 3]`` uint8 → ``[H, W]`` uint8 line darkness (lines dark)."""
    model = load_network(path, LineartNetwork, "line-art generator")
    with torch.no_grad():
        x = torch.from_numpy(image.copy()).float().div(255.0).permute(2, 0, 1)[None]
        line = model(x)[0, 0].numpy()
    out: np.ndarray = (line * 255.0).clip(0, 255).astype(np.uint8)
    return out


def lineart(image: np.ndarray, resolution: int, path: Path) -> np.ndarray:
    """lineart_realistic / lineart_coarse: the inverted line map at the preprocessor resolution (padded to
    64 for the network, the padding cut off), ``[h, w, 3]``."""
    padded, height, width = ops.resize_with_pad(image, resolution)
    return ops.gray_to_rgb(255 - lines(padded, path)[:height, :width])
