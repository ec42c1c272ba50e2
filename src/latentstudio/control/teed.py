"""The TEED soft-edge annotators (softedge_teed from ``7_model.pth``, softedge_anyline from MistoLine's
``MTEED.pth``), computed as sd-webui-controlnet does (``annotator/teed``: the "Tiny and Efficient Edge
Detector" network and its detector; ``scripts/preprocessor/teed.py``: both preprocessors).

The network (about 58k weights), on the picture in 0–255 as it is (no normalisation), with the Smish
activation ``x · tanh(ln(1 + sigmoid(x)))``:

* block 1: a stride-2 3×3 convolution to 16 channels and a 3×3 one, each followed by Smish (½ size);
* block 2: two 3×3 convolutions to 32 channels, Smish between them only;
* a side branch: block 1 through a stride-2 1×1 convolution to 32 channels (¼ size), added to block 2
  max-pooled (3×3, stride 2, padding 1); block 2 pooled through a 1×1 convolution to 48 channels is the
  "pre-dense" input;
* block 3, one dense layer: that sum through Smish, a 3×3 convolution (padding 2) to 48 channels, Smish, a
  3×3 convolution without padding; averaged with the pre-dense input;
* three upsamplers back to full size, one per block: for each factor of 2 a 1×1 convolution (to 16
  channels, 1 for the last), Smish and a stride-2 transposed convolution (kernel 2 for one step, 4 with
  padding 1 for two);
* the fusion of those three maps: Smish, a depthwise 3×3 convolution to 24 channels, Smish, a depthwise
  3×3 convolution added to its input, summed over channels and through Smish.

The four maps (three upsampled, one fused) are averaged and squashed by a sigmoid into the edge map, then
floored to ``Safe Steps`` + 1 levels (``safe_step``; 0: not floored). The weights load from the file the
user placed, through the weights-only loader (nothing downloads), once per file version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from latentstudio.control import hed
from latentstudio.control import preprocess_ops as ops
from latentstudio.control.preprocessor_types import Preprocessor, Settings, Slider
from latentstudio.control.weights import load_network

FILE = "TEED/7_model.pth"  # softedge_teed, under the annotator downloads folder
MTEED_FILE = "TEED/MTEED.pth"  # softedge_anyline (the same network, MistoLine's training)
SAFE_STEPS = Slider("Safe Steps", 0, 10, 2, 1)
ANYLINE_RESOLUTION = Slider("Resolution", 64, 2048, 1280, 8)
ANYLINE_MIN_SIZE = 36  # remove_small_objects' min_size, counted over the three identical channels


def smish(x: torch.Tensor) -> torch.Tensor:
    """Smish, elementwise on any shape: ``x · tanh(ln(1 + sigmoid(x)))``."""
    return x * torch.tanh(torch.log(1 + torch.sigmoid(x)))


class _Smish(nn.Module):
    """:func:`smish` as a layer (no weights), for the upsamplers' ``features`` numbering."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return smish(x)


class _DoubleConv(nn.Module):
    """Two 3×3 convolutions (the first with ``stride``), Smish after the first and, with ``act``, after the
    second: ``[1, in, H, W]`` → ``[1, out, H/stride, W/stride]``."""

    def __init__(self, channels_in: int, channels_out: int, stride: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(smish(self.conv1(x)))
        return smish(h) if self.act else h


class _Pointwise(nn.Module):
    """A 1×1 convolution with ``stride`` (no activation): ``[1, in, H, W]`` → ``[1, out, H/s, W/s]``."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


class _DenseLayer(nn.Module):
    """Block 3: ``(x, skip)`` both ``[1, C, h, w]`` → ``½ (conv2(smish(conv1(smish(x)))) + skip)``."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=2)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        new: torch.Tensor = self.conv2(smish(self.conv1(smish(x))))
        return 0.5 * (new + skip)


class _Upsample(nn.Module):
    """``steps`` doublings: ``[1, in, h, w]`` → ``[1, 1, h·2^steps, w·2^steps]``."""

    def __init__(self, channels_in: int, steps: int) -> None:
        super().__init__()
        kernel, padding = 2**steps, (0, 0, 1, 3, 7)[steps]
        layers: list[nn.Module] = []
        for i in range(steps):
            channels_out = 1 if i == steps - 1 else 16
            layers += [
                nn.Conv2d(channels_in, channels_out, 1),
                _Smish(),
                nn.ConvTranspose2d(channels_out, channels_out, kernel, stride=2, padding=padding),
            ]
            channels_in = channels_out
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.features(x)
        return out


class _Fusion(nn.Module):
    """``DoubleFusion``: ``[1, 3, H, W]`` → ``[1, 1, H, W]`` through two depthwise 3×3 convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.DWconv1 = nn.Conv2d(3, 24, 3, padding=1, groups=3)
        self.DWconv2 = nn.Conv2d(24, 24, 3, padding=1, groups=24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.DWconv1(smish(x))
        second = self.DWconv2(smish(first))
        return smish((second + first).sum(1, keepdim=True))


class TEEDNetwork(nn.Module):
    """The extension's ``TED``: ``[1, 3, H, W]`` in 0–255 (``H``, ``W`` multiples of 4) → four edge logits
    ``[1, 1, H, W]`` (blocks 1, 2, 3 upsampled, then their fusion)."""

    def __init__(self) -> None:
        super().__init__()
        self.block_1 = _DoubleConv(3, 16, stride=2)
        self.block_2 = _DoubleConv(16, 32, act=False)
        self.dblock_3 = nn.ModuleDict({"denselayer1": _DenseLayer(32, 48)})
        self.side_1 = _Pointwise(16, 32, 2)
        self.pre_dense_3 = _Pointwise(32, 48, 1)
        self.up_block_1 = _Upsample(16, 1)
        self.up_block_2 = _Upsample(32, 1)
        self.up_block_3 = _Upsample(48, 2)
        self.block_cat = _Fusion()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b1 = self.block_1(x)
        b2 = self.block_2(b1)
        b2_pooled = F.max_pool2d(b2, kernel_size=3, stride=2, padding=1)
        dense: _DenseLayer = self.dblock_3["denselayer1"]  # type: ignore[assignment]
        b3 = dense(b2_pooled + self.side_1(b1), self.pre_dense_3(b2_pooled))
        maps = [self.up_block_1(b1), self.up_block_2(b2), self.up_block_3(b3)]
        return [*maps, self.block_cat(torch.cat(maps, dim=1))]


def network(path: Path) -> TEEDNetwork:
    """The network with ``path``'s weights (:func:`weights.load_network`)."""
    return load_network(path, TEEDNetwork, "TEED")


def edges(image: np.ndarray, path: Path, safe_steps: int) -> np.ndarray:
    """``TEEDDetector.__call__``: ``[H, W, 3]`` uint8 (``H``, ``W`` multiples of 4) → ``[H, W]`` uint8 soft
    edges, floored to ``safe_steps`` + 1 levels unless 0 (HED's fusion, :func:`hed.fused_edges`)."""
    return hed.fused_edges(network(path), image, safe_steps or None)


def softedge(image: np.ndarray, resolution: int, path: Path, safe_steps: int) -> np.ndarray:
    """softedge_teed: the edges at the preprocessor resolution (computed padded to 64, the padding cut
    off), ``[h, w, 3]`` uint8."""
    padded, height, width = ops.resize_with_pad(image, resolution)
    return ops.gray_to_rgb(edges(padded, path, safe_steps)[:height, :width])


def faint_lines(padded: np.ndarray) -> np.ndarray:
    """Anyline's line mask: ``[H, W]`` bool, where lineart_standard of ``padded`` (``[H, W, 3]`` uint8, sides
    multiples of 64, so at its own size) is exactly 1, in 4-connected groups of at least 12 pixels.

    The extension keeps the lineart values in [0, 1] of its uint8 map (so only the 1s) and drops the
    groups ``remove_small_objects(min_size=36, connectivity=1)`` finds too small in the three-channel
    copy: a 3-D 6-connected group there is a 2-D 4-connected group of n pixels counted 3n times. (Removed:
    fewer than 36, as ``min_size`` means; scikit-image 0.26.0 alone also removed exactly 36, its #8001.)"""
    import cv2

    ones = (ops.lineart_standard(padded, min(padded.shape[:2]))[:, :, 0] == 1).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(ones, connectivity=4)
    sizes = stats[:, cv2.CC_STAT_AREA] * 3
    mask: np.ndarray = (ones == 1) & (sizes[labels] >= ANYLINE_MIN_SIZE)
    return mask


def anyline(image: np.ndarray, resolution: int, path: Path, safe_steps: int) -> np.ndarray:
    """softedge_anyline: the MTEED edges at the preprocessor resolution with :func:`faint_lines` set to 1
    (the extension's ``combine_layers`` on its uint8 maps: ``1 − (1 − 1)(1 − edge)`` is 1), ``[h, w, 3]``.

    The extension runs lineart_standard on the padded picture at the preprocessor resolution again, which
    gives a map of the same size only when that resolution is a multiple of 64 (otherwise it fails); the
    map at the padded picture's own size is the same map there, and is used for every resolution."""
    padded, height, width = ops.resize_with_pad(image, resolution)
    edge = edges(padded, path, safe_steps)
    combined = np.where(faint_lines(padded), np.uint8(1), edge).astype(np.uint8)
    return ops.gray_to_rgb(combined[:height, :width])


def _teed(image: np.ndarray, s: Settings) -> np.ndarray:
    return softedge(image, s.resolution, s.weights[0], int(s.a))


def _anyline(image: np.ndarray, s: Settings) -> np.ndarray:
    return anyline(image, s.resolution, s.weights[0], int(s.a))


ENTRIES: tuple[Preprocessor, ...] = (
    Preprocessor("softedge_teed", _teed, threshold_a=SAFE_STEPS, tags=("SoftEdge",), files=(FILE,)),
    Preprocessor(
        "softedge_anyline",
        _anyline,
        resolution=ANYLINE_RESOLUTION,
        threshold_a=SAFE_STEPS,
        tags=("SoftEdge",),
        files=(MTEED_FILE,),
    ),
)
