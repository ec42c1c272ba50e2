"""The LeReS depth annotators that need ``leres/res101.pth`` (depth_leres) and, for depth_leres++, also the
merge network ``leres/latest_net_G.pth``, computed as sd-webui-controlnet does (``annotator/leres``: the
AdelaiDepth LeReS "RelDepthModel" with its ResNeXt-101 backbone, ``estimateleres`` and ``apply_leres``;
``scripts/preprocessor/legacy/processor.py``: ``leres``). The boosting of depth_leres++ is
:mod:`latentstudio.control.leres_boost`.

The network: a ResNeXt-101 32×8d (7×7 stride-2 stem, batch norm, ReLU, 3×3 stride-2 max-pool; 3, 4, 23 and
3 grouped bottlenecks at 1/4 … 1/32, 256 to 2048 channels, the stride on the grouped 3×3) whose four stage
outputs feed a decoder: a "feature transfer" block (a 3×3 convolution ``c``, then ``relu(relu(c) +
branch(relu(c)))``, the branch ReLU, 3×3, batch norm, ReLU, 3×3 — the extension's in-place ReLU opening the
branch rectifies the ``c`` that is added back) on the 1/32 output, a 3×3 to 256 channels and a 2× bilinear
upsampling (aligned corners); three fusion steps (a transfer block on the skip feature, the deeper one
added, another transfer block, 2× upsampling), and an output head (3×3 to 128, batch norm, ReLU, 3×3 to one
channel, 2× upsampling): ``[1, 1, H, W]`` relative depth (larger is farther). The extension loads the network
but never puts it in eval mode, so every batch norm normalises with the picture's own per-channel
statistics (as in training), not the file's running statistics; this module does the same.

``estimateleres``: the picture's channels reversed (BGR), resized (bilinear, uint8) to the network size, as
float32 in 0–255 (torchvision's ``ToTensor`` does not scale a float array) minus the ImageNet means
(0.485, 0.456, 0.406) and divided by their deviations (0.229, 0.224, 0.225); the output resized back
(bicubic). ``apply_leres``: the depth spread over 0–65535 and truncated to uint16 (all zero where flat),
scaled by 255/65535 with rounding to uint8; "Remove Near %" ``n`` zeroes the values at or below ``n`` % of
255 (``cv2.THRESH_TOZERO``); the map is inverted (near white); "Remove Background %" ``b`` then zeroes the
values at or below ``b`` % of 255. depth_leres runs the network once on the picture padded to multiples of
64, at that size, and crops the padding off the map.

The released file is a training checkpoint ``{"depth_model": {...}, ...}`` whose keys may carry
``DataParallel``'s ``module.``; the loader unwraps ``depth_model`` and drops that prefix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from latentstudio.control import leres_boost
from latentstudio.control import preprocess_ops as ops
from latentstudio.control.preprocessor_types import Preprocessor, Settings, Slider
from latentstudio.control.weights import load_network, uninitialised
from latentstudio.core import FieldError

FILE_LERES = "leres/res101.pth"  # under the annotator downloads folder
FILE_MERGE = "leres/latest_net_G.pth"  # the pix2pix merge network of depth_leres++
PREFIX = "module."  # DataParallel's, where the file's keys carry it
BLOCKS = (3, 4, 23, 3)  # ResNeXt-101's bottlenecks per stage
GROUPS = 32
STAGE_WIDTHS = (256, 512, 1024, 2048)  # the grouped convolutions' and the stages' channels (32 × 8d)
MEAN = (0.485, 0.456, 0.406)  # applied to the BGR channels in order, on 0–255 values
STD = (0.229, 0.224, 0.225)
UINT16_TOP = 65535


class _BatchNorm(nn.BatchNorm2d):
    """Batch norm normalising with the input's own per-channel statistics (biased variance), as a
    ``BatchNorm2d`` in training mode does: the extension never puts LeReS in eval mode. The file's running
    statistics are loaded but never read (nor updated: nothing else reads them)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def _conv_bn(channels_in: int, channels_out: int, stride: int = 1) -> nn.Sequential:
    """A bias-free 1×1 convolution and batch norm (a bottleneck's ``downsample``, keys ``0``, ``1``)."""
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), _BatchNorm(channels_out)
    )


class _Bottleneck(nn.Module):
    """1×1, grouped 3×3 (carrying the stride), 1×1, each with batch norm, ReLU between; the input (through
    ``downsample`` where given) added before the last ReLU."""

    def __init__(self, channels_in: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, width, 1, bias=False)
        self.bn1 = _BatchNorm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=GROUPS, bias=False)
        self.bn2 = _BatchNorm(width)
        self.conv3 = nn.Conv2d(width, width, 1, bias=False)
        self.bn3 = _BatchNorm(width)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(h + shortcut)


class _ResNeXt(nn.Module):
    """ResNeXt-101 32×8d without its classifier: ``[1, 3, H, W]`` → the four stage outputs
    ``[1, 256, H/4, W/4]`` … ``[1, 2048, H/32, W/32]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = _BatchNorm(64)
        channels = 64
        for stage, (count, width) in enumerate(zip(BLOCKS, STAGE_WIDTHS, strict=True), start=1):
            stride = 1 if stage == 1 else 2
            blocks = [_Bottleneck(channels, width, stride, _conv_bn(channels, width, stride))]
            blocks += [_Bottleneck(width, width, 1, None) for _ in range(count - 1)]
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            channels = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        features = []
        for stage in range(1, len(BLOCKS) + 1):
            h = getattr(self, f"layer{stage}")(h)
            features.append(h)
        return features


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class _Transfer(nn.Module):
    """``FTB``: ``c = conv1(x)``; ``relu(relu(c) + conv_branch(relu(c)))`` (the branch: ReLU, 3×3, batch
    norm, ReLU, 3×3; keys ``conv_branch.1``, ``.2``, ``.4``)."""

    def __init__(self, channels_in: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, padding=1)
        self.conv_branch = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _BatchNorm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = F.relu(self.conv1(x))
        return F.relu(c + self.conv_branch(c))


class _Fusion(nn.Module):
    """``FFM``: ``upsample(ftb2(ftb1(skip) + deep))``, 256 channels out."""

    def __init__(self, channels_in: int) -> None:
        super().__init__()
        self.ftb1 = _Transfer(channels_in, 256)
        self.ftb2 = _Transfer(256, 256)

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        return _upsample(self.ftb2(self.ftb1(skip) + deep))


class _Output(nn.Module):
    """``AO``: ``adapt_conv``, a 3×3 to half the channels, batch norm, ReLU, a 3×3 to one channel; then 2×
    upsampling."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.adapt_conv = nn.Sequential(
            nn.Conv2d(channels, channels // 2, 3, padding=1),
            _BatchNorm(channels // 2),
            nn.ReLU(),
            nn.Conv2d(channels // 2, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _upsample(self.adapt_conv(x))


class _Decoder(nn.Module):
    """The four stage outputs → ``[1, 1, H, W]`` depth (``conv``, ``conv1``, ``ffm2`` … ``ffm0``,
    ``outconv``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = _Transfer(2048, 512)
        self.conv1 = nn.Conv2d(512, 256, 3, padding=1)
        self.ffm2 = _Fusion(1024)
        self.ffm1 = _Fusion(512)
        self.ffm0 = _Fusion(256)
        self.outconv = _Output(256)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        h = _upsample(self.conv1(self.conv(features[3])))
        h = self.ffm0(features[0], self.ffm1(features[1], self.ffm2(features[2], h)))
        out: torch.Tensor = self.outconv(h)
        return out


class _Encoder(nn.Module):
    """``DepthNet``: only holds the ResNeXt (``encoder``)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _ResNeXt()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features: list[torch.Tensor] = self.encoder(x)
        return features


class _DepthModel(nn.Module):
    """``DepthModel``: ``encoder_modules`` and ``decoder_modules``."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder_modules = _Encoder()
        self.decoder_modules = _Decoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder_modules(self.encoder_modules(x))
        return out


class LeReSNetwork(nn.Module):
    """``RelDepthModel("resnext101")``: ``[1, 3, H, W]`` normalised BGR (``H``, ``W`` multiples of 32) →
    ``[1, 1, H, W]`` relative depth."""

    def __init__(self) -> None:
        super().__init__()
        self.depth_model = _DepthModel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.depth_model(x)
        return out


def _empty() -> LeReSNetwork:
    return uninitialised(LeReSNetwork)  # the file replaces every tensor (weights.load_network checks it)


def network(path: Path) -> LeReSNetwork:
    """The network with ``path``'s weights (:func:`weights.load_network`; ``module.`` dropped)."""
    return load_network(path, _empty, "LeReS depth", prefix=PREFIX)


def estimate(image: np.ndarray, model: nn.Module, width: int, height: int) -> np.ndarray:
    """``estimateleres``: ``[H, W, 3]`` uint8 RGB → ``[H, W]`` float32 depth, the network run on the BGR
    picture resized (bilinear) to ``width`` × ``height`` (multiples of 32) and its output resized back
    (bicubic)."""
    import cv2

    bgr = cv2.resize(np.ascontiguousarray(image[:, :, ::-1]), (width, height))
    x = torch.from_numpy(bgr.astype(np.float32).transpose(2, 0, 1)).contiguous()
    x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    with torch.no_grad():
        depth = model(x[None])[0, 0].numpy()
    out: np.ndarray = cv2.resize(depth, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_CUBIC)
    return out


def to_map(depth: np.ndarray, near: float, background: float) -> np.ndarray:
    """``apply_leres``' mapping: ``[H, W]`` depth → ``[H, W]`` uint8, near white, the two removals applied
    (percentages; 0 keeps everything)."""
    import cv2

    low, high = depth.min(), depth.max()
    if high - low > np.finfo(float).eps:
        spread = UINT16_TOP * (depth - low) / (high - low)
    else:
        spread = np.zeros(depth.shape)
    gray = cv2.convertScaleAbs(spread.astype(np.uint16), alpha=255.0 / UINT16_TOP)
    if near != 0:
        gray = cv2.threshold(gray, near / 100 * 255, 255, cv2.THRESH_TOZERO)[1]
    gray = cv2.bitwise_not(gray)
    if background != 0:
        gray = cv2.threshold(gray, background / 100 * 255, 255, cv2.THRESH_TOZERO)[1]
    out: np.ndarray = gray
    return out


def depth_leres(image: np.ndarray, resolution: int, path: Path, near: float, background: float) -> np.ndarray:
    """depth_leres: the map of the picture padded to multiples of 64 at the preprocessor resolution (the
    network at that size), the padding cropped off, ``[h, w, 3]`` uint8."""
    padded, height, width = ops.resize_with_pad(image, resolution)
    depth = estimate(padded, network(path), padded.shape[1], padded.shape[0])
    return ops.gray_to_rgb(to_map(depth, near, background)[:height, :width])


def depth_leres_boosted(
    image: np.ndarray, resolution: int, paths: tuple[Path, Path], near: float, background: float
) -> np.ndarray:
    """depth_leres++: as :func:`depth_leres`, the depth boosted (:func:`leres_boost.boost`: several
    resolutions and patches merged by the pix2pix network of ``paths[1]``), ``[h, w, 3]`` uint8.
    :class:`FieldError` on ``processor_res`` where the padded picture's long side is under 160 pixels."""
    padded, height, width = ops.resize_with_pad(image, resolution)
    if not leres_boost.long_enough(*padded.shape[:2]):
        raise FieldError(
            "processor_res",
            f"depth_leres++ needs the padded picture at least 160 pixels on its long side (the extension's "
            f"boosting fails below); at resolution {resolution} it is {padded.shape[1]}x{padded.shape[0]}",
        )
    model = network(paths[0])
    merge = leres_boost.merger(leres_boost.network(paths[1]))
    depth = leres_boost.boost(padded, lambda picture, size: estimate(picture, model, size, size), merge)
    return ops.gray_to_rgb(to_map(depth, near, background)[:height, :width])


def _run(image: np.ndarray, s: Settings) -> np.ndarray:
    return depth_leres(image, s.resolution, s.weights[0], s.a, s.b)


def _run_boosted(image: np.ndarray, s: Settings) -> np.ndarray:
    return depth_leres_boosted(image, s.resolution, (s.weights[0], s.weights[1]), s.a, s.b)


_NEAR = Slider("Remove Near %", 0, 100, 0, 0.1)
_BACKGROUND = Slider("Remove Background %", 0, 100, 0, 0.1)

ENTRIES: tuple[Preprocessor, ...] = (
    Preprocessor(
        "depth_leres", _run, threshold_a=_NEAR, threshold_b=_BACKGROUND, tags=("Depth",), files=(FILE_LERES,)
    ),
    Preprocessor(
        "depth_leres++",
        _run_boosted,
        threshold_a=_NEAR,
        threshold_b=_BACKGROUND,
        tags=("Depth",),
        files=(FILE_LERES, FILE_MERGE),
    ),
)
