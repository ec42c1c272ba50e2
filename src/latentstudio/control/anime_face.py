"""The ``anime_face_segment`` annotator (shown as seg_anime_face) that needs the user's
``anime_face_segment/UNet.pth``, computed as sd-webui-controlnet does (``annotator/anime_face_segment``:
siyeong0's Anime-Face-Segmentation U-Net; ``scripts/preprocessor/legacy/processor.py``:
``anime_face_segment``).

The network: the picture in [0, 1] (no mean/std normalisation) through torchvision's MobileNetV2
``features[0:17]`` as a five-stage encoder (16, 24, 32, 96 and 160 channels at 1/2 … 1/32), then a decoder
that, per stage, doubles the size (nearest), applies a 3×3 convolution, instance norm (no affine) and leaky
ReLU (0.1), resizes to the skip feature's size (bilinear, aligned corners) and concatenates the skip; a last
doubling and 3×3 convolution to seven classes and a softmax over them. Dropout only trains and is left out.

The preprocessor: the image at the preprocessor resolution, edge-padded to multiples of 64; that padded
picture with its short side brought to 512 by PIL bicubic (the long side ``int(512 × long / short)``, as
torchvision's ``Resize(512)``), the class of largest probability per pixel painted with :data:`PALETTE`
(background yellow, hair blue, eye red, mouth white, face green, skin cyan, clothes magenta), and
``[:height, :width]`` of the resolution kept. As in the extension, that crop is taken from the 512 map: it
is the picture where the padded short side is 512 (resolutions 449 to 512); at lower resolutions it is only
the top-left part of it (enlarged); at higher ones the whole 512 map, padding included, smaller than the
resolution asks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from latentstudio.control import preprocess_ops as ops
from latentstudio.control.preprocessor_types import Preprocessor, Settings
from latentstudio.control.weights import load_network

FILE = "anime_face_segment/UNet.pth"  # under the annotator downloads folder
SHORT_SIDE = 512  # the network's input: the padded picture's short side scaled to this
# the class colours (RGB): background, hair, eye, mouth, face, skin, clothes
PALETTE = np.array(
    [(255, 255, 0), (0, 0, 255), (255, 0, 0), (255, 255, 255), (0, 255, 0), (0, 255, 255), (255, 0, 255)],
    np.uint8,
)
# MobileNetV2 ``features`` slices that make the encoder stages ``en_block0`` … ``en_block4``
ENCODER = ((0, 2), (2, 4), (4, 7), (7, 14), (14, 17))
# decoder stages ``de_block4`` … ``de_block1``: (input channels, output channels)
DECODER = ((160, 96), (96 * 2, 32), (32 * 2, 24), (24 * 2, 16))
_PREFIX = "module."  # a checkpoint saved from DataParallel has its keys under this


def _decoder_stage(channels_in: int, channels_out: int) -> nn.Sequential:
    """Nearest 2× upsampling, 3×3 convolution (key ``1``), instance norm, leaky ReLU 0.1."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(channels_in, channels_out, 3, padding=1),
        nn.InstanceNorm2d(channels_out),
        nn.LeakyReLU(0.1),
    )


class AnimeFaceNetwork(nn.Module):
    """The extension's ``UNet``: ``[1, 3, H, W]`` in [0, 1] → class probabilities ``[1, 7, H', W']`` with
    ``H' = 2·⌈H/2⌉`` (likewise ``W'``)."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        features = torchvision.models.mobilenet_v2(weights=None).features  # the file brings the weights
        for i, (start, stop) in enumerate(ENCODER):
            self.add_module(f"en_block{i}", nn.Sequential(*features[start:stop]))
        for i, (channels_in, channels_out) in zip((4, 3, 2, 1), DECODER, strict=True):
            self.add_module(f"de_block{i}", _decoder_stage(channels_in, channels_out))
        self.de_block0 = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(16 * 2, len(PALETTE), 3, padding=1),
            nn.Softmax2d(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i in range(len(ENCODER)):
            x = getattr(self, f"en_block{i}")(x)
            skips.append(x)
        h = skips.pop()
        for i in (4, 3, 2, 1):
            skip = skips.pop()
            h = getattr(self, f"de_block{i}")(h)
            h = F.interpolate(h, size=skip.shape[2:], mode="bilinear", align_corners=True)
            h = torch.cat((h, skip), dim=1)
        out: torch.Tensor = self.de_block0(h)
        return out


def network(path: Path) -> AnimeFaceNetwork:
    """The network with ``path``'s weights (:func:`weights.load_network`; keys may carry ``module.``)."""
    return load_network(path, AnimeFaceNetwork, "anime face segmentation U-Net", prefix=_PREFIX)


def network_input(image: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 → ``[1, 3, h, w]`` float32 in [0, 1] (contiguous): the short side brought to
    :data:`SHORT_SIDE` with PIL's bicubic filter, the long side ``int(SHORT_SIDE × long / short)``."""
    from PIL import Image

    height, width = image.shape[:2]
    short, long = min(height, width), max(height, width)
    scaled = (SHORT_SIDE, int(SHORT_SIDE * long / short))
    size = scaled if height <= width else scaled[::-1]  # (height, width)
    picture = Image.fromarray(np.ascontiguousarray(image))
    if size != (height, width):
        picture = picture.resize(size[::-1], Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(picture, np.uint8).copy())
    return pixels.permute(2, 0, 1).contiguous().float().div(255.0)[None]


def classes(image: np.ndarray, path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 → ``[H', W']`` int64 class indices at :func:`network_input`'s size (rounded up
    to even sides); ties go to the lower class."""
    with torch.no_grad():
        probabilities = network(path)(network_input(image))[0].numpy()
    out: np.ndarray = np.argmax(probabilities.transpose(1, 2, 0), axis=2)
    return out


def segment(image: np.ndarray, path: Path) -> np.ndarray:
    """``AnimeFaceSegment.__call__``: ``[H, W, 3]`` uint8 → the coloured class map ``[H', W', 3]`` uint8."""
    colours: np.ndarray = PALETTE[classes(image, path)]
    return colours


def anime_face_segment(image: np.ndarray, resolution: int, path: Path) -> np.ndarray:
    """The preprocessor: the class map of the padded image at the resolution, ``[:height, :width]`` of it
    (see the module's note: the whole picture only at resolutions 449 to 512), ``[h, w, 3]`` uint8."""
    padded, height, width = ops.resize_with_pad(image, resolution)
    return np.ascontiguousarray(segment(padded, path)[:height, :width])


def run(image: np.ndarray, s: Settings) -> np.ndarray:
    """The registry's call: ``[H, W, 3]`` uint8 → ``[h, w, 3]`` uint8 (``s.weights[0]``: the located file)."""
    return anime_face_segment(image, s.resolution, s.weights[0])


ENTRIES: tuple[Preprocessor, ...] = (
    Preprocessor(
        "anime_face_segment", run, aliases=("seg_anime_face",), tags=("Segmentation",), files=(FILE,)
    ),
)
