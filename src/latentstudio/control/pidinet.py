"""The PiDiNet soft-edge annotators that need ``table5_pidinet.pth`` (softedge_pidinet, softedge_pidisafe,
scribble_pidinet, t2ia_sketch_pidi), computed as sd-webui-controlnet does (``annotator/pidinet``: the
PiDiNet of Su and Liu in its "carv4" configuration with ``dil=24`` and spatial attention;
``scripts/preprocessor/legacy/processor.py``: ``pidinet``, ``pidinet_safe``, ``scribble_pidinet``,
``pidinet_ts``).

The network sees the picture as BGR in 0–1. A 3×3 stem and fifteen residual blocks in four stages (60, 120,
240, 240 channels; stages 2–4 open with a 2×2 max-pool and a 1×1 shortcut) use depthwise *pixel-difference*
convolutions, cycling through four kinds: central (``cd``: the kernel applied to the differences from the
centre pixel), angular (``ad``: differences between clockwise neighbours), radial (``rd``: a 5×5 ring of
outer-minus-inner differences) and plain (``cv``). The extension runs them in this difference form (not
the folded "converted" kernels), and so does this module, operation for operation, so that the outputs
agree bit for bit. Each stage's output goes through a dilated module (a 1×1 to 24 channels, then four 3×3
convolutions dilated 5, 7, 9, 11, summed), a spatial attention gate and a 1×1 to one channel; the four maps
are resized bilinearly to the picture's size, mixed by a 1×1 classifier and squashed by a sigmoid.

The released file is a training checkpoint: ``{"state_dict": {"module.<name>": tensor, ...}, ...}`` (the
weights of a ``DataParallel`` model). It loads through the weights-only reader (nothing downloads, nothing
in the file runs), which unwraps ``state_dict``; the ``module.`` prefix is dropped (a file without it is
read too, as the extension does) and the tensors must then be exactly the network's.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.control import hed
from latentstudio.control import preprocess_ops as ops
from latentstudio.control.preprocessor_types import Preprocessor, Settings
from latentstudio.control.weights import load_network

FILE = "pidinet/table5_pidinet.pth"  # under the annotator downloads folder
STAGES = ((60, 3), (120, 4), (240, 4), (240, 4))  # channels, blocks (the first of stages 2–4 pools)
DILATED = 24  # the dilated modules' channels
DILATIONS = (5, 7, 9, 11)
PREFIX = "module."  # DataParallel's, on every key of the released file

Kind = Literal["cd", "ad", "rd", "cv"]
Mode = Literal["soft", "safe", "sketch"]
# carv4: layer i (0 the stem, then the blocks in order) is KINDS[i % 4]
KINDS: tuple[Kind, ...] = ("cd", "ad", "rd", "cv")

# Angular differences: each 3×3 tap (row-major 0…8) minus the tap before it going clockwise round the
# ring (the centre, 4, minus itself).
_CLOCKWISE_PREVIOUS = torch.tensor([3, 0, 1, 6, 4, 2, 7, 8, 5])
# Radial differences: taps 1…8 of the 3×3 (row-major; tap 0 is unused) weigh the eight directions in
# row-major order, each placed on a 5×5 at twice its direction's offset and negated at once that offset.
_OUTER_RING = torch.tensor([0, 2, 4, 10, 14, 20, 22, 24])
_INNER_RING = torch.tensor([6, 7, 8, 11, 13, 16, 17, 18])


def pixel_difference(x: torch.Tensor, weight: torch.Tensor, kind: Kind, groups: int) -> torch.Tensor:
    """One pixel-difference convolution (stride 1, no bias): ``x`` ``[N, C, H, W]``, ``weight``
    ``[O, C/groups, 3, 3]`` → ``[N, O, H, W]``."""
    if kind == "cv":
        return F.conv2d(x, weight, padding=1, groups=groups)
    if kind == "cd":  # Σ w·(x_p − x_centre) = (w ⊛ x) − (Σw)·x_centre
        centre = F.conv2d(x, weight.sum(dim=[2, 3], keepdim=True), padding=0, groups=groups)
        return F.conv2d(x, weight, padding=1, groups=groups) - centre
    out_channels, in_channels = weight.shape[:2]
    flat = weight.view(out_channels, in_channels, -1)
    if kind == "ad":
        kernel = (flat - flat[:, :, _CLOCKWISE_PREVIOUS]).view(weight.shape)
        return F.conv2d(x, kernel, padding=1, groups=groups)
    ring = torch.zeros(out_channels, in_channels, 25, dtype=weight.dtype)
    ring[:, :, _OUTER_RING] = flat[:, :, 1:]
    ring[:, :, _INNER_RING] = -flat[:, :, 1:]
    return F.conv2d(x, ring.view(out_channels, in_channels, 5, 5), padding=2, groups=groups)


class _Block(torch.nn.Module):
    """``PDCBlock``: [2×2 max-pool,] depthwise pixel-difference 3×3, ReLU, 1×1, plus the input (through a
    1×1 shortcut where the block pools and widens): ``[1, C_in, H, W]`` → ``[1, C_out, H', W']``."""

    def __init__(self, kind: Kind, channels_in: int, channels_out: int, pool: bool) -> None:
        super().__init__()
        self.kind: Kind = kind
        self.pool = pool
        if pool:
            self.shortcut = torch.nn.Conv2d(channels_in, channels_out, 1)
        self.conv1 = torch.nn.Conv2d(channels_in, channels_in, 3, padding=1, groups=channels_in, bias=False)
        self.conv2 = torch.nn.Conv2d(channels_in, channels_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        y: torch.Tensor = self.conv2(F.relu(pixel_difference(x, self.conv1.weight, self.kind, x.shape[1])))
        return y + (self.shortcut(x) if self.pool else x)


class _Dilated(torch.nn.Module):
    """``CDCM``: ReLU, 1×1 to 24 channels, the sum of four dilated 3×3s: ``[1, C, h, w]`` →
    ``[1, 24, h, w]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, DILATED, 1)
        for i, d in enumerate(DILATIONS, start=1):
            self.add_module(
                f"conv2_{i}", torch.nn.Conv2d(DILATED, DILATED, 3, padding=d, dilation=d, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(x))
        branches = [getattr(self, f"conv2_{i}")(h) for i in range(1, len(DILATIONS) + 1)]
        total: torch.Tensor = branches[0]
        for branch in branches[1:]:
            total = total + branch
        return total


class _Attention(torch.nn.Module):
    """``CSAM``: ``x`` times a one-channel sigmoid gate (ReLU, 1×1 to 4, 3×3 to 1): shape kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, 4, 1)
        self.conv2 = torch.nn.Conv2d(4, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(self.conv1(F.relu(x))))


class _Reduce(torch.nn.Module):
    """``MapReduce``: a 1×1 to one channel, ``[1, 24, h, w]`` → ``[1, 1, h, w]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


class PiDiNet(torch.nn.Module):
    """PiDiNet carv4 (``dil=24``, ``sa=True``): ``[1, 3, H, W]`` BGR in 0–1 → ``[1, 1, H, W]`` edge
    probabilities (the fused output; the extension uses only that one)."""

    def __init__(self) -> None:
        super().__init__()
        self.init_block = torch.nn.Conv2d(3, STAGES[0][0], 3, padding=1, bias=False)
        layer, channels = 1, STAGES[0][0]
        for s, (width, count) in enumerate(STAGES, start=1):
            for b in range(1, count + 1):
                pool = s > 1 and b == 1
                block = _Block(KINDS[layer % 4], channels if pool else width, width, pool)
                self.add_module(f"block{s}_{b}", block)
                layer, channels = layer + 1, width
        self.conv_reduces = torch.nn.ModuleList(_Reduce(DILATED) for _ in STAGES)
        self.attentions = torch.nn.ModuleList(_Attention(DILATED) for _ in STAGES)
        self.dilations = torch.nn.ModuleList(_Dilated(width) for width, _ in STAGES)
        self.classifier = torch.nn.Conv2d(len(STAGES), 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        h = pixel_difference(x, self.init_block.weight, KINDS[0], 1)
        sides = []
        for s, (_, count) in enumerate(STAGES, start=1):
            for b in range(1, count + 1):
                h = getattr(self, f"block{s}_{b}")(h)
            side = self.conv_reduces[s - 1](self.attentions[s - 1](self.dilations[s - 1](h)))
            sides.append(F.interpolate(side, (height, width), mode="bilinear", align_corners=False))
        return torch.sigmoid(self.classifier(torch.cat(sides, dim=1)))


def network(path: Path) -> PiDiNet:
    """The network with ``path``'s weights (fp32, eval, no gradients), kept while the file is unchanged. A
    file whose tensors (``module.`` dropped) are not exactly the network's is :class:`ModelFileError`."""
    return load_network(path, PiDiNet, "PiDiNet", prefix=PREFIX)


def edges(image: np.ndarray, path: Path, mode: Mode = "soft") -> np.ndarray:
    """``apply_pidinet``: ``[H, W, 3]`` uint8 RGB → ``[H, W]`` uint8 edges: soft, ``safe`` (quantised to
    three levels) or ``sketch`` (the probabilities above 0.5 white, the rest black)."""
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    with torch.no_grad():
        x = (torch.from_numpy(bgr).float() / 255.0).permute(2, 0, 1)[None]
        edge: np.ndarray = network(path)(x)[0, 0].numpy()
    if mode == "sketch":
        return np.where(edge > 0.5, 255, 0).astype(np.uint8)
    if mode == "safe":
        edge = hed.safe_step(edge)
    out: np.ndarray = (edge * 255.0).clip(0, 255).astype(np.uint8)
    return out


def softedge(image: np.ndarray, resolution: int, path: Path, mode: Mode = "soft") -> np.ndarray:
    """softedge_pidinet / softedge_pidisafe / t2ia_sketch_pidi: the edges at the preprocessor resolution
    (computed on the picture padded to multiples of 64, the padding cropped off), ``[h, w, 3]`` uint8."""
    padded, height, width = ops.resize_with_pad(image, resolution)
    return ops.gray_to_rgb(edges(padded, path, mode)[:height, :width])


def scribble(image: np.ndarray, resolution: int, path: Path) -> np.ndarray:
    """scribble_pidinet: the soft edges thinned (NMS at 127, σ 3), blurred (σ 3), thresholded above 4 →
    ``[h, w, 3]`` uint8 in {0, 255}."""
    import cv2

    padded, height, width = ops.resize_with_pad(image, resolution)
    result = hed.nms(edges(padded, path)[:height, :width], 127, 3.0)
    result = cv2.GaussianBlur(result, (0, 0), 3.0)
    result[result > 4] = 255
    result[result < 255] = 0
    return ops.gray_to_rgb(result)


def _softedge(image: np.ndarray, s: Settings, *, mode: Mode) -> np.ndarray:
    return softedge(image, s.resolution, s.weights[0], mode)


def _scribble(image: np.ndarray, s: Settings) -> np.ndarray:
    return scribble(image, s.resolution, s.weights[0])


ENTRIES: tuple[Preprocessor, ...] = (
    Preprocessor(
        "pidinet",
        partial(_softedge, mode="soft"),
        aliases=("softedge_pidinet",),
        priority=100,
        tags=("SoftEdge",),
        files=(FILE,),
    ),
    Preprocessor(
        "pidinet_safe",
        partial(_softedge, mode="safe"),
        aliases=("softedge_pidisafe",),
        tags=("SoftEdge",),
        files=(FILE,),
    ),
    Preprocessor(
        "pidinet_scribble",
        _scribble,
        aliases=("scribble_pidinet",),
        priority=100,
        tags=("Scribble", "SparseCtrl"),
        files=(FILE,),
    ),
    Preprocessor(
        "pidinet_sketch",
        partial(_softedge, mode="sketch"),
        aliases=("t2ia_sketch_pidi",),
        tags=("T2I-Adapter",),
        files=(FILE,),
    ),
)
