"""The ``mlsd`` line-segment annotator that needs lllyasviel's ``mlsd_large_512_fp32.pth``, computed as
sd-webui-controlnet does (``annotator/mlsd``: NAVER's Apache-2.0 M-LSD, the "large" MobileNetV2 variant,
and its line decoding; ``scripts/preprocessor/legacy/processor.py``: ``mlsd``).

The network: the picture in [-1, 1] with a fourth channel of ones (also normalised, so about -0.99); a
truncated MobileNetV2 (a stride-2 3×3 stem with the TFLite padding, one pad row and column at the bottom
and right; 13 inverted residual blocks, 16 to 96 channels, down to 1/16) whose outputs at 1/2, 1/4, 1/8 and
1/16 feed a top-down path (1×1 reductions, bilinear 2× upsampling with aligned corners, concatenation,
residual 3×3 refinements) and a dilated head. Of its 16 output channels at half the input size, the last
nine are the "TP map": a line-centre logit and the displacements of the two segment ends (x, y, x, y).

Decoding: the centre logits' sigmoid kept where it is the maximum of its 3×3 neighbourhood, the 200 best
centres, kept where their score exceeds the value threshold and their segment is longer than the distance
threshold (in the half-size grid); the ends doubled back to the input's pixels and drawn as white 1-pixel
lines on black. The extension feeds the network the padded image at its own size (its ``pred_lines`` is
called with the image's shape, not the 512×512 default), so nothing is resized in between.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from latentstudio.control import preprocess_ops as ops
from latentstudio.control.preprocessor_types import Preprocessor, Settings, Slider
from latentstudio.control.weights import load_network

FILE = "mlsd/mlsd_large_512_fp32.pth"  # under the annotator downloads folder
TOP_K = 200  # line centres considered
# MobileNetV2's (expansion, channels, blocks, first stride) rows the M-LSD backbone keeps
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
TAPS = (1, 3, 6, 10, 13)  # the backbone features the top-down path reads (1/2, 1/4, 1/8, 1/16, 1/16)
_INT_LIMIT = 2**31  # cv2 points are C ints


class _ConvBNReLU6(nn.Sequential):
    """Bias-free convolution, batch norm, ReLU6 (keys ``0``, ``1``); stride 2 pads one row and column at the
    bottom and right instead of all round (TFLite "same")."""

    def __init__(
        self, channels_in: int, channels_out: int, kernel: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        padding = 0 if stride == 2 else (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(channels_in, channels_out, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(channels_out),
            nn.ReLU6(),
        )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pad(x, (0, 1, 0, 1)) if self.stride == 2 else x
        for layer in self:
            h = layer(h)
        return h


class _InvertedResidual(nn.Module):
    """MobileNetV2's block: 1×1 expansion (unless ×1), depthwise 3×3, linear 1×1 projection with batch
    norm (all in ``conv``); the input added back where the shape is kept."""

    def __init__(self, channels_in: int, channels_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = channels_in * expansion
        expand = [_ConvBNReLU6(channels_in, hidden, kernel=1)] if expansion != 1 else []
        self.conv = nn.Sequential(
            *expand,
            _ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, channels_out, 1, bias=False),
            nn.BatchNorm2d(channels_out),
        )
        self.residual = stride == 1 and channels_in == channels_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return x + out if self.residual else out


class _Backbone(nn.Module):
    """The truncated MobileNetV2 (``features``): ``[1, 4, H, W]`` → the five :data:`TAPS` outputs."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_ConvBNReLU6(4, 32, stride=2)]
        channels = 32
        for expansion, width, count, stride in STAGES:
            for i in range(count):
                layers.append(_InvertedResidual(channels, width, stride if i == 0 else 1, expansion))
                channels = width
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                taps.append(x)
        return taps


def _conv_bn_relu(channels_in: int, channels_out: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, kernel, padding=padding, dilation=dilation),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(),
    )


class _Merge(nn.Module):
    """``BlockTypeA``: the skip feature (``conv2``, 1×1) beside the deeper one (``conv1``, 1×1, upsampled
    2× bilinearly with aligned corners unless ``upscale`` is off), concatenated skip first."""

    def __init__(self, skip: int, deep: int, upscale: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(deep, 64, 1)
        self.conv2 = _conv_bn_relu(skip, 64, 1)
        self.upscale = upscale

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        d = self.conv1(deep)
        if self.upscale:
            d = F.interpolate(d, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((self.conv2(skip), d), dim=1)


class _Refine(nn.Module):
    """``BlockTypeB``: a residual 3×3 convolution, then a 3×3 one to 64 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(128, 128, 3)
        self.conv2 = _conv_bn_relu(128, 64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv2(self.conv1(x) + x)
        return out


class MLSDNetwork(nn.Module):
    """``MobileV2_MLSD_Large``: ``[1, 4, H, W]`` normalised (``H``, ``W`` multiples of 16) → the TP map
    ``[1, 9, H/2, W/2]`` (centre logit, then start x, y and end x, y displacements, then 4 unused)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = _Backbone()
        for n, (skip, deep) in zip((15, 17, 19, 21), ((64, 96), (32, 64), (24, 64), (16, 64)), strict=True):
            self.add_module(f"block{n}", _Merge(skip, deep, upscale=n != 15))
            self.add_module(f"block{n + 1}", _Refine())
        self.block23 = nn.Sequential()
        self.block23.add_module("conv1", _conv_bn_relu(64, 64, 3, dilation=5))
        self.block23.add_module("conv2", _conv_bn_relu(64, 64, 3))
        self.block23.add_module("conv3", nn.Conv2d(64, 16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3, c4, c5 = self.backbone(x)
        h = c5
        for n, skip in zip((15, 17, 19, 21), (c4, c3, c2, c1), strict=True):
            h = getattr(self, f"block{n + 1}")(getattr(self, f"block{n}")(skip, h))
        out: torch.Tensor = self.block23(h)
        return out[:, 7:]


def network(path: Path) -> MLSDNetwork:
    """The network with ``path``'s weights (:func:`weights.load_network`)."""
    return load_network(path, MLSDNetwork, "M-LSD network")


def tp_map(image: np.ndarray, model: nn.Module) -> torch.Tensor:
    """``[H, W, 3]`` uint8 (``H``, ``W`` multiples of 16) → the TP map ``[1, 9, H/2, W/2]`` float32: the
    picture and a channel of ones, each ``/ 127.5 − 1``. The input is channels-last in memory, as the
    extension's (a transposed numpy array) is: the convolutions round differently in the other layout."""
    ones = np.ones((*image.shape[:2], 1), np.float32)
    x = torch.from_numpy(np.concatenate([image.astype(np.float32), ones], axis=2)[None] / 127.5 - 1.0)
    with torch.no_grad():
        out: torch.Tensor = model(x.permute(0, 3, 1, 2))  # strides [4HW, 1, 4W, 4]: channels-last
    return out


def decode(tp: torch.Tensor, score: float, distance: float) -> np.ndarray:
    """``pred_lines``' decoding: the TP map ``[1, 9, h, w]`` → segments ``[N, 4]`` float64 (x0, y0, x1, y1)
    in the pixels of the ``[2h, 2w]`` input, for the :data:`TOP_K` best 3×3-maximal centres whose sigmoid
    exceeds ``score`` and whose segment is longer than ``distance`` (half-size pixels)."""
    width = tp.shape[3]
    heat = torch.sigmoid(tp[:, 0])
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).float()
    scores, indices = torch.topk(peaks.reshape(-1), min(TOP_K, peaks.numel()))
    ys, xs = (indices // width).numpy(), (indices % width).numpy()
    ends = tp[0, 1:5].numpy().transpose(1, 2, 0)[ys, xs]  # [K, 4] float32 displacements
    length = np.sqrt(np.sum((ends[:, :2] - ends[:, 2:]) ** 2, axis=-1))
    kept = (scores.numpy() > score) & (length > distance)
    origin = np.stack([xs, ys, xs, ys], axis=1)[kept]
    segments: np.ndarray = 2 * (origin + ends[kept].astype(np.float64))
    return segments


def draw(segments: np.ndarray, height: int, width: int) -> np.ndarray:
    """White 1-pixel lines (``cv2.line``, 8-connected) for ``segments`` ``[N, 4]`` (ends truncated toward
    zero) on a black ``[height, width]`` uint8 canvas. Ends that are not finite or beyond a C int are
    skipped (the extension's drawing would raise there, and it would give up on the rest)."""
    import cv2

    canvas = np.zeros((height, width), np.uint8)
    usable = np.isfinite(segments).all(axis=1) & (np.abs(segments) < _INT_LIMIT).all(axis=1)
    for x0, y0, x1, y1 in np.trunc(segments[usable]).astype(np.int64).tolist():
        cv2.line(canvas, (x0, y0), (x1, y1), 255, 1)
    return canvas


def line_map(image: np.ndarray, path: Path, score: float, distance: float) -> np.ndarray:
    """``apply_mlsd``: ``[H, W, 3]`` uint8 (``H``, ``W`` multiples of 16) → ``[H, W]`` uint8, white lines
    on black (all black where no segment passes the thresholds)."""
    segments = decode(tp_map(image, network(path)), score, distance)
    return draw(segments, *image.shape[:2])


def mlsd(image: np.ndarray, resolution: int, path: Path, score: float, distance: float) -> np.ndarray:
    """The mlsd preprocessor: the line map of the image at the preprocessor resolution (padded to 64 for
    the network, the padding cut off after drawing), ``[h, w, 3]``."""
    padded, height, width = ops.resize_with_pad(image, resolution)
    return ops.gray_to_rgb(line_map(padded, path, score, distance)[:height, :width])


def run(image: np.ndarray, s: Settings) -> np.ndarray:
    """The registry's call: ``[H, W, 3]`` uint8 → ``[h, w, 3]`` uint8 (``s.a``: value threshold, ``s.b``:
    distance threshold, ``s.weights[0]``: the located file)."""
    return mlsd(image, s.resolution, s.weights[0], s.a, s.b)


ENTRIES: tuple[Preprocessor, ...] = (
    Preprocessor(
        "mlsd",
        run,
        threshold_a=Slider("MLSD Value Threshold", 0.01, 2.0, 0.1, 0.01),
        threshold_b=Slider("MLSD Distance Threshold", 0.01, 20.0, 0.1, 0.01),
        priority=100,
        tags=("MLSD",),
        files=(FILE,),
    ),
)
