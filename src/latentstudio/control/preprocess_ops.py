"""The image operations behind :mod:`latentstudio.control.preprocessors`, each as sd-webui-controlnet
computes it (``scripts/preprocessor/model_free_preprocessors.py``, ``scripts/preprocessor/legacy/
processor.py``, ``annotator/util.py``, ``annotator/color``, ``annotator/shuffle``).

Images are ``[H, W, 3]`` uint8 RGB arrays in and out. Most operations first bring the image to the
preprocessor resolution with :func:`resize_with_pad`: the short side scaled to ``resolution`` (cubic when
enlarging, area when shrinking), then edge-padded on the right and bottom to multiples of 64. Some compute
on the padded image and crop the padding off afterwards (canny, scribble_xdog, threshold, lineart_standard:
the padding changes what they see near the right and bottom edges); others crop first (blur_gaussian,
shuffle). Each function says which, as the extension does it.
"""

from __future__ import annotations

import numpy as np

SHUFFLE_RESOLUTION = 512  # the extension fixes shuffle's resolution (its slider is hidden, value 512)
_NOISE_CELL = 256  # ContentShuffleDetector's ``f``: one random value per 256-pixel cell, cubic between


def hwc3(image: np.ndarray) -> np.ndarray:
    """``annotator/util.py`` ``HWC3``: uint8 ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` to
    ``[H, W, 3]``; grey is repeated, RGBA is composited over white (float32, then truncated)."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    x = image[:, :, None] if image.ndim == 2 else image
    if x.ndim != 3 or x.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] image, got {image.shape}")
    if x.shape[2] == 3:
        return x
    if x.shape[2] == 1:
        return np.concatenate([x, x, x], axis=2)
    color = x[:, :, 0:3].astype(np.float32)
    alpha = x[:, :, 3:4].astype(np.float32) / 255.0
    composited: np.ndarray = (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    return composited


def with_mask(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """An inpaint unit's input, ``[H, W, 4]`` uint8 (the extension's ``combine_image_and_mask``): ``image``
    through :func:`hwc3`, then the first channel of ``mask`` (through :func:`hwc3` too; zeros without
    one); a float32 picture and mask (a map fitted before the preprocessor runs) are kept as they are.
    Raises ValueError when the sizes differ."""
    if image.dtype == np.float32 and mask is not None and mask.dtype == np.float32:  # a fitted map, kept
        return np.ascontiguousarray(np.concatenate([image[:, :, :3], mask[:, :, None]], axis=2))
    rgb = hwc3(image)
    alpha = np.zeros(rgb.shape[:2], np.uint8) if mask is None else hwc3(mask)[:, :, 0]
    if alpha.shape != rgb.shape[:2]:
        raise ValueError(
            f"the mask is {alpha.shape[1]}x{alpha.shape[0]}, the image {rgb.shape[1]}x{rgb.shape[0]}"
        )
    return np.ascontiguousarray(np.concatenate([rgb, alpha[:, :, None]], axis=2))


def show_mask(rgba: np.ndarray) -> np.ndarray:
    """What the extension shows for an inpaint map ``[H, W, 4]`` (``visualize_inpaint_mask``): the picture
    with alpha ``255 − mask // 2``, the masked part half transparent, as uint8 (a fitted float map clipped
    to [0, 255] and truncated); any other map as it is."""
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        return rgba
    out: np.ndarray = np.clip(rgba, 0, 255).astype(np.uint8)
    out[:, :, 3] = 255 - out[:, :, 3] // 2
    return out


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """``[H, W]`` to ``[H, W, 3]`` (each channel a copy), as ``cv2.COLOR_GRAY2RGB`` and ``HWC3`` do."""
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def line_maxima(x: np.ndarray) -> np.ndarray:
    """Non-maximum suppression: keep a pixel where it is the maximum along any of the four line directions
    through it (3×3 dilations), else 0; same shape and dtype."""
    import cv2

    lines = (
        np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], np.uint8),
        np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], np.uint8),
        np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.uint8),
        np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], np.uint8),
    )
    kept = np.zeros_like(x)
    for line in lines:
        np.putmask(kept, cv2.dilate(x, kernel=line) == x, x)
    return kept


def pad64(size: int) -> int:
    """How many pixels bring ``size`` up to the next multiple of 64."""
    return int(np.ceil(float(size) / 64.0) * 64 - size)


def resize_with_pad(image: np.ndarray, resolution: int) -> tuple[np.ndarray, int, int]:
    """``resize_image_with_pad``: ``(padded image, height, width)``; ``padded[:height, :width]`` is the
    image with its short side scaled to ``resolution`` (each side ``round(side × k)``, half to even),
    ``INTER_CUBIC`` when ``k > 1`` else ``INTER_AREA``; the padding repeats the last row and column."""
    import cv2

    height, width = image.shape[:2]
    k = float(resolution) / float(min(height, width))
    interpolation = cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA
    target_h = int(np.round(float(height) * k))
    target_w = int(np.round(float(width) * k))
    resized = cv2.resize(image, (target_w, target_h), interpolation=interpolation)
    padded = np.pad(resized, [[0, pad64(target_h)], [0, pad64(target_w)], [0, 0]], mode="edge")
    return np.ascontiguousarray(padded), target_h, target_w


def resized(image: np.ndarray, resolution: int) -> np.ndarray:
    """The image at the preprocessor resolution, padding cropped off."""
    padded, height, width = resize_with_pad(image, resolution)
    return np.ascontiguousarray(padded[:height, :width])


def canny(image: np.ndarray, resolution: int, low: float, high: float) -> np.ndarray:
    """``cv2.Canny`` (thresholds truncated to int) on the padded image, then cropped; white edges."""
    import cv2

    padded, height, width = resize_with_pad(image, resolution)
    edges = cv2.Canny(padded, int(low), int(high))
    return gray_to_rgb(edges[:height, :width])


def blur_gaussian(image: np.ndarray, resolution: int, sigma: float) -> np.ndarray:
    """``cv2.GaussianBlur`` with ``sigma`` (kernel size from sigma) on the resized, cropped image."""
    import cv2

    return cv2.GaussianBlur(resized(image, resolution), (0, 0), float(sigma))


def scribble_xdog(image: np.ndarray, resolution: int, threshold: float) -> np.ndarray:
    """Difference of Gaussians (sigma 5 minus sigma 0.5, float32, the minimum over channels) on the padded
    image; white where twice the darkening exceeds ``threshold``. The extension doubles in uint8, so the
    doubled value wraps modulo 256 (a darkening of 128 or more counts as ``2d − 256``); kept as it is."""
    import cv2

    padded, height, width = resize_with_pad(image, resolution)
    x = padded.astype(np.float32)
    fine = cv2.GaussianBlur(x, (0, 0), 0.5)
    coarse = cv2.GaussianBlur(x, (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    darkening = 255 - dog.astype(np.int32)
    result = np.zeros_like(padded)
    result[(2 * darkening) % 256 > threshold] = 255
    return np.ascontiguousarray(result[:height, :width])


def threshold(image: np.ndarray, resolution: int, level: float) -> np.ndarray:
    """White where the darkest channel of the padded image is above ``level``, black elsewhere; cropped."""
    padded, height, width = resize_with_pad(image, resolution)
    result = np.zeros_like(padded)
    result[np.min(padded, axis=2) > level] = 255
    return np.ascontiguousarray(result[:height, :width])


def _noise_disk(height: int, width: int, rng: np.random.RandomState) -> np.ndarray:
    """``make_noise_disk(H, W, 1, 256)``: uniform noise on a 256-pixel grid, cubic-resized, cropped to
    ``[H, W]`` and stretched to exactly [0, 1] (float64)."""
    import cv2

    cell = _NOISE_CELL
    grid = rng.uniform(low=0, high=1, size=(height // cell + 2, width // cell + 2))
    noise = cv2.resize(grid, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = noise[cell : cell + height, cell : cell + width]
    noise = noise - np.min(noise)
    return np.asarray(noise / np.max(noise))


def shuffle(image: np.ndarray, seed: int | None) -> np.ndarray:
    """``ContentShuffleDetector`` on the image at resolution 512 (cropped): each pixel is read, bilinearly,
    from ``(x, y)`` = (noise × (W − 1), noise × (H − 1)) with two smooth noise fields drawn in that order
    from numpy's legacy ``RandomState(seed)`` (the stream ``np.random.seed(seed)`` gives, which is how the
    extension seeds it); ``seed=None`` draws from fresh OS entropy, as the extension's /detect does."""
    import cv2

    img = resized(image, SHUFFLE_RESOLUTION)
    height, width = img.shape[:2]
    rng = np.random.RandomState(seed)
    x = _noise_disk(height, width, rng) * float(width - 1)
    y = _noise_disk(height, width, rng) * float(height - 1)
    flow = np.stack([x, y], axis=2).astype(np.float32)
    return cv2.remap(img, flow, None, cv2.INTER_LINEAR)


def tile_resample(image: np.ndarray, rate: float) -> np.ndarray:
    """Below a rate of 1.1 the image unchanged; else shrunk (``INTER_AREA``) to ``int(side / rate)``; no
    processor resolution."""
    import cv2

    if rate < 1.1:
        return image.copy()
    height = int(float(image.shape[0]) / float(rate))
    width = int(float(image.shape[1]) / float(rate))
    if height < 1 or width < 1:
        raise ValueError(f"a {image.shape[1]}×{image.shape[0]} image divided by {rate} has no pixels")
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def color_grid(image: np.ndarray, resolution: int) -> np.ndarray:
    """``annotator/color`` ``apply_color``: the short side resized (``INTER_AREA``, even when enlarging) to
    ``resolution``, the long side to ``int(round(long / short × resolution))``; then shrunk with
    ``INTER_CUBIC`` to ``(w // 64, h // 64)`` and enlarged back with ``INTER_NEAREST``: a grid of colours."""
    import cv2

    h, w = image.shape[:2]
    if h < w:
        new_h, new_w = resolution, round(w / h * resolution)
    else:
        new_h, new_w = round(h / w * resolution), resolution
    img = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    small = cv2.resize(img, (new_w // 64, new_h // 64), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (new_w, new_h), interpolation=cv2.INTER_NEAREST)


def lineart_standard(image: np.ndarray, resolution: int) -> np.ndarray:
    """How much darker each pixel is than its sigma-6 Gaussian surroundings (the minimum over channels,
    clipped to [0, 255], on the padded image), divided by the median of the values above 8 (at least 16;
    16 when there are none), times 127, clipped and truncated to uint8; cropped, grey to RGB."""
    import cv2

    padded, height, width = resize_with_pad(image, resolution)
    x = padded.astype(np.float32)
    blurred = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    median = float(np.median(strong)) if strong.size else 0.0
    intensity /= max(16.0, median)
    intensity *= 127
    result = intensity.clip(0, 255).astype(np.uint8)
    return gray_to_rgb(result[:height, :width])


def recolor(image: np.ndarray, gamma: float, luminance: bool) -> np.ndarray:
    """``recolor_luminance`` (``luminance``: the L of ``cv2.COLOR_BGR2LAB``) or ``recolor_intensity`` (the
    V of ``COLOR_BGR2HSV``, the largest channel) as grey, raised to ``gamma`` on [0, 1], truncated to uint8.
    The extension converts the RGB image as if it were BGR, so red and blue swap roles in the luminance;
    kept as it is. No processor resolution."""
    import cv2

    if luminance:
        channel = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)[:, :, 0]
    else:
        channel = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[:, :, 2]
    value = channel.astype(np.float32) / 255.0
    value = value**gamma
    return gray_to_rgb((value * 255.0).clip(0, 255).astype(np.uint8))
