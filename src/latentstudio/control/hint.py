"""A unit's control image, from the request's picture to the ``[1, 3, H, W]`` hint the network sees, as
sd-webui-controlnet computes it (``scripts/controlnet.py``: ``choose_input_image``, ``get_control``,
``detectmap_proc`` and its ``high_quality_resize``; ``internal_controlnet/external_code.py``:
``pixel_perfect_resolution``; ``scripts/lvminthin.py``: edge thinning).

The detected map is fitted to the pass's size by the unit's resize mode: Just Resize stretches it, Crop and
Resize scales it to cover and crops the centre, Resize and Fill scales it to fit and pads with the median
colour of its border. Resizing is "high quality" as there: binary maps stay binary (Otsu), one-pixel edge
maps stay one pixel wide (non-maximum suppression and thinning), maps of few colours use nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentstudio.control import preprocessors
from latentstudio.control.preprocess_ops import hwc3, line_maxima
from latentstudio.control.units import ControlResize, ControlUnit


def array(image: Image.Image) -> np.ndarray:
    """A picture as uint8 ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]`` (other modes go through RGBA)."""
    return np.asarray(image if image.mode in ("L", "RGB", "RGBA") else image.convert("RGBA"))


def input_image(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The picture a unit's preprocessor gets, ``[H, W, 3]`` uint8: ``image`` (RGBA composited over
    white, as the extension's ``HWC3``), unless ``mask``
    (``[H, W, C]`` uint8, same size; its first channel is the alpha) is neither all ≤ 5 nor all ≥ 250 —
    then the mask itself (the extension's canvas-scribble input). Raises ValueError on a size mismatch."""
    rgb = hwc3(image)
    if mask is None:
        return rgb
    alpha = hwc3(mask)[:, :, 0]
    if alpha.shape != rgb.shape[:2]:
        raise ValueError(
            f"the mask is {alpha.shape[1]}x{alpha.shape[0]}, the image {rgb.shape[1]}x{rgb.shape[0]}"
        )
    if (alpha <= 5).all() or (alpha >= 250).all():
        return rgb
    return hwc3(alpha)


def pixel_perfect_resolution(image: np.ndarray, height: int, width: int, mode: ControlResize) -> int:
    """The preprocessor resolution that makes the detected map land 1:1 on the picture: the input's short
    side times the scale its resize mode applies (the smaller factor for Resize and Fill, else the
    larger), rounded half to even."""
    raw_h, raw_w = image.shape[:2]
    k0, k1 = float(height) / float(raw_h), float(width) / float(raw_w)
    k = min(k0, k1) if mode is ControlResize.RESIZE_AND_FILL else max(k0, k1)
    return int(np.round(k * float(min(raw_h, raw_w))))


def detect_map(
    unit: ControlUnit,
    picture: np.ndarray,
    resize: ControlResize,
    size: tuple[int, int],
    seed: int | None = None,
    *,
    roots: Sequence[Path] = (),
) -> np.ndarray:
    """The unit's preprocessor on ``picture`` (``[H, W, 3]`` uint8, fitted later by ``resize``; an inpaint
    unit's ``[H, W, 4]``, its mask last), at the pixel-perfect resolution for a picture of ``size``
    ``(height, width)`` when the unit asks for it: ``[H', W', 3]`` uint8 (an inpaint unit's ``[H, W, 4]``).
    ``seed``: shuffle's numpy seed (:func:`preprocessors.numpy_seed`). The same call for a generation and
    for the UI's preview of the detected map. ``roots``: where annotator files are."""
    res = unit.processor_res
    if unit.pixel_perfect:
        res = pixel_perfect_resolution(picture, size[0], size[1], resize)
    mask = picture[:, :, 3] if picture.ndim == 3 and picture.shape[2] == 4 else None
    return preprocessors.detect(
        unit.module, picture[:, :, :3], res, unit.threshold_a, unit.threshold_b, seed, roots, mask=mask
    )


def fit(detected: np.ndarray, mode: ControlResize, height: int, width: int) -> np.ndarray:
    """The detected map (``[h, w]`` or ``[h, w, C]`` uint8) fitted to ``height``×``width``: ``[H, W, 3]``
    uint8. An inpaint map (``[h, w, 4]``, the mask last) gives ``[H, W, 4]`` in float32 as the extension
    keeps it (a cubic resize's overshoot and all), its mask 0 or 255 (> 127 after resizing), and Resize and
    Fill marks the filled border as masked (to be drawn)."""
    inpaint = detected.ndim == 3 and detected.shape[2] == 4
    x = detected.astype(np.float32) if inpaint else hwc3(detected)
    if mode is ControlResize.JUST_RESIZE:
        return np.ascontiguousarray(_high_quality_resize(x, width, height))
    old_h, old_w = float(x.shape[0]), float(x.shape[1])
    k0, k1 = height / old_h, width / old_w
    if mode is ControlResize.RESIZE_AND_FILL:
        k = min(k0, k1)
        borders = np.concatenate([x[0, :, :], x[-1, :, :], x[:, 0, :], x[:, -1, :]], axis=0)
        color = np.median(borders, axis=0).astype(x.dtype)
        if inpaint:
            color[3] = 255
        y = _high_quality_resize(x, int(np.round(old_w * k)), int(np.round(old_h * k)))
        out = np.tile(color[None, None], [height, width, 1])
        new_h, new_w = y.shape[:2]
        top, left = max(0, (height - new_h) // 2), max(0, (width - new_w) // 2)
        out[top : top + new_h, left : left + new_w] = y
        return np.ascontiguousarray(out)
    k = max(k0, k1)
    y = _high_quality_resize(x, int(np.round(old_w * k)), int(np.round(old_h * k)))
    new_h, new_w = y.shape[:2]
    top, left = max(0, (new_h - height) // 2), max(0, (new_w - width) // 2)
    return np.ascontiguousarray(y[top : top + height, left : left + width])


def to_tensor(control: np.ndarray) -> torch.Tensor:
    """``[H, W, C]`` uint8 (or float32 on the same scale) → ``[1, C, H, W]`` float32 in [0, 1]
    (``get_pytorch_control``)."""
    return torch.from_numpy(np.ascontiguousarray(control)).float().div(255.0).permute(2, 0, 1)[None].clone()


def _unique_colors(x: np.ndarray) -> int:
    """How many distinct pixel values ``[h, w, C]`` has (uint8 RGB packed into one integer: ``np.unique``
    over rows sorts structured views, ~100× slower on a 512² map)."""
    if x.dtype == np.uint8 and x.shape[2] == 3:
        packed = (x[:, :, 0].astype(np.uint32) << 16) | (x[:, :, 1].astype(np.uint32) << 8) | x[:, :, 2]
        return len(np.unique(packed))
    flat = x.reshape(-1, x.shape[2])
    return len(np.unique(flat, axis=0))


def _high_quality_resize(x: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[h, w, 3]`` → ``[height, width, 3]``, keeping binary and one-pixel-edge maps crisp (uint8 in, uint8
    out). An inpaint map ``[h, w, 4]`` (float32) keeps its dtype but where the map is binary; its mask is
    resized alike, then set to 255 where it is over 127, else 0."""
    mask = x[:, :, 3] if x.shape[2] == 4 else None
    y, resized_mask = _resized(x[:, :, :3], width, height, mask)
    if resized_mask is None:
        return y
    binary_mask = np.where(resized_mask > 127, np.uint8(255), np.uint8(0))
    return np.concatenate([y, binary_mask[:, :, None]], axis=2)


def _resized(
    x: np.ndarray, width: int, height: int, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_high_quality_resize` of the colours ``x``, and of ``mask`` by the same interpolation."""
    import cv2

    if x.shape[0] == height and x.shape[1] == width:
        return x, mask
    smaller = width * height < x.shape[0] * x.shape[1]
    bigger = width * height > x.shape[0] * x.shape[1]
    colors = _unique_colors(x)
    binary = one_pixel_edge = False
    if colors == 2:
        binary = bool(np.min(x) < 16 and np.max(x) > 240)
        if binary:
            opened = cv2.dilate(
                cv2.erode(x, np.ones((3, 3), np.uint8), iterations=1), np.ones((3, 3), np.uint8)
            )
            one_pixel_edge = np.where(opened < x)[0].shape[0] * 2 > np.where(x > 127)[0].shape[0]
    if 2 < colors < 200:
        interpolation = cv2.INTER_NEAREST
    elif smaller:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    y: np.ndarray = cv2.resize(x, (width, height), interpolation=interpolation)
    if mask is not None:
        mask = cv2.resize(mask, (width, height), interpolation=interpolation)
    if binary:
        gray = np.mean(y.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
        if one_pixel_edge:
            gray = line_maxima(gray)
            _, gray = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            gray = _thin(gray, prune=bigger)
        else:
            _, gray = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        y = np.stack([gray] * 3, axis=2)
    return y, mask


def _rotations(*kernels: list[list[int]]) -> list[np.ndarray]:
    """Each hit-or-miss kernel in its four rotations (all of rotation 0 first, then 90°, …)."""
    return [np.rot90(np.array(k, np.int32), k=turn) for turn in range(4) for k in kernels]


_THIN = _rotations([[-1, -1, -1], [0, 1, 0], [1, 1, 1]], [[0, -1, -1], [1, 1, -1], [0, 1, 0]])
_PRUNE = _rotations([[-1, -1, -1], [-1, 1, -1], [0, 0, -1]], [[-1, -1, -1], [-1, 1, -1], [-1, 0, 0]])


def _thin_once(x: np.ndarray, kernels: list[np.ndarray]) -> bool:
    """Remove (in place) the pixels each kernel matches, kernel after kernel; True if none was removed."""
    import cv2

    done = True
    for kernel in kernels:
        hits = np.where(cv2.morphologyEx(x, cv2.MORPH_HITMISS, kernel) > 127)
        x[hits] = 0
        done = done and hits[0].shape[0] == 0
    return done


def _thin(x: np.ndarray, *, prune: bool) -> np.ndarray:
    """Lvmin Zhang's edge thinning: up to 32 rounds of the thinning kernels, then one of pruning."""
    y = x.copy()
    for _ in range(32):
        if _thin_once(y, _THIN):
            break
    if prune:
        _thin_once(y, _PRUNE)
    return y
