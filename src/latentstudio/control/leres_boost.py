"""The boosting of depth_leres++ (sd-webui-controlnet's ``annotator/leres/leres/depthmap.py``:
``estimateboost`` with the LeReS settings, thygate's port of Miangoleh et al.'s "Boosting Monocular Depth
Estimation Models to High-Resolution via Content-Adaptive Multi-Resolution Merging", and its pix2pix merge
network, ``annotator/leres/pix2pix``), for :mod:`latentstudio.control.leres`.

The merge network (``latest_net_G.pth``): pix2pix's U-Net generator with ten levels and no normalisation,
two input channels (a low-detail and a high-detail depth, each in [-1, 1]) and one output (tanh), run at
1024×1024. Each level below the top is ``cat(lrelu(x), up(inner(down(lrelu(x)))))`` (the skip sees the
leaky ReLU, slope 0.2, because the extension's in-place one rewrites it); ``down`` a bias-free 4×4 stride-2
convolution, ``up`` a ReLU and a bias-free 4×4 stride-2 transposed convolution; the top level has biases
on its transposed convolution only and adds no skip.

A *double estimate* of a picture: LeReS at 448×448 and at a larger square size (each resized back to the
picture and then to 1024×1024, bicubic), each min–max normalised to [-1, 1], merged, ``(out + 1) / 2``
min–max normalised to [0, 1].

The boosting, for a ``H × W`` picture (LeReS' receptive field R = 448, R_max = 1600):

1. The whole-picture size: the grey picture's (``0.2989 R + 0.587 G + 0.114 B``) Sobel gradient magnitude
   (|∂y| + |∂x|) resized bilinearly to a ``min(H, W)`` square (the extension asks for area resampling but
   passes it where OpenCV takes the output array) and made binary at 40 % of its range; for sizes ``p`` = 14,
   21, … below ``min(1600, 3 max(H, W)) / 32``: the max-pooled edges (block ``floor(min(H, W) / p)``, zero
   padded) resized bilinearly to ``p × p``, binary at 0.5, dilated by a 14×14 square; the last ``p`` whose
   uncovered share stays at most 0.2 gives the size ``32 p`` (448 if none). The patch scale is the mean of
   the last pooled map dilated by 3×3. A picture under 160 pixels on its long side has no such ``p``: the
   extension fails there (an unbound variable), and so does :func:`boost`.
2. The base estimate: the double estimate at 448 and that size. Where ``max(H, W)`` is below the size, it
   is the answer, resized (bicubic) to the picture.
3. Otherwise the picture is resized (bicubic) so its long side is ``2 × size / f`` (``f`` = 4 × patch scale
   × size / 1600, clamped to [0.2, 1]); on it, 896-pixel squares every 336 pixels whose gradient density
   (the gradients below the mean non-zero gradient zeroed) reaches the whole picture's are kept, each grown
   by ``int(32 / f)`` while it stays inside and dense enough; largest first, each patch (scaled back to the
   picture's size) gets a double estimate at 448 and 896, is merged with the base estimate's patch (the
   merge output fitted linearly to that patch's values), and is blended into the updated estimate with a
   Gaussian-edged mask; the result is resized (bicubic) to the picture.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latentstudio.control.weights import load_network, uninitialised

RECEPTIVE = 448  # LeReS' receptive field: the low size of every double estimate
PATCH = 2 * RECEPTIVE  # a patch's high size, and the grid's patch size
MERGE_SIZE = 1024  # the merge network's input size
R_MAX = 1600  # the largest whole-picture size (the extension's ``whole_size_threshold``)
SPEED = 32  # the size search runs on maps this many times smaller
CONFIDENCE = 0.2  # the share of pixels allowed to have no edge within the receptive field
SCALE_LIMIT = 3  # the whole-picture size is at most this many times the picture's long side
LEVELS = 10  # the merge U-Net's downsamplings
MASK_SIZE = 3000  # the blending mask is made once at this size and resized

Estimate = Callable[[np.ndarray, int], np.ndarray]
"""``(picture [H, W, 3] uint8, square size)`` → LeReS depth ``[H, W]`` float32 at the picture's size."""
Merge = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(low, high)`` depths ``[1024, 1024]`` float32 → the merge network's ``(out + 1) / 2``, same shape."""


class _Level(nn.Module):
    """One ``UnetSkipConnectionBlock`` without normalisation (``model``: the layers in the file's order,
    identities where the extension's absent norms stand): the top level when ``channels_in`` is given, the
    innermost when ``inner`` is None."""

    def __init__(self, outer: int, width: int, inner: _Level | None, channels_in: int | None = None) -> None:
        super().__init__()
        self.top = channels_in is not None
        down = nn.Conv2d(channels_in or outer, width, 4, 2, 1, bias=False)
        up = nn.ConvTranspose2d(width if inner is None else 2 * width, outer, 4, 2, 1, bias=self.top)
        if inner is None:
            layers: list[nn.Module] = [nn.LeakyReLU(0.2), down, nn.ReLU(), up, nn.Identity()]
        elif self.top:
            layers = [down, inner, nn.ReLU(), up, nn.Tanh()]
        else:
            layers = [nn.LeakyReLU(0.2), down, nn.Identity(), inner, nn.ReLU(), up, nn.Identity()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.top:
            out: torch.Tensor = self.model(x)
            return out
        h = self.model[0](x)
        return torch.cat([h, self.model[1:](h)], 1)


class MergeNetwork(nn.Module):
    """pix2pix's ``UnetGenerator(2, 1, levels, 64)`` without normalisation: ``[1, 2, S, S]`` in [-1, 1]
    (``S`` a multiple of ``2**levels``) → ``[1, 1, S, S]`` in [-1, 1]."""

    def __init__(self, levels: int = LEVELS) -> None:
        super().__init__()
        level = _Level(512, 512, None)
        for _ in range(levels - 5):
            level = _Level(512, 512, level)
        for outer in (256, 128, 64):
            level = _Level(outer, 2 * outer, level)
        self.model = _Level(1, 64, level, channels_in=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


def _empty() -> MergeNetwork:
    return uninitialised(MergeNetwork)  # the file replaces every tensor (weights.load_network checks it)


def network(path: Path) -> MergeNetwork:
    """The merge network with ``path``'s weights (:func:`weights.load_network`)."""
    return load_network(path, _empty, "pix2pix depth merge")


def merger(model: nn.Module) -> Merge:
    """``set_input`` and ``test``: each depth min–max normalised to [-1, 1] (float32), the low one first."""

    def merge(low: np.ndarray, high: np.ndarray) -> np.ndarray:
        def signed(depth: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(depth)[None, None]
            x = (x - x.min()) / (x.max() - x.min())
            return x * 2 - 1

        with torch.no_grad():
            out: np.ndarray = ((model(torch.cat((signed(low), signed(high)), 1)) + 1) / 2)[0, 0].numpy()
        return out

    return merge


@functools.cache
def blend_mask(size: int) -> np.ndarray:
    """``generatemask((size, size))`` (the extension's is 3000, which takes seconds to blur: made once):
    ones inside a 15 % margin, blurred by a Gaussian (σ ``int(size / 16)``, kernel ``2 ceil(2σ) + 1``),
    scaled to [0, 1], float32, read-only."""
    import cv2

    sigma = int(size / 16)
    kernel = int(2 * np.ceil(2 * sigma) + 1)
    margin = int(0.15 * size)
    square = np.zeros((size, size), np.float32)
    square[margin : size - margin, margin : size - margin] = 1
    blurred = cv2.GaussianBlur(square, (kernel, kernel), sigma)
    mask: np.ndarray = ((blurred - blurred.min()) / (blurred.max() - blurred.min())).astype(np.float32)
    mask.flags.writeable = False
    return mask


def _gradient(image: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 → ``[H, W]`` float64 ``|Sobel ∂y| + |Sobel ∂x|`` of the grey picture."""
    import cv2

    grey = np.dot(image[..., :3], [0.2989, 0.5870, 0.1140])
    out: np.ndarray = np.abs(cv2.Sobel(grey, cv2.CV_64F, 0, 1, ksize=3)) + np.abs(
        cv2.Sobel(grey, cv2.CV_64F, 1, 0, ksize=3)
    )
    return out


def _max_pool(edges: np.ndarray, size: int) -> np.ndarray:
    """``resizewithpool``: the maximum over ``n × n`` blocks (``n = floor(rows / size)``), the map padded
    with zeros at the bottom and right to whole blocks."""
    n = int(np.floor(edges.shape[0] / size))
    padded = np.pad(edges, ((0, -edges.shape[0] % n), (0, -edges.shape[1] % n)))
    out: np.ndarray = padded.reshape(padded.shape[0] // n, n, padded.shape[1] // n, n).max(axis=(1, 3))
    return out


def long_enough(height: int, width: int) -> bool:
    """Whether the size search of :func:`whole_size` has a step (the extension fails where not)."""
    return int(min(R_MAX, SCALE_LIMIT * max(height, width)) / SPEED) > RECEPTIVE // SPEED


def whole_size(image: np.ndarray) -> tuple[int, float]:
    """``calculateprocessingres``: the whole-picture size (a multiple of 32, 448 to 1568) and the patch
    scale. Raises ValueError where the picture is not :func:`long_enough`."""
    import cv2

    side = int(min(image.shape[:2]))
    edges = cv2.resize(_gradient(image), (side, side))
    low, high = edges.min(), edges.max()
    middle = low + 0.4 * (high - low)
    edges[edges < middle] = 0
    edges[edges >= middle] = 1
    field = np.ones((int(RECEPTIVE / SPEED),) * 2, float)
    quarter = np.ones((int(RECEPTIVE / (4 * SPEED)),) * 2, float)
    limit = min(R_MAX, SCALE_LIMIT * max(image.shape[:2]))
    best: float = RECEPTIVE / SPEED
    pooled = None
    for size in range(int(RECEPTIVE / SPEED), int(limit / SPEED), int(RECEPTIVE / (2 * SPEED))):
        pooled = cv2.resize(_max_pool(edges, size), (size, size))
        pooled[pooled >= 0.5] = 1
        pooled[pooled < 0.5] = 0
        if (1 - cv2.dilate(pooled, field, iterations=1)).mean() > CONFIDENCE:
            break
        best = size
    if pooled is None:
        raise ValueError(f"a {image.shape[1]}x{image.shape[0]} picture is too small for the boosting")
    return int(best * SPEED), float(cv2.dilate(pooled, quarter, iterations=1).mean())


def double_estimate(image: np.ndarray, high: int, estimate: Estimate, merge: Merge) -> np.ndarray:
    """``doubleestimate`` at 448 and ``high``: ``[1024, 1024]`` float32 in [0, 1]."""
    import cv2

    size = (MERGE_SIZE, MERGE_SIZE)
    low_depth = cv2.resize(estimate(image, RECEPTIVE), size, interpolation=cv2.INTER_CUBIC)
    high_depth = cv2.resize(estimate(image, high), size, interpolation=cv2.INTER_CUBIC)
    out = merge(low_depth, high_depth)
    normalised: np.ndarray = (out - out.min()) / (out.max() - out.min())
    return normalised


def _density(integral: np.ndarray, rect: list[int]) -> float:
    """The mean gradient inside ``rect`` (x, y, width, height) from the integral image."""
    x1, y1, x2, y2 = rect[0], rect[1], rect[0] + rect[2], rect[1] + rect[3]
    total = integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]
    return float(total / (rect[2] * rect[3]))


def patches(image: np.ndarray, factor: float) -> list[list[int]]:
    """``generatepatchs`` with the 896 base size: the kept and grown rectangles (x, y, width, height) on
    the resized picture, largest first (ties in grid order: columns, then rows)."""
    import cv2

    gradient = _gradient(image)
    gradient[gradient < gradient[gradient > 0].mean()] = 0
    density = gradient.sum() / len(gradient.reshape(-1))
    integral = cv2.integral(gradient)
    half = round(PATCH / 2)
    stride = round(half * 0.75)
    step = int(32 / factor)
    kept = []
    for x in range(half, image.shape[1] - half, stride):
        for y in range(half, image.shape[0] - half, stride):
            rect = [x - half, y - half, 2 * half, 2 * half]
            if _density(integral, rect) < density:
                continue
            trial = rect.copy()
            while True:
                trial = [trial[0] - int(step / 2), trial[1] - int(step / 2), trial[2] + step, trial[3] + step]
                inside = trial[0] >= 0 and trial[1] >= 0 and trial[1] + trial[3] < integral.shape[0]
                if not (inside and trial[0] + trial[2] < integral.shape[1]):
                    break
                if _density(integral, trial) < density:
                    break
                rect = trial.copy()
            kept.append(rect)
    return sorted(kept, key=lambda r: r[2], reverse=True)


def _merge_patch(base: np.ndarray, estimation: np.ndarray, merge: Merge) -> np.ndarray:
    """One patch's merge: the base estimate's patch ``[h, w]`` and the patch's double estimate (1024²) →
    the merged patch ``[h, w]`` float64 in the base's values (a linear fit)."""
    import cv2

    base_square = cv2.resize(base, (MERGE_SIZE, MERGE_SIZE), interpolation=cv2.INTER_CUBIC)
    mapped = merge(base_square, estimation)
    fit = np.polyfit(mapped.reshape(-1), base_square.reshape(-1), deg=1)
    merged = np.polyval(fit, mapped.reshape(-1)).reshape(mapped.shape)
    out: np.ndarray = cv2.resize(merged, (base.shape[1], base.shape[0]), interpolation=cv2.INTER_CUBIC)
    return out


def boost(image: np.ndarray, estimate: Estimate, merge: Merge) -> np.ndarray:
    """``estimateboost`` for LeReS with ``max_res`` the picture's long side: ``[H, W, 3]`` uint8 →
    ``[H, W]`` depth (float32). Raises ValueError where the picture is not :func:`long_enough`."""
    import cv2

    height, width = image.shape[:2]
    size, patch_scale = whole_size(image)
    whole = double_estimate(image, size, estimate, merge)
    factor = max(min(1, 4 * patch_scale * size / R_MAX), 0.2)
    if max(height, width) < size:
        out: np.ndarray = cv2.resize(whole, (width, height), interpolation=cv2.INTER_CUBIC)
        return out
    if height > width:
        rows, columns = 2 * size, round(2 * size * width / height)
    else:
        rows, columns = round(2 * size * height / width), 2 * size
    target = cv2.resize(image, (round(columns / factor), round(rows / factor)), interpolation=cv2.INTER_CUBIC)
    scale = height / target.shape[0]
    shape = (round(target.shape[1] * scale), round(target.shape[0] * scale))
    picture = cv2.resize(target, shape, interpolation=cv2.INTER_CUBIC)
    base = cv2.resize(whole, shape, interpolation=cv2.INTER_CUBIC)
    updated = base.copy()
    for rect in patches(target, factor):
        x, y, w, h = np.round(np.array(rect) * scale).astype(int)
        base_patch = base[y : y + h, x : x + w]
        estimation = double_estimate(picture[y : y + h, x : x + w], PATCH, estimate, merge)
        merged = _merge_patch(base_patch, estimation, merge)
        mask = cv2.resize(
            blend_mask(MASK_SIZE), (merged.shape[1], merged.shape[0]), interpolation=cv2.INTER_LINEAR
        )
        region = updated[y : y + h, x : x + w]
        updated[y : y + h, x : x + w] = np.multiply(region, 1 - mask) + np.multiply(merged, mask)
    out = cv2.resize(updated, (width, height), interpolation=cv2.INTER_CUBIC)
    return out
