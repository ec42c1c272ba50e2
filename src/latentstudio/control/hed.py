"""The soft-edge annotators that need lllyasviel's ``ControlNetHED.pth`` (softedge_hed, softedge_hedsafe,
scribble_hed), computed as sd-webui-controlnet does (``annotator/hed``: the Apache-2.0 "ControlNetHED"
network, an RGB-input HED; ``scripts/preprocessor/legacy/processor.py``: ``hed``, ``hed_safe``,
``scribble_hed``; ``annotator/util.py``: ``safe_step``, ``nms``).

The network: the picture in 0–255 minus a learnt per-channel ``norm``, five VGG-like blocks (3×3
convolutions with ReLU; 2, 2, 3, 3, 3 of them; 64, 128, 256, 512, 512 channels; a 2×2 max-pool before
blocks 2–5), each with a 1×1 projection to one channel. The five projections are resized bilinearly to the
picture's size, averaged, and squashed by a sigmoid into the edge map. The weights load from the file the
user placed, through the weights-only loader (nothing downloads), once per file version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.control import preprocess_ops as ops
from latentstudio.control.weights import load_network

FILE = "hed/ControlNetHED.pth"  # under the annotator downloads folder
LAYERS = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))  # in, out, convolutions


class _Block(torch.nn.Module):
    """``DoubleConvBlock``: ``count`` 3×3 convolutions with ReLU, and a 1×1 projection to one channel."""

    def __init__(self, channels_in: int, channels_out: int, count: int) -> None:
        super().__init__()
        self.convs = torch.nn.Sequential(
            *(torch.nn.Conv2d(channels_in if i == 0 else channels_out, channels_out, 3, padding=1)
              for i in range(count))
        )  # fmt: skip
        self.projection = torch.nn.Conv2d(channels_out, 1, 1)

    def forward(self, x: torch.Tensor, pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.max_pool2d(x, 2, 2) if pool else x
        for conv in self.convs:
            h = F.relu(conv(h))
        return h, self.projection(h)


class HEDNetwork(torch.nn.Module):
    """``ControlNetHED_Apache2``: ``[1, 3, H, W]`` RGB in 0–255 → five edge logits ``[1, 1, H/2^k, W/2^k]``
    (k = 0…4)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.Parameter(torch.zeros(1, 3, 1, 1))
        for i, (channels_in, channels_out, count) in enumerate(LAYERS, start=1):
            self.add_module(f"block{i}", _Block(channels_in, channels_out, count))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = x - self.norm
        out = []
        for i in range(1, len(LAYERS) + 1):
            block: _Block = getattr(self, f"block{i}")
            h, projection = block(h, pool=i > 1)
            out.append(projection)
        return out


def network(path: Path) -> HEDNetwork:
    """The network with ``path``'s weights (:func:`weights.load_network`)."""
    return load_network(path, HEDNetwork, "ControlNetHED")


def edges(image: np.ndarray, path: Path, *, safe: bool) -> np.ndarray:
    """``apply_hed``: ``[H, W, 3]`` uint8 → ``[H, W]`` uint8 soft edges (``safe``: quantised to 3 levels)."""
    return fused_edges(network(path), image, 2 if safe else None)


def fused_edges(
    net: Callable[[torch.Tensor], Sequence[torch.Tensor]], image: np.ndarray, steps: int | None
) -> np.ndarray:
    """The HED-style fusion (HED's and TEED's detectors): ``net``'s side outputs ``[1, 1, h_k, w_k]`` on
    ``image`` ``[H, W, 3]`` uint8 (0–255 as given), each resized bilinearly (OpenCV) to ``H × W``,
    averaged, sigmoid, floored to ``steps`` + 1 levels unless None (:func:`safe_step`), × 255 → ``[H, W]``
    uint8."""
    import cv2

    height, width = image.shape[:2]
    with torch.no_grad():
        x = torch.from_numpy(image.copy()).float().permute(2, 0, 1)[None]
        logits = [p[0, 0].numpy().astype(np.float32) for p in net(x)]
    stacked = np.stack(
        [cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in logits], axis=2
    )
    edge: np.ndarray = 1 / (1 + np.exp(-np.mean(stacked, axis=2).astype(np.float64)))
    if steps is not None:
        edge = safe_step(edge, steps)
    out: np.ndarray = (edge * 255.0).clip(0, 255).astype(np.uint8)
    return out


def safe_step(x: np.ndarray, step: int = 2) -> np.ndarray:
    """``safe_step``: ``x`` in [0, 1] floored to ``step`` + 1 levels."""
    y = x.astype(np.float32) * float(step + 1)
    out: np.ndarray = y.astype(np.int32).astype(np.float32) / float(step)
    return out


def nms(x: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """``annotator.util.nms``: blur, keep the maxima along the four line directions, threshold → 0/255."""
    import cv2

    kept = ops.line_maxima(cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma))
    out = np.zeros_like(kept, dtype=np.uint8)
    out[kept > threshold] = 255
    return out


def softedge(image: np.ndarray, resolution: int, path: Path, *, safe: bool = False) -> np.ndarray:
    """softedge_hed / softedge_hedsafe: at the preprocessor resolution (padded to 64), ``[h, w, 3]``."""
    padded, height, width = ops.resize_with_pad(image, resolution)
    return ops.gray_to_rgb(edges(padded, path, safe=safe)[:height, :width])


def scribble(image: np.ndarray, resolution: int, path: Path) -> np.ndarray:
    """scribble_hed: the soft edges thinned (NMS at 127, σ 3), blurred (σ 3) and thresholded above 4."""
    import cv2

    padded, height, width = ops.resize_with_pad(image, resolution)
    result = nms(edges(padded, path, safe=False)[:height, :width], 127, 3.0)
    result = cv2.GaussianBlur(result, (0, 0), 3.0)
    result[result > 4] = 255
    result[result < 255] = 0
    return ops.gray_to_rgb(result)
