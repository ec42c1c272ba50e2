"""The ``inpaint_only+lama`` preprocessor that needs lllyasviel's ``ControlNetLama.pth``, computed as
sd-webui-controlnet does (``scripts/preprocessor/lama_inpaint.py``; ``annotator/lama``: Samsung's
Apache-2.0 LaMa, its "big" FFC ResNet generator as ``config.yaml`` builds it).

The network (all convolutions bias-free unless said, reflection padding): the picture in [0, 1] with the
masked part zeroed and the 0/1 mask as a fourth channel; a 7×7 convolution to 64 channels and three
stride-2 3×3 ones to 512 (batch norm and ReLU after each); the last splits its output into 128 "local" and
384 "global" channels. Then 18 residual blocks (as many as the file has) of two fast Fourier convolutions
each: local→local, local→global and global→local 3×3 convolutions, and global→global a spectral transform
(a 1×1 convolution to 192 channels with batch norm and ReLU; the real FFT of that over the two spatial
axes, orthonormal, its real and imaginary parts interleaved as channels, a 1×1 convolution, batch norm and
ReLU there, the inverse FFT back; added to its input and taken to 384 channels by a 1×1 convolution); the
local and global sums each through batch norm and ReLU. The two halves joined again (local first), three
transposed stride-2 convolutions back to 64 channels (biased, batch norm, ReLU), a biased 7×7 convolution
to three channels and a sigmoid.

The preprocessor: the RGBA picture (mask last, 255: to fill) resized with pad to 256, all four channels
alike; the mask thresholded at one half, the colours under it zeroed, the network's output kept under the
mask, the input elsewhere, × 255 and truncated to uint8; the padding cut off, resized back (bilinear) and
blended with the original colours by the original mask's alpha. The mask is returned as the fourth channel.

The file: the extension loads it whole, non-strictly, into the generator, so its tensors are the
generator's own (``model.1.ffc.convl2l.weight`` …, nothing dropped) and anything else in it is ignored. Here
the ``model.…`` tensors must be exactly the network's (batch-norm counters may be missing); a Lightning
checkpoint (``generator.model.…`` under ``state_dict``), which the extension would load nothing from, is
refused.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latentstudio.control import preprocess_ops as ops
from latentstudio.control.preprocessor_types import Preprocessor, Settings
from latentstudio.models.files import ModelFileError, read_tensor_file

FILE = "lama/ControlNetLama.pth"  # under the annotator downloads folder
RESOLUTION = 256  # the extension always inpaints at 256 (LaMa's training size)
PREFIX = "model."  # the generator's tensors in the file; others (if any) are ignored, as the extension does
WIDTH = 64  # channels after the first convolution
DOWNSAMPLINGS = 3
BLOCKS = 18
GLOBAL_RATIO = 0.75  # the share of the residual blocks' channels that go through the Fourier path
_MAX_BLOCKS = 2 * BLOCKS  # a file claiming more residual blocks is refused before anything is built
_COUNTER = "num_batches_tracked"  # batch-norm counters: unused in inference, optional in the file


def _conv(channels_in: int, channels_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    padding = kernel // 2 if kernel == 3 else 0
    return nn.Conv2d(channels_in, channels_out, kernel, stride, padding, bias=False, padding_mode="reflect")


class _FourierUnit(nn.Module):
    """The spectral 1×1 convolution: ``[1, C, H, W]`` → ``[1, C, H, W]`` through the ``[1, 2C, H, W/2 + 1]``
    real FFT (each channel's real then imaginary part), convolution, batch norm, ReLU and the inverse."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_layer = nn.Conv2d(2 * channels, 2 * channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        spectrum = torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")
        parts = torch.stack((spectrum.real, spectrum.imag), dim=-1).permute(0, 1, 4, 2, 3).contiguous()
        y = torch.relu(self.bn(self.conv_layer(parts.view(batch, 2 * channels, *parts.shape[3:]))))
        y = y.view(batch, channels, 2, *y.shape[2:]).permute(0, 1, 3, 4, 2).contiguous()
        out: torch.Tensor = torch.fft.irfftn(
            torch.complex(y[..., 0], y[..., 1]), s=(height, width), dim=(-2, -1), norm="ortho"
        )
        return out


class _SpectralTransform(nn.Module):
    """Global → global: ``[1, C, H, W]`` → ``[1, D, H, W]`` (``conv1``: 1×1 to D/2, batch norm, ReLU; the
    Fourier unit added to that; ``conv2``: 1×1 to D)."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        half = channels_out // 2
        self.conv1 = nn.Sequential(
            nn.Conv2d(channels_in, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU()
        )
        self.fu = _FourierUnit(half)
        self.conv2 = nn.Conv2d(half, channels_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        out: torch.Tensor = self.conv2(h + self.fu(h))
        return out


Split = tuple[torch.Tensor, torch.Tensor | None]  # local and global channels (no global part: None)


class _FFC(nn.Module):
    """One fast Fourier convolution, each of the four paths present where both its ends have channels."""

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        kernel: int,
        stride: int,
        *,
        ratio_in: float,
        ratio_out: float,
    ) -> None:
        super().__init__()
        global_in, global_out = int(channels_in * ratio_in), int(channels_out * ratio_out)
        local_in, local_out = channels_in - global_in, channels_out - global_out
        if local_in and local_out:
            self.convl2l = _conv(local_in, local_out, kernel, stride)
        if local_in and global_out:
            self.convl2g = _conv(local_in, global_out, kernel, stride)
        if global_in and local_out:
            self.convg2l = _conv(global_in, local_out, kernel, stride)
        if global_in and global_out:
            self.convg2g = _SpectralTransform(global_in, global_out)
        self.split = (local_out, global_out)

    def _path(self, name: str, x: torch.Tensor | None) -> torch.Tensor | None:
        conv = getattr(self, name, None)
        return None if conv is None or x is None else conv(x)

    def forward(self, x: Split) -> Split:
        local, global_ = x
        to_local = _sum(self._path("convl2l", local), self._path("convg2l", global_))
        if to_local is None:
            raise ValueError("a fast Fourier convolution here always has local output channels")
        return to_local, _sum(self._path("convl2g", local), self._path("convg2g", global_))


def _sum(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """``a + b`` where both are there, else the one that is (or None)."""
    return b if a is None else a if b is None else a + b


class _FFCNormReLU(nn.Module):
    """A fast Fourier convolution, then batch norm and ReLU on each of its outputs."""

    def __init__(
        self, channels_in: int, channels_out: int, kernel: int, stride: int = 1, *, ratio_in: float = 0.0,
        ratio_out: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.ffc = _FFC(channels_in, channels_out, kernel, stride, ratio_in=ratio_in, ratio_out=ratio_out)
        local_out, global_out = self.ffc.split
        self.bn_l = nn.BatchNorm2d(local_out)
        if global_out:
            self.bn_g = nn.BatchNorm2d(global_out)

    def forward(self, x: Split | torch.Tensor) -> Split:
        local, global_ = self.ffc((x, None) if isinstance(x, torch.Tensor) else x)
        local = torch.relu(self.bn_l(local))
        return local, (None if global_ is None else torch.relu(self.bn_g(global_)))


class _FFCResidual(nn.Module):
    """Two ``_FFCNormReLU`` 3×3 layers, each half added back to its input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _FFCNormReLU(channels, channels, 3, ratio_in=GLOBAL_RATIO, ratio_out=GLOBAL_RATIO)
        self.conv2 = _FFCNormReLU(channels, channels, 3, ratio_in=GLOBAL_RATIO, ratio_out=GLOBAL_RATIO)

    def forward(self, x: Split) -> Split:
        local, global_ = self.conv2(self.conv1(x))
        if x[1] is None or global_ is None:
            raise ValueError("a residual block needs local and global channels")
        return x[0] + local, x[1] + global_


class _Join(nn.Module):
    """The pair back to one tensor, local channels first."""

    def forward(self, x: Split) -> torch.Tensor:
        return x[0] if x[1] is None else torch.cat([x[0], x[1]], dim=1)


class LamaNetwork(nn.Module):
    """The extension's ``FFCResNetGenerator`` with ``config.yaml``'s settings (``blocks`` residual blocks,
    18 in the released file): ``[1, 4, H, W]`` (colours in [0, 1], masked part zeroed, then the 0/1 mask;
    ``H``, ``W`` multiples of 8) → ``[1, 3, H, W]`` in [0, 1]. Its layers are ``model.0`` … ``model.N`` as
    in the released file (the parameter-free ones included, so the numbering matches)."""

    def __init__(self, blocks: int = BLOCKS) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), _FFCNormReLU(4, WIDTH, 7)]
        for i in range(DOWNSAMPLINGS):
            ratio_out = GLOBAL_RATIO if i == DOWNSAMPLINGS - 1 else 0.0
            channels = WIDTH * 2**i
            layers.append(_FFCNormReLU(channels, 2 * channels, 3, stride=2, ratio_out=ratio_out))
        layers += [_FFCResidual(WIDTH * 2**DOWNSAMPLINGS) for _ in range(blocks)]
        layers.append(_Join())
        for i in range(DOWNSAMPLINGS, 0, -1):
            channels = WIDTH * 2**i
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1, output_padding=1),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(WIDTH, 3, 7), nn.Sigmoid()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


_lock = threading.Lock()
_loaded: dict[tuple[Path, int, int], LamaNetwork] = {}  # the last file loaded


def _block_count(keys: set[str]) -> int:
    """How many residual blocks the generator keys ``model.N.conv1.…`` name."""
    return len({k.split(".")[1] for k in keys if k.split(".")[2:3] == ["conv1"]})


def network(path: Path) -> LamaNetwork:
    """The generator with ``path``'s weights (fp32, eval, no gradients), kept while the file is unchanged.
    Only the file's ``model.…`` tensors are read (the extension loads the file non-strictly); they must be
    exactly those of a :class:`LamaNetwork` with as many residual blocks as they name (batch-norm counters
    may be absent), else :class:`ModelFileError` naming the file."""
    stat = path.stat()
    key = (path, stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key in _loaded:
            return _loaded[key]
    state = {k: t for k, t in read_tensor_file(path).tensors.items() if k.startswith(PREFIX)}
    blocks = _block_count(set(state))
    if not 0 < blocks <= _MAX_BLOCKS:
        raise ModelFileError(path, f"not the LaMa generator ({blocks} residual blocks)")
    with torch.device("meta"):  # no initialisation: every tensor comes from the file
        model = LamaNetwork(blocks)
    expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    counters = {k: torch.tensor(0) for k in expected if k.endswith(_COUNTER)}
    found = {k: tuple(t.shape) for k, t in (counters | state).items()}
    if found != expected:
        wrong = sorted(set(expected) ^ set(found)) or sorted(k for k in expected if expected[k] != found[k])
        raise ModelFileError(path, f"not the LaMa generator (keys or shapes differ: {wrong[:3]})")
    tensors = {
        k: t.to(torch.float32 if t.is_floating_point() else t.dtype, copy=True) for k, t in state.items()
    }
    model.load_state_dict(counters | tensors, assign=True)
    model.eval().requires_grad_(False)
    with _lock:
        _loaded.clear()
        _loaded[key] = model
    return model


def inpaint(rgba: np.ndarray, model: LamaNetwork) -> np.ndarray:
    """``LamaInpainting.__call__``: ``[H, W, 4]`` uint8 (``H``, ``W`` multiples of 8) → ``[H, W, 3]`` uint8,
    the network's colours where the mask exceeds one half, the input's elsewhere."""
    color = torch.from_numpy(rgba[:, :, :3].astype(np.float32) / 255.0)
    mask = (torch.from_numpy(rgba[:, :, 3:].astype(np.float32) / 255.0) > 0.5).float()
    color = color * (1 - mask)
    with torch.no_grad():
        predicted = model(torch.cat([color, mask], dim=2).permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    result = (predicted * mask + color * (1 - mask)) * 255.0
    out: np.ndarray = result.numpy().clip(0, 255).astype(np.uint8)
    return out


def fill(rgba: np.ndarray, path: Path) -> np.ndarray:
    """The ``inpaint_only+lama`` preprocessor: ``[H, W, 4]`` uint8 (RGB, then the mask, 255: to fill) →
    ``[H, W, 4]`` uint8, the colours inpainted at 256 and blended in by the mask, the mask unchanged. A
    float32 map (already fitted to the picture: the extension's outpainting case) is read as it is, and
    the result is float32 then, as there (uint8 colours, the mask as given)."""
    import cv2

    if rgba.dtype not in (np.uint8, np.float32) or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"expected an [H, W, 4] picture with its mask, got {rgba.dtype} {rgba.shape}")
    height, width = rgba.shape[:2]
    padded, h, w = ops.resize_with_pad(rgba, RESOLUTION)
    predicted = np.ascontiguousarray(inpaint(padded, network(path))[:h, :w])
    predicted = cv2.resize(predicted, (width, height))
    alpha = rgba[:, :, 3:].astype(np.float32) / 255.0
    blended = predicted.astype(np.float32) * alpha + rgba[:, :, :3].astype(np.float32) * (1 - alpha)
    return np.concatenate([blended.clip(0, 255).astype(np.uint8), rgba[:, :, 3:]], axis=2)


def run(rgba: np.ndarray, s: Settings) -> np.ndarray:
    """The registry's call: ``[H, W, 4]`` uint8 in and out (``s.weights[0]``: the located file; the
    resolution is not read, LaMa always runs at 256)."""
    return fill(rgba, s.weights[0])


ENTRIES: tuple[Preprocessor, ...] = (
    Preprocessor(
        "inpaint_only+lama",
        run,
        resolution=None,
        uses_resolution=False,
        tags=("Inpaint",),
        files=(FILE,),
        accepts_mask=True,
    ),
)
