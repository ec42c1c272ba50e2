"""What sd-webui-controlnet does to the decoded pictures of a guided job (``scripts/controlnet.py``, the
``post_processors`` it runs in ``postprocess_batch``), unit by unit in order on the previous one's result:

- ``inpaint_only``: the picture outside the unit's mask is the unit's picture again, with a soft seam:
  ``m·x + (1 − m)·picture``, where m is the mask dilated by a 7×7 square and box-blurred 7×7 (the
  extension's "ControlNet inpainting Gaussian blur sigma" option, 7);
- ``recolor_luminance`` puts its map in the picture's L channel (OpenCV's 8-bit Lab), ``recolor_intensity``
  in its V channel (8-bit HSV), so the colours the model drew keep the lightness of the input.

This runs on the decoded pictures (floats in [0, 1]) before A1111's colour correction and inpainting
overlay, with each unit's map fitted to the final picture's size (the hires pass's with the hires fix).

One deliberate difference: a unit of weight 0 changes nothing here (the extension recolours and blends
even then), so that a weight-0 unit leaves the picture bit-identical, as every other unit does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from latentstudio.control import hint, preprocessors
from latentstudio.pipeline.control import Detected
from latentstudio.pipeline.images import to_pil

INPAINT_BLUR = 7  # the extension's control_net_inpaint_blur_sigma default
_CHANNEL = {  # module → (to the colour space, back, the channel the map replaces)
    "recolor_luminance": (cv2.COLOR_RGB2LAB, cv2.COLOR_LAB2RGB, 0),
    "recolor_intensity": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2),
}
Step = Callable[[np.ndarray], np.ndarray]  # one picture [H, W, 3] float32 in [0, 1] → the same


def finish(decoded: torch.Tensor, detected: Sequence[Detected]) -> list[Image.Image]:
    """Decoded pictures ``[B, 3, H, W]`` in [-1, 1] → RGB PIL images, through the post-processing of the
    units among ``detected`` (as :func:`~latentstudio.pipeline.images.to_pil` without any)."""
    height, width = decoded.shape[-2:]
    steps = [step for d in detected if (step := _step(d, height, width)) is not None]
    if not steps:
        return to_pil(decoded)
    pictures = ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for decoded_picture in pictures:
        picture = decoded_picture
        for step in steps:
            picture = step(picture)
        out.append(Image.fromarray((picture * np.float32(255.0)).round().astype(np.uint8)))
    return out


def _step(d: Detected, height: int, width: int) -> Step | None:
    """The post-processing of one unit at the final picture's size; None for a unit that has none."""
    name = preprocessors.find(d.unit.module).name
    inpaint_only = "inpaint_only" in name  # +lama too, as the extension's test
    if d.unit.weight <= 0 or (not inpaint_only and name not in _CHANNEL):
        return None
    fitted = hint.fit(d.detected, d.resize, height, width)
    if inpaint_only:
        return _blend(fitted)
    forward, back, channel = _CHANNEL[name]
    feed = fitted[:, :, 0]

    def recolor(picture: np.ndarray) -> np.ndarray:
        rgb = (picture * np.float32(255.0)).clip(0, 255).astype(np.uint8)  # truncated, as the extension's
        converted = cv2.cvtColor(rgb, forward)
        converted[:, :, channel] = feed
        back_rgb: np.ndarray = cv2.cvtColor(converted, back)
        return (back_rgb.astype(np.float32) / np.float32(255.0)).clip(0, 1)

    return recolor


def _blend(fitted: np.ndarray) -> Step:
    """``inpaint_only``'s seam blend from the unit's map at the picture's size, ``[H, W, 4]`` (0–255)."""
    raw = fitted[:, :, :3].astype(np.float32) / np.float32(255.0)
    kernel = (INPAINT_BLUR, INPAINT_BLUR)
    dilated = cv2.dilate(fitted[:, :, 3].astype(np.float32) / np.float32(255.0), np.ones(kernel, np.uint8))
    mask = cv2.blur(dilated, kernel)[:, :, None]

    def blend(picture: np.ndarray) -> np.ndarray:
        blended: np.ndarray = (mask * picture.clip(0, 1) + (1 - mask) * raw).clip(0, 1)
        return blended

    return blend
