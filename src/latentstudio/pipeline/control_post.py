"""What sd-webui-controlnet does to the decoded pictures of a guided job (``scripts/controlnet.py``, the
``post_processors`` it hands to ``postprocess_batch_list``): a ``recolor_luminance`` unit puts its map in
the picture's L channel (OpenCV's 8-bit Lab), a ``recolor_intensity`` unit in its V channel (8-bit HSV),
so the colours the model drew keep the lightness of the input. This runs on the decoded pictures before
A1111's colour correction and inpainting overlay, each unit in order on the previous one's result, with
the unit's map fitted to the final picture's size (the hires pass's with the hires fix).

One deliberate difference: a unit of weight 0 changes nothing here (the extension recolours even then), so
that a weight-0 unit leaves the picture bit-identical, as every other unit does.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from latentstudio.control import hint, preprocessors
from latentstudio.pipeline.control import Detected
from latentstudio.pipeline.images import to_pil

_CHANNEL = {  # module → (to the colour space, back, the channel the map replaces)
    "recolor_luminance": (cv2.COLOR_RGB2LAB, cv2.COLOR_LAB2RGB, 0),
    "recolor_intensity": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2),
}


def finish(decoded: torch.Tensor, detected: Sequence[Detected]) -> list[Image.Image]:
    """Decoded pictures ``[B, 3, H, W]`` in [-1, 1] → RGB PIL images, recoloured by the recolor units among
    ``detected`` (as :func:`~latentstudio.pipeline.images.to_pil` without one)."""
    units = [
        (d, _CHANNEL[name])
        for d in detected
        if (name := preprocessors.find(d.unit.module).name) in _CHANNEL and d.unit.weight > 0
    ]
    if not units:
        return to_pil(decoded)
    height, width = decoded.shape[-2:]
    feeds = [(hint.fit(d.detected, d.resize, height, width)[:, :, 0], spaces) for d, spaces in units]
    unit = ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for picture in unit:
        rgb = (picture * 255.0).clip(0, 255).astype(np.uint8)  # truncated, as the extension's
        for feed, (forward, back, channel) in feeds:
            converted = cv2.cvtColor(rgb, forward)
            converted[:, :, channel] = feed
            rgb = cv2.cvtColor(converted, back)
        out.append(Image.fromarray(rgb))
    return out
