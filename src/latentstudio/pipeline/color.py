"""img2img colour correction as A1111's ``img2img_color_correction`` option (``modules/processing.py``
``setup_color_correction`` / ``apply_color_correction``), with the libraries A1111 uses for it.

Before sampling, the processed init image (resized, cropped, masked content filled) is converted to OpenCV's
8-bit LAB: that is the target. After decoding, each output is converted to LAB, its per-channel histograms
are matched to the target's (scikit-image), it is converted back to RGB, and that corrected image is blended
with the uncorrected output by luminosity (``blendmodes``: the corrected image's hue and saturation with the
output's luminosity). It runs before the inpainting overlay, so unmasked pixels stay the init image's.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def correction_target(image: Image.Image) -> np.ndarray:
    """A1111 ``setup_color_correction``: the processed init image in 8-bit LAB, ``[H, W, 3]`` uint8."""
    import cv2

    target: np.ndarray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2LAB)
    return target


def apply_color_correction(target: np.ndarray, image: Image.Image) -> Image.Image:
    """A1111 ``apply_color_correction``: ``image``'s LAB histograms matched to ``target``'s, back to RGB,
    then ``blendLayers(corrected, image, LUMINOSITY)`` (background: corrected; foreground: the output)."""
    import cv2
    from blendmodes.blend import BlendType, blendLayers
    from skimage import exposure

    original = image.convert("RGB")
    lab = cv2.cvtColor(np.asarray(original), cv2.COLOR_RGB2LAB)
    matched = exposure.match_histograms(lab, target, channel_axis=2)  # uint8 in, uint8 out (truncated)
    corrected = Image.fromarray(cv2.cvtColor(matched, cv2.COLOR_LAB2RGB).astype("uint8"))
    blended: Image.Image = blendLayers(corrected, original, BlendType.LUMINOSITY)
    return blended.convert("RGB")
