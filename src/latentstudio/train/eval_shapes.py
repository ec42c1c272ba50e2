"""``latentstudio eval shapes``: a deterministic pixel-statistics classifier of shape pictures and the
accuracy of a model over a fixed prompt set.

The classifier reads the background colour from the image border, the foreground mask from the distance
to it, the foreground colour from the mask's median, the shape from the mask's geometry (fill of its
bounding box and of its convex hull) and the position from the centre of its bounding box. On the
generator's own renders it is exact (tests/test_train_shapes.py).

Two prompt sets, the same specs and seeds: ``templates`` (training templates 1 and 2, naming every
attribute) and ``heldout`` (:mod:`latentstudio.train.heldout_phrasings`: phrasings the caption grammar never
produces; position scored only where named).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from latentstudio.train import heldout_phrasings
from latentstudio.train.captions import fill_template
from latentstudio.train.shapes import COLOURS, POSITIONS, TEMPLATES, ShapeSpec, random_spec

if TYPE_CHECKING:
    from latentstudio.models.loader import Components

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)  # [8, 3]
_NAMES = list(COLOURS)
EVAL_SEED = 20240
EVAL_TEMPLATES = (1, 2)  # the templates that name every attribute
Phrasing = Literal["templates", "heldout"]
PHRASINGS: tuple[Phrasing, ...] = ("templates", "heldout")


@dataclass(frozen=True)
class Reading:
    """What the classifier sees in one picture (``shape``/``fg``/``position`` are "none" without a
    foreground)."""

    fg: str
    bg: str
    shape: str
    position: str


@dataclass(frozen=True)
class Accuracy:
    """Fractions in [0, 1] over ``count`` pictures; ``position`` over the ``position_count`` of them whose
    prompt names a position (all of them in the ``templates`` set; 0 of 0 reads 0.0)."""

    count: int
    fg: float
    bg: float
    shape: float
    position: float
    position_count: int

    def as_dict(self) -> dict[str, float]:
        """The five fractions and ``count`` (the model card's keys; ``position_count`` is the field)."""
        return {
            "count": self.count,
            "fg": self.fg,
            "bg": self.bg,
            "shape": self.shape,
            "position": self.position,
        }


def _nearest(rgb: np.ndarray, exclude: str | None = None) -> str:
    """The palette name nearest to ``rgb [3]`` (never ``exclude``)."""
    dists = np.linalg.norm(_PALETTE - rgb[None], axis=1)
    if exclude is not None:
        dists[_NAMES.index(exclude)] = np.inf
    return _NAMES[int(dists.argmin())]


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of ``points [N, 2]`` (Andrew's monotone chain + shoelace)."""
    pts = sorted({(float(x), float(y)) for x, y in points})
    if len(pts) < 3:
        return 0.0

    def half(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        chain: list[tuple[float, float]] = []
        for p in seq:
            while len(chain) >= 2:
                (ax, ay), (bx, by) = chain[-2], chain[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0:
                    break
                chain.pop()
            chain.append(p)
        return chain

    hull = half(pts)[:-1] + half(pts[::-1])[:-1]
    xs, ys = np.array([p[0] for p in hull]), np.array([p[1] for p in hull])
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def _shape(mask: np.ndarray) -> str:
    """Shape of a boolean ``[H, W]`` mask from bounding-box fill and solidity (area / hull area)."""
    ys, xs = np.nonzero(mask)
    area = float(len(xs))
    box = float((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    solidity = area / max(_hull_area(corners), 1.0)
    fill = area / box
    if solidity < 0.8:
        return "star"
    if fill > 0.9:
        return "square"
    return "circle" if fill > 0.66 else "triangle"


def _position(mask: np.ndarray) -> str:
    """Grid cell of the mask's bounding-box centre (a dead zone of ±10% of the size around the middle)."""
    ys, xs = np.nonzero(mask)
    size = mask.shape[0]

    def cell(lo: int, hi: int) -> int:
        offset = (lo + hi + 1) / 2 - size / 2
        return 1 if abs(offset) <= 0.1 * size else (0 if offset < 0 else 2)

    where = (cell(int(xs.min()), int(xs.max())), cell(int(ys.min()), int(ys.max())))
    return next(name for name, cr in POSITIONS.items() if cr == where)


def separate(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A uint8 ``[H, W, 3]`` picture of one shape on a flat background split into its background colour
    (the border's median), its foreground colour (the median of the pixels far from the background; None
    when under 0.5 % are) and the foreground mask (bool ``[H, W]``: nearer the foreground colour)."""
    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])  # fmt: skip
    bg_rgb = np.median(border, axis=0)
    far = np.linalg.norm(pixels - bg_rgb, axis=2) > 40
    if far.sum() < 0.005 * far.size:
        return bg_rgb, None, np.zeros(image.shape[:2], dtype=bool)
    fg_rgb = np.median(pixels[far], axis=0)
    mask = np.linalg.norm(pixels - fg_rgb, axis=2) < np.linalg.norm(pixels - bg_rgb, axis=2)
    return bg_rgb, fg_rgb, np.asarray(mask)


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """The foreground mask of :func:`separate`: bool ``[H, W]``."""
    return separate(image)[2]


def classify(image: np.ndarray) -> Reading:
    """Read a uint8 ``[H, W, 3]`` picture of one shape on a flat background."""
    bg_rgb, fg_rgb, mask = separate(image)
    bg = _nearest(bg_rgb)
    if fg_rgb is None:
        return Reading("none", bg, "none", "none")
    fg = _nearest(fg_rgb, exclude=bg)
    if not mask.any():
        return Reading(fg, bg, "none", "none")
    return Reading(fg, bg, _shape(mask), _position(mask))


def eval_specs(count: int, seed: int = EVAL_SEED) -> list[tuple[ShapeSpec, str]]:
    """The fixed evaluation set: ``count`` specs with a caption naming every attribute."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        spec = random_spec(rng)
        out.append((spec, spec.caption(EVAL_TEMPLATES[i % len(EVAL_TEMPLATES)])))
    return out


def heldout_specs(count: int, seed: int = EVAL_SEED) -> list[tuple[ShapeSpec, str]]:
    """The fixed held-out set: the specs of :func:`eval_specs` (same ``seed``), spec ``i`` written with
    ``HELDOUT_TEMPLATES[i % 24]``."""
    templates = heldout_phrasings.HELDOUT_TEMPLATES
    rng = np.random.default_rng(seed)
    return [
        (spec, fill_template(templates[i % len(templates)], spec))
        for i, spec in enumerate(random_spec(rng) for _ in range(count))
    ]


def prompt_set(count: int, phrasing: Phrasing = "templates") -> list[tuple[ShapeSpec, str, bool]]:
    """The first ``count`` prompts of a set: ``(spec, prompt, whether the prompt names the position)``."""
    if phrasing == "templates":
        return [(spec, caption, True) for spec, caption in eval_specs(count)]
    if phrasing == "heldout":
        templates = heldout_phrasings.HELDOUT_TEMPLATES
        return [
            (spec, caption, heldout_phrasings.names_position(templates[i % len(templates)]))
            for i, (spec, caption) in enumerate(heldout_specs(count))
        ]
    raise ValueError(f"phrasing: {phrasing!r} is not one of {', '.join(PHRASINGS)}")


def score(
    readings: Sequence[Reading], specs: Sequence[ShapeSpec], names_position: Sequence[bool] | None = None
) -> Accuracy:
    """Per-attribute accuracy of ``readings`` against the intended ``specs``; position only over the
    pictures whose ``names_position`` is true (default: all)."""
    n = len(specs)
    named = [True] * n if names_position is None else list(names_position)
    if len(named) != n:
        raise ValueError(f"names_position: {len(named)} entries for {n} specs")

    def hits(get: Callable[[Reading | ShapeSpec], str], where: Sequence[bool]) -> tuple[float, int]:
        pairs = [(r, s) for r, s, w in zip(readings, specs, where, strict=True) if w]
        return sum(get(r) == get(s) for r, s in pairs) / max(len(pairs), 1), len(pairs)

    every = [True] * n
    position, position_count = hits(lambda x: x.position, named)
    return Accuracy(
        n,
        hits(lambda x: x.fg, every)[0],
        hits(lambda x: x.bg, every)[0],
        hits(lambda x: x.shape, every)[0],
        position,
        position_count,
    )


def generate(
    components: Components,
    prompt: str,
    seed: int,
    *,
    steps: int = 20,
    sampler: str = "DPM++ 2M",
    cfg_scale: float = 7.0,
) -> np.ndarray:
    """One picture at the model's native size through the generation pipeline: uint8 ``[H, W, 3]``."""
    from latentstudio.pipeline.params import GenerationParams
    from latentstudio.pipeline.run import ModelIdentity, run

    size = components.info.native_size
    params = GenerationParams(
        prompt=prompt, sampler=sampler, steps=steps, cfg_scale=cfg_scale, seed=seed, width=size, height=size
    ).resolved()
    result = run(params, components, identity=ModelIdentity(name=components.path.stem))
    return np.asarray(result.images[0].convert("RGB"), dtype=np.uint8)


def evaluate(
    components: Components,
    count: int,
    *,
    steps: int = 20,
    sampler: str = "DPM++ 2M",
    cfg_scale: float = 7.0,
    on_image: Callable[[int, np.ndarray, Reading], None] | None = None,
    phrasing: Phrasing = "templates",
) -> Accuracy:
    """Accuracy of ``components`` on the first ``count`` prompts of the fixed set ``phrasing``
    (:func:`prompt_set`; prompt i uses seed i)."""
    prompts = prompt_set(count, phrasing)
    readings = []
    for i, (_, caption, _) in enumerate(prompts):
        image = generate(components, caption, i, steps=steps, sampler=sampler, cfg_scale=cfg_scale)
        reading = classify(image)
        if on_image is not None:
            on_image(i, image, reading)
        readings.append(reading)
    return score(readings, [p[0] for p in prompts], [p[2] for p in prompts])


__all__ = [
    "PHRASINGS",
    "TEMPLATES",
    "Accuracy",
    "Phrasing",
    "Reading",
    "classify",
    "eval_specs",
    "evaluate",
    "foreground_mask",
    "generate",
    "heldout_specs",
    "prompt_set",
    "score",
    "separate",
]
