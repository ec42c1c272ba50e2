"""The built-in control model's data and its evaluation (``latentstudio eval shapes-control``).

Data: one shape (circle, square, triangle, star) anywhere — centre and size drawn continuously, not on the
built-in model's 3 × 9 grid — in the colours a caption names. Its condition is what a user's upload becomes
in the inference path: the same outline drawn in *other* colours (mostly; a user's picture has its own),
as a 64 × 64 or 512 × 512 picture, through our ``canny`` preprocessor (100 / 200) at a processor resolution
of 64 (pixel perfect) or 512 (the default) and fitted to the training size by the extension's resize
(:func:`latentstudio.control.hint.fit`). So the network learns "this outline, this place, the prompt's
colours", not the picture's colours.

Evaluation: pictures from another seed (so no evaluated outline was trained on: centres and sizes are
continuous), conditions with enough contrast for canny to see an edge, generated through the generation
pipeline with a ControlNet unit as an API client would; scored by the IoU of the generated foreground mask
(:func:`latentstudio.train.eval_shapes.foreground_mask`) with the condition's filled shape, and by the
foreground and background colours read from the picture against the prompt's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw

from latentstudio.control import hint, preprocessors
from latentstudio.control.units import ControlResize
from latentstudio.train.control_data import ControlBatch
from latentstudio.train.eval_shapes import classify, foreground_mask
from latentstudio.train.shapes import COLOURS, SHAPES, TEMPLATES, draw_shape, to_tensor

if TYPE_CHECKING:
    from latentstudio.control.networks import ControlNetwork
    from latentstudio.models.loader import Components

EVAL_SEED = 70_707
_CAPTIONS = (TEMPLATES[0], TEMPLATES[3])  # the built-in model's templates without size or position words
_MIN_RADIUS, _MAX_RADIUS = 0.12, 0.34  # half-side / picture side (the built-in model's sizes: 0.15–0.31)


@dataclass(frozen=True)
class FreeShape:
    """A shape anywhere: centre ``(cx, cy)`` and half-side ``r`` as fractions of the picture side."""

    shape: str
    cx: float
    cy: float
    r: float


def random_shape(rng: np.random.Generator) -> FreeShape:
    """A shape of uniformly drawn kind, size in [0.12, 0.34] and centre at least 1/32 inside the picture."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    r = float(rng.uniform(_MIN_RADIUS, _MAX_RADIUS))
    low, high = r + 1 / 32, 1 - r - 1 / 32
    return FreeShape(shape, float(rng.uniform(low, high)), float(rng.uniform(low, high)), r)


def _colours(rng: np.random.Generator) -> tuple[str, str]:
    names = list(COLOURS)
    fg, bg = rng.choice(len(names), size=2, replace=False)
    return names[int(fg)], names[int(bg)]


def render(shape: FreeShape, fg: str, bg: str, side: int, supersample: int = 4) -> np.ndarray:
    """The picture: uint8 ``[side, side, 3]``, anti-aliased by drawing ``supersample`` × larger."""
    big = side * supersample
    image = Image.new("RGB", (big, big), COLOURS[bg])
    draw_shape(
        ImageDraw.Draw(image), shape.shape, (shape.cx * big, shape.cy * big, shape.r * big), COLOURS[fg]
    )
    if supersample > 1:
        image = image.resize((side, side), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8).copy()


def filled_mask(shape: FreeShape, side: int) -> np.ndarray:
    """Where the shape covers more than half a pixel: bool ``[side, side]``."""
    return render(shape, "white", "black", side)[:, :, 0] > 127


def canny_map(picture: np.ndarray, processor_res: int, side: int) -> np.ndarray:
    """Our ``canny`` (100 / 200) of ``picture`` at ``processor_res``, fitted to ``side`` as the inference
    path fits a unit's map (Crop and Resize): uint8 ``[side, side, 3]``."""
    detected = preprocessors.detect("canny", picture, processor_res, 100, 200)
    return hint.fit(detected, ControlResize.CROP_AND_RESIZE, side, side)


@dataclass(frozen=True)
class ControlSample:
    """One example: the target ``image`` and the ``condition`` picture (uint8 ``[H, W, 3]``), its canny
    ``hint`` at the target's size, the caption and what it shows."""

    image: np.ndarray
    condition: np.ndarray
    hint: np.ndarray
    caption: str
    shape: FreeShape
    fg: str
    bg: str
    processor_res: int


def sample(seed: int, index: int, resolution: int = 64) -> ControlSample:
    """Training sample ``index`` of ``seed`` (see the module docstring): a pure function of its arguments."""
    rng = np.random.default_rng([seed, index, 18])
    shape = random_shape(rng)
    fg, bg = _colours(rng)
    cfg, cbg = _colours(rng) if rng.random() < 0.7 else (fg, bg)
    side = 64 if rng.random() < 0.5 else 512
    res = 64 if rng.random() < 0.5 else 512
    condition = render(shape, cfg, cbg, side, 4 if side <= 64 else 1)
    caption = _CAPTIONS[int(rng.integers(len(_CAPTIONS)))].format(fg=fg, shape=shape.shape, bg=bg)
    return ControlSample(render(shape, fg, bg, resolution), condition, canny_map(condition, res, resolution),
                         caption, shape, fg, bg, res)  # fmt: skip


@dataclass(frozen=True)
class ShapesSource:
    """The procedural control data as a :class:`latentstudio.train.control_data.ControlSource`."""

    seed: int
    resolution: int
    channels: int
    name: str = "latentstudio-shapes-canny"
    warnings: tuple[str, ...] = ()

    def data(self, first: int, size: int) -> ControlBatch:
        samples = [sample(self.seed, i, self.resolution) for i in range(first, first + size)]
        hints = torch.cat([hint.to_tensor(s.hint)[:, : self.channels] for s in samples])
        return ControlBatch(to_tensor([s.image for s in samples]), hints, [s.caption for s in samples],
                            torch.zeros(size, 6))  # fmt: skip


def eval_samples(count: int, seed: int = EVAL_SEED, resolution: int = 64) -> list[ControlSample]:
    """The fixed evaluation set: conditions whose canny map has an edge (a redraw otherwise), half at a
    processor resolution of 512 and half pixel perfect, pictures of 64 and 512 alternating."""
    out: list[ControlSample] = []
    rng = np.random.default_rng(seed)
    while len(out) < count:
        i = len(out)
        shape = random_shape(rng)
        fg, bg = _colours(rng)
        cfg, cbg = _colours(rng)
        side, res = (64, 512, 512, 64)[i % 4], (512, 512, 64, 64)[i % 4]
        condition = render(shape, cfg, cbg, side, 4 if side <= 64 else 1)
        edges = canny_map(condition, res, resolution)
        if (edges > 127).mean() < 0.01:  # canny sees no outline in this colour pair: not a test of control
            continue
        caption = _CAPTIONS[i % len(_CAPTIONS)].format(fg=fg, shape=shape.shape, bg=bg)
        out.append(ControlSample(render(shape, fg, bg, resolution), condition, edges, caption, shape, fg, bg,
                                 res))  # fmt: skip
    return out


@dataclass(frozen=True)
class ControlAccuracy:
    """Over ``count`` pictures: mean IoU with the condition's filled shape, the fraction with IoU ≥ 0.85,
    and the fractions whose foreground / background colour is the prompt's."""

    count: int
    iou: float
    iou_over_085: float
    fg: float
    bg: float

    def as_dict(self) -> dict[str, float]:
        return {"count": self.count, "iou": self.iou, "iou_over_085": self.iou_over_085, "fg": self.fg,
                "bg": self.bg}  # fmt: skip


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def evaluate_control(
    components: Components,
    network: ControlNetwork,
    count: int,
    *,
    steps: int = 20,
    cfg_scale: float = 7.0,
    on_image: Callable[[int, ControlSample, np.ndarray, float], None] | None = None,
) -> ControlAccuracy:
    """Generate each evaluation sample through the pipeline with a canny unit of ``network`` (weight 1,
    prompt *i* with seed *i*, DPM++ 2M) and score it (see the module docstring)."""
    from latentstudio.control.units import ControlUnit
    from latentstudio.pipeline.params import GenerationParams
    from latentstudio.pipeline.run import ModelIdentity, run

    size = components.info.native_size
    ious, fgs, bgs = [], [], []
    for i, s in enumerate(eval_samples(count, resolution=size)):
        unit = ControlUnit(module="canny", model=network.path.stem, image=Image.fromarray(s.condition),
                           processor_res=s.processor_res, threshold_a=100, threshold_b=200)  # fmt: skip
        params = GenerationParams(prompt=s.caption, sampler="DPM++ 2M", steps=steps, cfg_scale=cfg_scale,
                                  seed=i, width=size, height=size, control=(unit,)).resolved()  # fmt: skip
        result = run(params, components, identity=ModelIdentity(components.path.stem), controls=[network])
        image = np.asarray(result.images[0].convert("RGB"), dtype=np.uint8)
        score = iou(foreground_mask(image), filled_mask(s.shape, size))
        reading = classify(image)
        ious.append(score)
        fgs.append(reading.fg == s.fg)
        bgs.append(reading.bg == s.bg)
        if on_image is not None:
            on_image(i, s, image, score)
    n = max(len(ious), 1)
    return ControlAccuracy(len(ious), sum(ious) / n, sum(v >= 0.85 for v in ious) / n, sum(fgs) / n,
                           sum(bgs) / n)  # fmt: skip


def load_for_eval(path: Path, components: Components) -> ControlNetwork:
    """A control file loaded through the inference path for ``components``' device and dtype."""
    from latentstudio.control.networks import load_control_network

    return load_control_network(path, device=components.device, dtype=components.dtype,
                                base_unet=components.unet)  # fmt: skip
