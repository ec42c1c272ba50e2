"""The ``segmentation`` annotator (label seg_ufade20k) that needs ``uniformer/upernet_global_small.pth``,
computed as sd-webui-controlnet does (``annotator/uniformer``: UniFormer-S with an UPerNet head trained on
ADE20K, run through its bundled mmseg's ``inference_segmentor`` and drawn with ``show_result_pyplot``;
``scripts/preprocessor/legacy/processor.py``: ``uniformer``).

The backbone (``upernet_global_small.py``: widths 64, 128, 320, 512; 3, 4, 8 and 3 blocks; 64 channels per
attention head; the config turns the windowed and hybrid variants off, so every block of the last two stages
attends globally): four patch embeddings (a convolution with stride 4, then 2, 2, 2; LayerNorm over the
channels). Stages 1 and 2 are convolutional blocks: a depthwise 3×3 position term added, then batch norm,
1×1, depthwise 5×5, 1×1 added, then batch norm and a 1×1 MLP (×4, GELU) added. Stages 3 and 4 are
transformer blocks: the same position term, then LayerNorm and multi-head self-attention over all tokens
added, then LayerNorm and an MLP added. Each stage's output passes a LayerNorm (ε 1e-6) before the head
(below). The file also holds the auxiliary head (``FCNHead``: a 3×3 convolution module and a classifier on
the third feature), kept unused.

The UPerNet head (every convolution but the classifiers mmcv's ``ConvModule``: a bias-free convolution, batch
norm, ReLU, keys ``conv`` and ``bn``): a pyramid pooling module on the deepest feature (average-pooled to 1×1,
2×2, 3×3 and 6×6, a 1×1 convolution each, resized back, concatenated after the feature itself, a 3×3
bottleneck); 1×1 laterals on the three shallower features; a top-down path (each level gets the one below it
resized and added); a 3×3 convolution on each of the three shallower levels; all four resized to the
shallowest and concatenated; a 3×3 fusion and a 1×1 classifier (its dropout does nothing at inference).
Every resize is bilinear without aligned corners.

The pipeline (the config's test pipeline): the padded picture resized with ``INTER_LINEAR``, aspect kept,
by the largest factor that keeps the long side within 2048 and the short side within 512 (:data:`SCALE`;
each side ``int(side × factor + 0.5)``); float32, channels reversed (mmseg's ``to_rgb`` on the picture the
extension hands over in RGB, so the network sees BGR), ImageNet mean subtracted and multiplied by the
reciprocal std; no padding, ``whole`` test mode. The logits (at a quarter of that size) resized bilinearly
(no aligned corners) to the resized picture, then to the padded picture, soft-maxed and arg-maxed. Drawn
with ``opacity=1``: each pixel its class's ADE20K colour (RGB); then cut to the picture.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from latentstudio.control import preprocess_ops as ops
from latentstudio.control.preprocessor_types import Preprocessor, Settings
from latentstudio.control.weights import load_network

FILE = "uniformer/upernet_global_small.pth"  # under the annotator downloads folder
SCALE = (2048, 512)  # the test pipeline's ``img_scale``: long side at most 2048, short side at most 512
MEAN = (123.675, 116.28, 103.53)  # applied to the reversed channels, as the extension does
STD = (58.395, 57.12, 57.375)
WIDTHS = (64, 128, 320, 512)
DEPTHS = (3, 4, 8, 3)
HEAD_DIM = 64
MLP_RATIO = 4
CLASSES = 150
CHANNELS = 512  # the UPerNet head's width
AUX_CHANNELS = 256  # the auxiliary FCN head's width
POOL_SCALES = (1, 2, 3, 6)
_STAGE_EPS = 1e-6  # the backbone's LayerNorms (the patch embeddings' keep PyTorch's 1e-5)

# ADE20K's 150 class colours (mmseg's ``get_palette('ade')``), RGB, class 0 first, as one hex string
_ADE20K_HEX = (
    "787878b4787806e6e650323204c8037878508c8c8ccc05ffe6e6e604fa07e005ffebff0796053d78784608ff33ff0652"
    "8fff8cccff04ff3307cc46030066c83de6faff06330b66ffff0747ff09e00907e6dcdcdcff095c7009ff08ffd607ffe0"
    "ffb8060aff47ff290a07ffffe0ff086608ffff3d06ffc207ff7a0800ff14ff0829ff05990633ffeb0cffa0961400a3ff"
    "8c8c8cfa0a0f14ff001fff00ff1f00ffe00099ff000000ffff470000ebff00adff1f00ff0bc8c8ff520000fff5003dff"
    "00ff7000ff85ff0000ffa300ff6600c2ff00008fff33ff000052ff00ff2900ffad0a00ffadff0000ff99ff5c00ff00ff"
    "ff00f5ff0066ffad00ff0014ffb8b8001fff00ff3d0047ffff00cc00ffc200ff52000aff0070ff3300ff00c2ff007aff"
    "00ffa3ff990000ff0aff70008fff005200ffa3ff00ffeb0008b8aa8500ff00ff5cb800ffff001f00b8ff00d6ffff0070"
    "5cff0000e0ff70e0ff46b8a0a300ff9900ff47ff00ff00a3ffcc00ff008f00ffeb85ff00ff00ebf500ffff007afff500"
    "0abed4d6ff0000ccff1400ffffff000099ff0029ff00ffcc2900ff29ff00ad00ff00f5ff4700ff7a00ff00ffb8005cff"
    "b8ff000085ffffd60019c2c266ff005c00ff"
)
ADE20K_PALETTE = np.frombuffer(bytes.fromhex(_ADE20K_HEX), np.uint8).reshape(150, 3)


class _Mlp(nn.Module):
    """``fc1``, GELU, ``fc2``: linear layers over tokens, or 1×1 convolutions over a map (``conv``)."""

    def __init__(self, width: int, conv: bool) -> None:
        super().__init__()
        hidden = width * MLP_RATIO
        self.fc1 = nn.Conv2d(width, hidden, 1) if conv else nn.Linear(width, hidden)
        self.fc2 = nn.Conv2d(hidden, width, 1) if conv else nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(F.gelu(self.fc1(x)))
        return out


class _ConvBlock(nn.Module):
    """``CBlock`` (stages 1, 2): ``[1, C, h, w]`` → same; local aggregation by a depthwise 5×5."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.norm1 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 1)
        self.attn = nn.Conv2d(width, width, 5, padding=2, groups=width)
        self.conv2 = nn.Conv2d(width, width, 1)
        self.norm2 = nn.BatchNorm2d(width)
        self.mlp = _Mlp(width, conv=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        out: torch.Tensor = x + self.mlp(self.norm2(x))
        return out


class _Attention(nn.Module):
    """Multi-head self-attention over ``[1, N, C]`` tokens (``qkv`` fused, with bias; ``proj``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = width // HEAD_DIM
        self.qkv = nn.Linear(width, width * 3)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        weights = (qkv[0] @ qkv[1].transpose(-2, -1)) * HEAD_DIM**-0.5
        mixed = (weights.softmax(dim=-1) @ qkv[2]).transpose(1, 2).reshape(batch, tokens, width)
        out: torch.Tensor = self.proj(mixed)
        return out


class _AttentionBlock(nn.Module):
    """``SABlock`` (stages 3, 4): ``[1, C, h, w]`` → same; global attention over the ``h × w`` tokens. The
    map goes back as a view of the token tensor (channels last in memory), as the extension's does."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.norm1 = nn.LayerNorm(width, eps=_STAGE_EPS)
        self.attn = _Attention(width)
        self.norm2 = nn.LayerNorm(width, eps=_STAGE_EPS)
        self.mlp = _Mlp(width, conv=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        batch, width, height, span = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn(self.norm1(tokens))
        tokens = tokens + self.mlp(self.norm2(tokens))
        out: torch.Tensor = tokens.transpose(1, 2).reshape(batch, width, height, span)
        return out


class _PatchEmbed(nn.Module):
    """A ``patch``×``patch`` convolution with that stride, then LayerNorm over the channels (ε 1e-5)."""

    def __init__(self, channels_in: int, width: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels_in, width, patch, stride=patch)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        batch, _, height, width = x.shape
        tokens: torch.Tensor = self.norm(x.flatten(2).transpose(1, 2))
        return tokens.reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()


class UniFormer(nn.Module):
    """The backbone: ``[1, 3, H, W]`` normalised → four maps ``[1, WIDTHS[i], H/2^(i+2), W/2^(i+2)]``."""

    def __init__(self) -> None:
        super().__init__()
        channels = 3
        for i, (width, depth) in enumerate(zip(WIDTHS, DEPTHS, strict=True), start=1):
            self.add_module(f"patch_embed{i}", _PatchEmbed(channels, width, 4 if i == 1 else 2))
            block = _ConvBlock if i <= 2 else _AttentionBlock
            self.add_module(f"blocks{i}", nn.ModuleList(block(width) for _ in range(depth)))
            self.add_module(f"norm{i}", nn.LayerNorm(width, eps=_STAGE_EPS))
            channels = width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i in range(1, len(WIDTHS) + 1):
            x = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"blocks{i}"):
                x = block(x)
            outs.append(getattr(self, f"norm{i}")(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)


class ConvBNReLU(nn.Module):
    """``ConvModule``: bias-free ``kernel``×``kernel`` convolution ("same" padding), batch norm, ReLU."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _PoolBranch(nn.Sequential):
    """One pyramid level: adaptive average pooling to ``scale``×``scale``, then a 1×1 ``ConvModule``
    (keys ``0`` and ``1``)."""

    def __init__(self, scale: int, channels_in: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(scale), ConvBNReLU(channels_in, CHANNELS, 1))


class UPerHead(nn.Module):
    """``decode_head``: the four backbone features ``[1, C_i, H/2^(i+2), W/2^(i+2)]`` → class logits
    ``[1, classes, H/4, W/4]``."""

    def __init__(self, widths: tuple[int, ...], classes: int) -> None:
        super().__init__()
        deepest = widths[-1]
        self.psp_modules = nn.ModuleList(_PoolBranch(s, deepest) for s in POOL_SCALES)
        self.bottleneck = ConvBNReLU(deepest + len(POOL_SCALES) * CHANNELS, CHANNELS, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(w, CHANNELS, 1) for w in widths[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(CHANNELS, CHANNELS, 3) for _ in widths[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(widths) * CHANNELS, CHANNELS, 3)
        self.conv_seg = nn.Conv2d(CHANNELS, classes, 1)

    def _pyramid(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(branch(x), tuple(x.shape[2:])) for branch in self.psp_modules]
        out: torch.Tensor = self.bottleneck(torch.cat([x, *pooled], dim=1))
        return out

    def forward(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        levels = [conv(f) for conv, f in zip(self.lateral_convs, features, strict=False)]
        levels.append(self._pyramid(features[-1]))
        for i in range(len(levels) - 1, 0, -1):
            levels[i - 1] = levels[i - 1] + _resize(levels[i], tuple(levels[i - 1].shape[2:]))
        outs = [conv(level) for conv, level in zip(self.fpn_convs, levels, strict=False)]
        outs.append(levels[-1])
        size = tuple(outs[0].shape[2:])
        fused = self.fpn_bottleneck(torch.cat([outs[0], *(_resize(o, size) for o in outs[1:])], dim=1))
        out: torch.Tensor = self.conv_seg(fused)
        return out


class FCNHead(nn.Module):
    """``auxiliary_head``: a 3×3 ``ConvModule`` and a 1×1 classifier on the third feature. Only training
    used it; it is here because the released file holds it (the forward is never called at inference)."""

    def __init__(self, channels_in: int, classes: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(ConvBNReLU(channels_in, AUX_CHANNELS, 3))
        self.conv_seg = nn.Conv2d(AUX_CHANNELS, classes, 1)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv_seg(self.convs(feature))
        return out


class SegmentationNetwork(nn.Module):
    """mmseg's ``EncoderDecoder`` as the released file holds it: ``[1, 3, H, W]`` normalised → logits
    ``[1, 150, H/4, W/4]`` (the auxiliary head is loaded, never run)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = UniFormer()
        self.decode_head = UPerHead(WIDTHS, CLASSES)
        self.auxiliary_head = FCNHead(WIDTHS[2], CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decode_head(self.backbone(x))
        return out


def network(path: Path) -> SegmentationNetwork:
    """The network with ``path``'s weights (:func:`weights.load_network`; the file's ``state_dict``)."""
    return load_network(path, SegmentationNetwork, "UniFormer segmentation")


def rescaled_size(height: int, width: int) -> tuple[int, int]:
    """``(h, w)`` the test pipeline resizes a ``height × width`` picture to (mmcv's ``rescale_size``)."""
    factor = min(max(SCALE) / max(height, width), min(SCALE) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def normalised(image: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 → ``[1, 3, h, w]`` float32: resized (:func:`rescaled_size`, ``INTER_LINEAR``),
    channels reversed, ``(x − MEAN) × (1 / STD)`` in float32; contiguous in memory, as the extension's
    batch is (the first convolution rounds by the memory layout)."""
    height, width = rescaled_size(*image.shape[:2])
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    x = resized[:, :, ::-1].astype(np.float32)
    x = (x - np.asarray(MEAN, np.float32)) * (1.0 / np.asarray(STD)).astype(np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()


def labels(image: np.ndarray, path: Path) -> np.ndarray:
    """``inference_segmentor``: ``[H, W, 3]`` uint8 RGB → ``[H, W]`` int64 ADE20K classes (0–149): the
    logits resized to the network input, then to ``H × W``, soft-maxed, arg-maxed."""
    x = normalised(image)
    with torch.no_grad():
        logits = network(path)(x)
        logits = F.interpolate(logits, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)
        logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
        out: np.ndarray = F.softmax(logits, dim=1).argmax(dim=1)[0].numpy()
    return out


def colored(classes: np.ndarray) -> np.ndarray:
    """``[H, W]`` classes → ``[H, W, 3]`` uint8, each pixel its class's ADE20K colour."""
    return np.ascontiguousarray(ADE20K_PALETTE[classes])


def seg_ufade20k(image: np.ndarray, resolution: int, path: Path) -> np.ndarray:
    """The segmentation preprocessor: the colour-coded classes of the image at the preprocessor resolution
    (the padded picture segmented, the padding cut off after), ``[h, w, 3]``."""
    padded, height, width = ops.resize_with_pad(image, resolution)
    return np.ascontiguousarray(colored(labels(padded, path))[:height, :width])


def run(image: np.ndarray, s: Settings) -> np.ndarray:
    """The registry's call: ``[H, W, 3]`` uint8 → ``[h, w, 3]`` uint8 (``s.weights[0]``: the located file)."""
    return seg_ufade20k(image, s.resolution, s.weights[0])


ENTRIES: tuple[Preprocessor, ...] = (
    Preprocessor(
        "segmentation",
        run,
        aliases=("seg_ufade20k",),
        tags=("Segmentation",),
        files=(FILE,),
    ),
)
