"""The ``normal_bae`` surface-normal annotator that needs ``scannet.pt`` (Bae, Budvytis and Cipolla's
"Estimating and Exploiting the Aleatoric Uncertainty in Surface Normal Estimation", trained on ScanNet),
computed as sd-webui-controlnet does (``annotator/normalbae``; ``scripts/preprocessor/legacy/processor.py``:
``normal_bae``).

The network sees the picture in [0, 1] normalised with ImageNet's mean and deviation. The encoder is
EfficientNet-B5 as the ``geffnet`` package bundled with the extension builds its ``tf_efficientnet_b5_ap``
(the TensorFlow-compatible AdvProp variant; parameter names geffnet's): B0's seven stages widened 1.6×
(channels rounded to multiples of 8) and deepened 2.2× (repeats rounded up), so a stride-2 3×3 stem to 48
channels, 39 blocks and a 1×1 head to 2048 channels. The first stage's blocks are depthwise-separable
(depthwise k×k, squeeze-excitation, 1×1 projection); the others are inverted residuals (1×1 expansion ×6,
depthwise k×k, squeeze-excitation, linear 1×1 projection). A block adds its input back where it keeps the
shape. Every convolution but the squeeze-excitation ones is bias-free and followed by batch norm with
TensorFlow's eps (1e-3); swish (SiLU) follows the stem, the expansion and the depthwise convolution.
Squeeze-excitation: the spatial mean, a 1×1 to a quarter of the *block's input* channels with bias, swish,
a 1×1 back with bias, the features scaled by its sigmoid. Padding is TensorFlow's "same" as geffnet
resolves it: a stride-1 convolution pads ``(k - 1) / 2`` all round inside the convolution; a stride-2 one
pads the input explicitly, per input size, the odd row and column at the bottom and right (an even side:
0 before and 1 after for a 3×3, 1 and 2 for a 5×5).

The decoder reads the encoder's stage outputs at 1/2, 1/4, 1/8 and 1/16 (24, 40, 64, 176 channels) and
the head convolution at 1/32 (2048, before the head's batch norm). A 1×1 convolution on the deepest, then
four up-steps: bilinear resizing (aligned corners) to the next tap's size, concatenation with it, and two
3×3 convolutions with batch norm (eps 1e-5) and leaky ReLU (0.01), to 1024, 512, 256 and 128 channels at
1/16 … 1/2.

Every output has four channels: a direction (x, y, z, divided by its length + 1e-10) and a concentration
``elu(κ) + 1.01``. A 3×3 convolution on the 1/8 features gives the first; each finer one (1/4, 1/2, 1/1)
doubles the previous output and the features one step finer (bilinear, aligned corners), concatenates
them and runs a per-pixel MLP (four 1×1 convolutions, ReLU between). In training the decoder refines only
sampled pixels (``sampling_ratio`` 0.4, ``importance_ratio`` 0.7, random); the extension calls it in its
default ``mode="test"``, which refines every pixel: nothing random runs. The map: the full-size direction
as ``(n + 1) / 2`` clipped to [0, 1], × 255, truncated to uint8; x, y, z are red, green, blue.

The released file is a training checkpoint, ``{"model": {"module.<name>": tensor, ...}}`` (the weights of
a ``DataParallel`` model). It loads through the weights-only reader (nothing downloads, nothing in the file
runs), which unwraps ``model``; the ``module.`` prefix is dropped (a file without it is read too, as the
extension does) and the tensors must then be exactly the network's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from latentstudio.control import preprocess_ops as ops
from latentstudio.control.preprocessor_types import Preprocessor, Settings
from latentstudio.control.weights import load_network, uninitialised

FILE = "normal_bae/scannet.pt"  # under the annotator downloads folder
PREFIX = "module."  # DataParallel's, on every key of the released file
MEAN = (0.485, 0.456, 0.406)  # ImageNet's, as torchvision's Normalize applies them
STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-3  # geffnet's BN_EPS_TF_DEFAULT, which the tf_ variants set (momentum stays PyTorch's)
STEM = 48  # 32 × 1.6
HEAD = 2048  # 1280 × 1.6
# (separable, repeats, kernel, first stride, expansion, channels) per stage: B0's (1, 2, 2, 3, 3, 4, 1)
# repeats × 2.2 rounded up; channels (16, 24, 40, 80, 112, 192, 320) × 1.6 rounded to 8
STAGES = (
    (True, 3, 3, 1, 1, 24),
    (False, 5, 3, 2, 6, 40),
    (False, 5, 5, 2, 6, 64),
    (False, 7, 3, 2, 6, 128),
    (False, 7, 5, 1, 6, 176),
    (False, 9, 5, 2, 6, 304),
    (False, 3, 3, 1, 6, 512),
)
TAPS = (0, 1, 2, 4, 7)  # the encoder outputs the decoder reads: stages 1, 2, 3, 5 and the head
# the up-steps: (coarser channels + skip channels, output channels)
UPS = ((HEAD + 176, 1024), (1024 + 64, 512), (512 + 40, 256), (256 + 24, 128))
MIN_KAPPA = 0.01  # added to elu(κ) + 1: the concentration stays positive


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "same" padding of one side of length ``size``: (before, after), the odd one after."""
    total = max((-(size // -stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free (unless asked) convolution with TensorFlow "same" padding: static for stride 1, computed
    from the input's size for stride 2. ``[N, C, H, W]`` → ``[N, C', ⌈H/s⌉, ⌈W/s⌉]``."""

    def __init__(
        self, channels_in: int, channels_out: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        padding = (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(channels_in, channels_out, kernel, stride, padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        kernel, stride = self.kernel_size[0], self.stride[0]
        top, bottom = same_padding(x.shape[2], kernel, stride)
        left, right = same_padding(x.shape[3], kernel, stride)
        x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class _SqueezeExcite(nn.Module):
    """Channel gating: ``x · sigmoid(expand(swish(reduce(mean(x)))))``, ``reduced`` channels between."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate: torch.Tensor = self.conv_expand(F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * gate.sigmoid()


class _Separable(nn.Module):
    """geffnet's ``DepthwiseSeparableConv``: depthwise k×k, norm, swish, squeeze-excitation, 1×1, norm."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = SameConv2d(channels_in, channels_in, kernel, stride, groups=channels_in)
        self.bn1 = _norm(channels_in)
        self.se = _SqueezeExcite(channels_in, channels_in // 4)
        self.conv_pw = SameConv2d(channels_in, channels_out, 1)
        self.bn2 = _norm(channels_out)
        self.residual = stride == 1 and channels_in == channels_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.se(F.silu(self.bn1(self.conv_dw(x))))
        out: torch.Tensor = self.bn2(self.conv_pw(h))
        return out + x if self.residual else out


class _InvertedResidual(nn.Module):
    """geffnet's ``InvertedResidual``: 1×1 expansion, norm, swish, depthwise k×k, norm, swish,
    squeeze-excitation (to a quarter of the input channels), linear 1×1 projection, norm."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = channels_in * expansion
        self.conv_pw = SameConv2d(channels_in, hidden, 1)
        self.bn1 = _norm(hidden)
        self.conv_dw = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self.bn2 = _norm(hidden)
        self.se = _SqueezeExcite(hidden, channels_in // 4)
        self.conv_pwl = SameConv2d(hidden, channels_out, 1)
        self.bn3 = _norm(channels_out)
        self.residual = stride == 1 and channels_in == channels_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.bn1(self.conv_pw(x)))
        h = self.se(F.silu(self.bn2(self.conv_dw(h))))
        out: torch.Tensor = self.bn3(self.conv_pwl(h))
        return out + x if self.residual else out


class EfficientNetB5(nn.Module):
    """``tf_efficientnet_b5_ap`` without its pooling and classifier: ``conv_stem``, ``bn1``, ``blocks``
    (seven stages of :data:`STAGES`), ``conv_head`` and ``bn2`` (kept for the released keys; the encoder
    taps the head convolution before it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = SameConv2d(3, STEM, 3, stride=2)
        self.bn1 = _norm(STEM)
        stages: list[nn.Module] = []
        channels = STEM
        for separable, repeats, kernel, stride, expansion, width in STAGES:
            blocks: list[nn.Module] = []
            for i in range(repeats):
                step = stride if i == 0 else 1
                if separable:
                    blocks.append(_Separable(channels, width, kernel, step))
                else:
                    blocks.append(_InvertedResidual(channels, width, kernel, step, expansion))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = SameConv2d(channels, HEAD, 1)
        self.bn2 = _norm(HEAD)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[N, 3, H, W]`` → the seven stages' outputs (24, 40, 64, 128, 176, 304, 512 channels at 1/2,
        1/4, 1/8, 1/16, 1/16, 1/32, 1/32 of the size, rounded up) and the head convolution's
        ``[N, 2048, H/32, W/32]`` (before its batch norm)."""
        h = F.silu(self.bn1(self.conv_stem(x)))
        taps = []
        for stage in self.blocks:
            h = stage(h)
            taps.append(h)
        taps.append(self.conv_head(h))
        return taps


class _Encoder(nn.Module):
    """The EfficientNet-B5 under the released keys' ``original_model``."""

    def __init__(self) -> None:
        super().__init__()
        self.original_model = EfficientNetB5()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[1, 3, H, W]`` → the five :data:`TAPS` (1/2 … 1/32)."""
        features = self.original_model(x)
        return [features[i] for i in TAPS]


class _Up(nn.Module):
    """``UpSampleBN``: the coarser map resized to the skip's size (bilinear, aligned corners), concatenated
    before it, then two 3×3 convolutions, each with batch norm and leaky ReLU (``_net``)."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self._net = nn.Sequential(
            nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.BatchNorm2d(channels_out), nn.LeakyReLU(),
            nn.Conv2d(channels_out, channels_out, 3, padding=1), nn.BatchNorm2d(channels_out), nn.LeakyReLU(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, size=[skip.shape[2], skip.shape[3]], mode="bilinear", align_corners=True)
        out: torch.Tensor = self._net(torch.cat([up, skip], dim=1))
        return out


def _pixel_mlp(channels_in: int) -> nn.Sequential:
    """Four 1×1 convolutions over ``[N, C, pixels]`` (ReLU between) to the four output channels."""
    return nn.Sequential(
        nn.Conv1d(channels_in, 128, 1), nn.ReLU(),
        nn.Conv1d(128, 128, 1), nn.ReLU(),
        nn.Conv1d(128, 128, 1), nn.ReLU(),
        nn.Conv1d(128, 4, 1),
    )  # fmt: skip


def normalised(raw: torch.Tensor) -> torch.Tensor:
    """``norm_normalize``: ``[N, 4, …]`` → the direction over its length (+ 1e-10) and ``elu(κ) + 1.01``."""
    x, y, z, kappa = torch.split(raw, 1, dim=1)
    length = torch.sqrt(x**2.0 + y**2.0 + z**2.0) + 1e-10
    return torch.cat([x / length, y / length, z / length, F.elu(kappa) + 1.0 + MIN_KAPPA], dim=1)


def _refined(mlp: nn.Module, features: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """One refinement at twice the size, every pixel (the decoder's test mode): ``features`` ``[N, C, h,
    w]`` and the previous output ``coarse`` ``[N, 4, h', w']`` both doubled (bilinear, aligned corners),
    concatenated, through ``mlp`` → ``[N, 4, 2h, 2w]`` normalised."""
    doubled = F.interpolate(features, scale_factor=2, mode="bilinear", align_corners=True)
    initial = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=True)
    both = torch.cat([doubled, initial], dim=1)
    n, c, h, w = both.shape
    return normalised(mlp(both.view(n, c, -1))).view(n, 4, h, w)


class _Decoder(nn.Module):
    """The decoder (``args.architecture == "BN"``): taps → the outputs at 1/8, 1/4, 1/2 and 1/1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2 = nn.Conv2d(HEAD, HEAD, 1)
        self.up1, self.up2, self.up3, self.up4 = (_Up(channels_in, out) for channels_in, out in UPS)
        self.out_conv_res8 = nn.Conv2d(512, 4, 3, padding=1)
        self.out_conv_res4 = _pixel_mlp(512 + 4)
        self.out_conv_res2 = _pixel_mlp(256 + 4)
        self.out_conv_res1 = _pixel_mlp(128 + 4)

    def forward(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The five taps → ``[N, 4, H/8, W/8]``, ``[N, 4, H/4, W/4]``, ``[N, 4, H/2, W/2]``, ``[N, 4, H, W]``
        (``H``, ``W`` multiples of 32)."""
        half, quarter, eighth, sixteenth, deepest = taps
        d1 = self.up1(self.conv2(deepest), sixteenth)
        d2 = self.up2(d1, eighth)
        d3 = self.up3(d2, quarter)
        d4 = self.up4(d3, half)
        res8 = normalised(self.out_conv_res8(d2))
        res4 = _refined(self.out_conv_res4, d2, res8)
        res2 = _refined(self.out_conv_res2, d3, res4)
        res1 = _refined(self.out_conv_res1, d4, res2)
        return [res8, res4, res2, res1]


class NormalBaeNetwork(nn.Module):
    """The extension's ``NNET``: ``[1, 3, H, W]`` normalised (``H``, ``W`` multiples of 32) → the
    full-size output ``[1, 4, H, W]`` (unit direction x, y, z; concentration)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()
        self.decoder = _Decoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder(self.encoder(x))[-1]
        return out


def _empty() -> NormalBaeNetwork:
    return uninitialised(NormalBaeNetwork)  # the file replaces every tensor (weights.load_network checks it)


def network(path: Path) -> NormalBaeNetwork:
    """The network with ``path``'s weights (:func:`weights.load_network`)."""
    return load_network(path, _empty, "Bae et al. surface-normal", prefix=PREFIX)


def normals(image: np.ndarray, model: nn.Module) -> torch.Tensor:
    """``[H, W, 3]`` uint8 (``H``, ``W`` multiples of 32) → the unit directions ``[3, H, W]`` float32. The
    input is ``/ 255``, then ``(x − mean) / std`` per channel, channels-last in memory as the extension's (a
    rearranged numpy array) is: the convolutions round differently in the other layout."""
    x = torch.from_numpy(image).float() / 255.0
    x = x.permute(2, 0, 1)[None]  # strides [3HW, 1, 3W, 3]: channels-last
    mean = torch.tensor(MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(-1, 1, 1)
    with torch.no_grad():
        out: torch.Tensor = model((x - mean) / std)
    return out[0, :3]


def normal_map(image: np.ndarray, path: Path) -> np.ndarray:
    """``NormalBaeDetector.__call__``: ``[H, W, 3]`` uint8 (``H``, ``W`` multiples of 32) → ``[H, W, 3]``
    uint8, ``(n + 1) / 2`` clipped to [0, 1] × 255 (x, y, z as red, green, blue)."""
    n = normals(image, network(path))
    colours = ((n + 1) * 0.5).clip(0, 1).permute(1, 2, 0).numpy()
    out: np.ndarray = (colours * 255.0).clip(0, 255).astype(np.uint8)
    return out


def normal_bae(image: np.ndarray, resolution: int, path: Path) -> np.ndarray:
    """The normal_bae preprocessor: the normal map at the preprocessor resolution (padded to 64 for the
    network, the padding cut off), ``[h, w, 3]``."""
    padded, height, width = ops.resize_with_pad(image, resolution)
    return np.ascontiguousarray(normal_map(padded, path)[:height, :width])


def run(image: np.ndarray, s: Settings) -> np.ndarray:
    """The registry's call: ``[H, W, 3]`` uint8 → ``[h, w, 3]`` uint8 (``s.weights[0]``: the located file;
    no thresholds)."""
    return normal_bae(image, s.resolution, s.weights[0])


ENTRIES: tuple[Preprocessor, ...] = (
    Preprocessor("normal_bae", run, priority=100, tags=("NormalMap",), files=(FILE,)),
)
