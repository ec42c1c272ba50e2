"""A procedural, captioned dataset of flat shapes: the training data of the built-in model (no files).

Every sample is a pure function of ``(seed, index)``: one shape (circle, square, triangle, star) of one
foreground colour, size and position on a flat background of another colour, drawn with 4× supersampling,
and a caption naming some or all of those attributes: one of five :data:`TEMPLATES` ("a red circle on a
blue background", "small yellow triangle, top right, black background") or, with ``captions="grammar"``,
a phrasing drawn from the grammar of :mod:`latentstudio.train.captions` (where the templates live too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from latentstudio.train.captions import TEMPLATES, fill_template, grammar_caption

__all__ = [
    "CAPTION_STYLES",
    "COLOURS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SUPERSAMPLE",
    "TEMPLATES",
    "ShapeSample",
    "ShapeSpec",
    "batch",
    "centre_and_radius",
    "draw_shape",
    "random_spec",
    "render",
    "sample",
    "to_tensor",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "orange": (245, 130, 20),
    "purple": (135, 40, 175),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES: dict[str, float] = {"small": 0.15, "medium": 0.23, "large": 0.31}  # half-side / image size
# (column, row) in {0, 1, 2}²: 0 = left/top, 1 = centre, 2 = right/bottom
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}  # fmt: skip
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    """The attributes of one picture (names from :data:`COLOURS`, :data:`SHAPES`, :data:`SIZES`,
    :data:`POSITIONS`)."""

    shape: str
    fg: str
    bg: str
    size: str
    position: str

    def caption(self, template: int = 0) -> str:
        """The caption written with ``TEMPLATES[template]``."""
        return fill_template(TEMPLATES[template], self)


@dataclass(frozen=True)
class ShapeSample:
    """One training example: ``image`` uint8 ``[H, W, 3]``, its caption and its attributes."""

    image: np.ndarray
    caption: str
    spec: ShapeSpec


def random_spec(rng: np.random.Generator) -> ShapeSpec:
    """A uniformly drawn spec with foreground colour ≠ background colour."""
    colours = list(COLOURS)
    fg, bg = rng.choice(len(colours), size=2, replace=False)
    return ShapeSpec(
        shape=SHAPES[rng.integers(len(SHAPES))],
        fg=colours[fg],
        bg=colours[bg],
        size=list(SIZES)[rng.integers(len(SIZES))],
        position=list(POSITIONS)[rng.integers(len(POSITIONS))],
    )


def centre_and_radius(spec: ShapeSpec, resolution: int) -> tuple[float, float, float]:
    """``(cx, cy, r)`` in pixels: the shape's bounding square is centred at (cx, cy) with half-side r;
    left/right/top/bottom put it 2 px from the edge."""
    r = SIZES[spec.size] * resolution
    col, row = POSITIONS[spec.position]
    margin = r + resolution / 32
    coords = (margin, resolution / 2, resolution - margin)
    return coords[col], coords[row], r


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Outline of a triangle (apex up) or 5-point star, scaled and shifted to fill the box (cx±r, cy±r)."""
    if shape == "triangle":
        unit = [(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
    else:
        unit = []
        for k in range(10):
            angle = -math.pi / 2 + k * math.pi / 5
            radius = 1.0 if k % 2 == 0 else 0.45
            unit.append((radius * math.cos(angle), radius * math.sin(angle)))
    xs, ys = [p[0] for p in unit], [p[1] for p in unit]
    mx, my = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    scale = 2 / max(max(xs) - min(xs), max(ys) - min(ys))
    return [(cx + (x - mx) * scale * r, cy + (y - my) * scale * r) for x, y in unit]


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float], fill: tuple[int, int, int]
) -> None:
    """Draw ``shape`` filling the square ``box`` = (cx, cy, half-side) in pixels, in ``fill``."""
    cx, cy, r = box
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=fill)


def render(spec: ShapeSpec, resolution: int = 64) -> np.ndarray:
    """The picture of ``spec``: uint8 ``[resolution, resolution, 3]`` (anti-aliased by supersampling)."""
    s = SUPERSAMPLE
    big = Image.new("RGB", (resolution * s, resolution * s), COLOURS[spec.bg])
    draw = ImageDraw.Draw(big)
    cx, cy, r = (v * s for v in centre_and_radius(spec, resolution))
    draw_shape(draw, spec.shape, (cx, cy, r), COLOURS[spec.fg])
    small = big.resize((resolution, resolution), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8).copy()


CAPTION_STYLES = ("templates", "grammar")


def sample(seed: int, index: int, resolution: int = 64, captions: str = "templates") -> ShapeSample:
    """Sample ``index`` of the dataset with ``seed``: deterministic, independent of any other sample.

    ``captions``: ``"templates"`` (one of :data:`TEMPLATES`, the built-in model's data) or ``"grammar"``
    (:func:`latentstudio.train.captions.grammar_caption`); the picture is the same for both.
    """
    if captions not in CAPTION_STYLES:
        raise ValueError(f"captions: {captions!r} is not one of {', '.join(CAPTION_STYLES)}")
    rng = np.random.default_rng([seed, index])
    spec = random_spec(rng)
    if captions == "grammar":
        caption = grammar_caption(spec, rng)
    else:
        caption = spec.caption(int(rng.integers(len(TEMPLATES))))
    return ShapeSample(render(spec, resolution), caption, spec)


def to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` images → float ``[B, 3, H, W]`` in [-1, 1]."""
    array = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def batch(
    seed: int, start: int, size: int, resolution: int = 64, captions: str = "templates"
) -> tuple[torch.Tensor, list[str], list[ShapeSpec]]:
    """Samples ``start … start+size−1``: images ``[size, 3, R, R]`` in [-1, 1], captions (``captions``: as
    :func:`sample`), specs."""
    samples = [sample(seed, i, resolution, captions) for i in range(start, start + size)]
    return (
        to_tensor([s.image for s in samples]),
        [s.caption for s in samples],
        [s.spec for s in samples],
    )
