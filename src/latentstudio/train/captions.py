"""A caption grammar for the shapes set: many phrasings of one :class:`~latentstudio.train.shapes.ShapeSpec`.

The five :data:`TEMPLATES` (the built-in model's captions, ``shapes.TEMPLATES``) teach the built-in model
five sentence shapes; it then misreads ordinary ones ("on a purple background, a black square"). Training
captions drawn from this grammar vary the order, the subset and the wording of the clauses instead.

A caption is drawn in two steps. First a **form**: a string with the placeholders ``{fg}`` ``{shape}``
``{bg}`` ``{size}`` ``{pos}`` that fixes the structure (families, clause order, frames, fillers, joiners):

- one of the five TEMPLATES verbatim (:data:`TEMPLATE_SHARE` of the captions, filled with the attribute
  names as ``spec.caption`` does, so nothing learnt from them is lost), or
- **prose**: ``[filler] a [{size}] [{fg}] {shape}`` then a position and/or a background clause in either
  order, the second after a space or a comma (fillers: "a picture of", "an image of", "a photo of",
  "a drawing of", "there is"; background: "on a {bg} background", "on {bg}", "against a {bg} background",
  "with a {bg} background"; position: "in the {pos}", "at the {pos}", corners also "in the {pos} corner",
  the centre also "centered");
- **background first**: ``<background>, [there is] a [{size}] [{fg}] {shape} [<position>]``
  (background: "on a {bg} background", "against a {bg} background", "{bg} background", "background: {bg}");
- **with**: ``a {bg} background with a [{size}] [{fg}] {shape} [<position>]``;
- **list**: comma-separated items in any order: the noun (``[{size}] [{fg}] {shape}``, or with the size
  and/or colour as items of their own: "red, star, small, blue background"), a position ("{pos}",
  corners "{pos} corner", the centre "centered") and a background ("{bg} background", "on a {bg}
  background", "background: {bg}" — not beside a lone colour item, which could read as a second
  background colour).

The shape is always named, the foreground colour in 90 % of the grammar's forms (about 92 % of the
captions with the templates), the background in most (about 88 % of the captions); size and position
are free to be absent (the picture is still the spec's). Then the form is **filled**: colour and shape
names as they are, the size as "small"/"tiny", "medium"/"medium-sized", "large"/"big", the position as its
name or a synonym ("upper left", "lower right", "middle"). A caption never names an attribute the spec does
not have.

:data:`EXCLUDED_FORMS`: the three phrasings of issue 18 (``heldout_phrasings.ISSUE_PHRASINGS``) are
ordinary prose / background-first forms, so the grammar drops exactly those three forms to keep them
held out for ``eval shapes --set heldout``. :func:`grammar_forms` enumerates every form the grammar can
draw (by replaying the same builder over every choice), so the exclusion is checkable.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from latentstudio.train.heldout_phrasings import ISSUE_PHRASINGS

Choose = Callable[[Sequence[float]], int]  # relative weights of the options → the chosen index


class Attributes(Protocol):
    """What a caption describes: a :class:`latentstudio.train.shapes.ShapeSpec` (this module sits below
    ``shapes``, which draws its captions from here)."""

    @property
    def shape(self) -> str: ...
    @property
    def fg(self) -> str: ...
    @property
    def bg(self) -> str: ...
    @property
    def size(self) -> str: ...
    @property
    def position(self) -> str: ...


TEMPLATES = (  # the built-in model's five captions (``ShapeSpec.caption``; ``shapes.TEMPLATES``)
    "a {fg} {shape} on a {bg} background",
    "{size} {fg} {shape}, {pos}, {bg} background",
    "a {size} {fg} {shape} in the {pos} on a {bg} background",
    "{fg} {shape}, {bg} background",
    "a {fg} {shape} on {bg}, {pos}",
)
TEMPLATE_SHARE = 0.2
EXCLUDED_FORMS = frozenset(ISSUE_PHRASINGS)
FILLERS = ("", "a picture of ", "an image of ", "a photo of ", "a drawing of ", "there is ")
PROSE_BACKGROUNDS = ("on a {bg} background", "on {bg}", "against a {bg} background", "with a {bg} background")
FRONT_BACKGROUNDS = (
    "on a {bg} background",
    "against a {bg} background",
    "{bg} background",
    "background: {bg}",
)
LIST_BACKGROUNDS = ("{bg} background", "on a {bg} background", "background: {bg}")
PROSE_POSITIONS: dict[str, tuple[str, ...]] = {
    "corner": ("in the {pos}", "at the {pos}", "in the {pos} corner"),
    "edge": ("in the {pos}", "at the {pos}"),
    "center": ("in the {pos}", "centered"),
}
LIST_POSITIONS: dict[str, tuple[str, ...]] = {
    "corner": ("{pos}", "{pos} corner"),
    "edge": ("{pos}",),
    "center": ("{pos}", "centered"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "tiny"),
    "medium": ("medium", "medium-sized"),
    "large": ("large", "big"),
}
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "top left": ("top left", "upper left"), "top": ("top",), "top right": ("top right", "upper right"),
    "left": ("left",), "center": ("center", "middle"), "right": ("right",),
    "bottom left": ("bottom left", "lower left"), "bottom": ("bottom",),
    "bottom right": ("bottom right", "lower right"),
}  # fmt: skip
_FG = (0.1, 0.9)  # (absent, present)
_SIZE = (0.5, 0.5)
_POS = (0.45, 0.55)
_BG = (0.2, 0.8)
_FAMILY = (0.45, 0.15, 0.1, 0.3)  # prose, background first, with, list


def position_kind(position: str) -> str:
    """``"corner"``, ``"edge"`` or ``"center"``: which position frames fit ``position``."""
    if position not in POSITION_WORDS:
        raise ValueError(f"position: {position!r} is not one of {', '.join(POSITION_WORDS)}")
    if position == "center":
        return "center"
    return "corner" if " " in position else "edge"


def _pick(options: Sequence[str], choose: Choose) -> str:
    return options[choose((1.0,) * len(options))]


def _noun(choose: Choose) -> str:
    size = "{size} " if choose(_SIZE) else ""
    fg = "{fg} " if choose(_FG) else ""
    return f"a {size}{fg}{{shape}}"


def _prose(kind: str, choose: Choose) -> str:
    text = _pick(FILLERS, choose) + _noun(choose)
    clauses = []
    if choose(_POS):
        clauses.append(_pick(PROSE_POSITIONS[kind], choose))
    if choose(_BG):
        clauses.append(_pick(PROSE_BACKGROUNDS, choose))
    if len(clauses) == 2 and choose((0.6, 0.4)):
        clauses.reverse()
    for i, clause in enumerate(clauses):
        text += (", " if i and choose((0.7, 0.3)) else " ") + clause
    return text


def _background_first(kind: str, choose: Choose) -> str:
    text = f"{_pick(FRONT_BACKGROUNDS, choose)}, {('', 'there is ')[choose((0.8, 0.2))]}{_noun(choose)}"
    if choose(_POS):
        text += " " + _pick(PROSE_POSITIONS[kind], choose)
    return text


def _with(kind: str, choose: Choose) -> str:
    text = f"a {{bg}} background with {_noun(choose)}"
    if choose(_POS):
        text += " " + _pick(PROSE_POSITIONS[kind], choose)
    return text


def _listing(kind: str, choose: Choose) -> str:
    size_mode = choose((0.5, 0.25, 0.25))  # absent, on the noun, an item
    fg_mode = choose((0.1, 0.6, 0.3))
    noun = ("{size} " if size_mode == 1 else "") + ("{fg} " if fg_mode == 1 else "") + "{shape}"
    items = [noun] + ["{size}"] * (size_mode == 2) + ["{fg}"] * (fg_mode == 2)
    if choose(_POS):
        items.append(_pick(LIST_POSITIONS[kind], choose))
    if choose(_BG):
        items.append(_pick(LIST_BACKGROUNDS[:2] if fg_mode == 2 else LIST_BACKGROUNDS, choose))
    ordered = []
    while items:
        ordered.append(items.pop(choose((1.0,) * len(items))))
    return ", ".join(ordered)


_FAMILIES = (_prose, _background_first, _with, _listing)


def _build(kind: str, choose: Choose) -> str:
    """One form for a position of ``kind``, every decision taken by ``choose`` (excluded forms included)."""
    if choose((1 - TEMPLATE_SHARE, TEMPLATE_SHARE)):
        return _pick(TEMPLATES, choose)
    return _FAMILIES[choose(_FAMILY)](kind, choose)


def _sampler(rng: np.random.Generator) -> Choose:
    def choose(weights: Sequence[float]) -> int:
        u = float(rng.random()) * sum(weights)
        for i, weight in enumerate(weights):
            u -= weight
            if u < 0:
                return i
        return len(weights) - 1

    return choose


class _Replay:
    """A :data:`Choose` that follows ``prefix`` and then takes option 0, recording every decision."""

    def __init__(self, prefix: tuple[int, ...]) -> None:
        self.prefix = prefix
        self.path: list[int] = []
        self.widths: list[int] = []

    def __call__(self, weights: Sequence[float]) -> int:
        i = len(self.path)
        choice = self.prefix[i] if i < len(self.prefix) else 0
        self.path.append(choice)
        self.widths.append(len(weights))
        return choice


@functools.cache
def grammar_forms(kind: str | None = None) -> frozenset[str]:
    """Every form the grammar can draw for a position of ``kind`` (:func:`position_kind`; None: any
    position), by replaying the builder once along every path of its decisions; never an excluded form."""
    forms: set[str] = set()
    for k in PROSE_POSITIONS if kind is None else (kind,):
        pending: list[tuple[int, ...]] = [()]
        while pending:
            replay = _Replay(pending.pop())
            forms.add(_build(k, replay))
            for i in range(len(replay.prefix), len(replay.path)):
                pending.extend((*replay.path[:i], c) for c in range(1, replay.widths[i]))
    return frozenset(forms - EXCLUDED_FORMS)


def grammar_form(spec: Attributes, rng: np.random.Generator) -> str:
    """A form (placeholders unfilled) for ``spec`` drawn with ``rng`` (never an :data:`EXCLUDED_FORMS`)."""
    choose, kind = _sampler(rng), position_kind(spec.position)
    while True:
        form = _build(kind, choose)
        if form not in EXCLUDED_FORMS:
            return form


def fill_template(template: str, spec: Attributes) -> str:
    """``template`` filled with the attribute names of ``spec`` (``spec.size``, ``spec.position``)."""
    return template.format(fg=spec.fg, shape=spec.shape, bg=spec.bg, size=spec.size, pos=spec.position)


def fill_form(form: str, spec: Attributes, rng: np.random.Generator) -> str:
    """``form`` filled with ``spec``: size and position words drawn from their synonyms (a TEMPLATE keeps
    the attribute names, as ``spec.caption`` writes it)."""
    size_words, position_words = SIZE_WORDS[spec.size], POSITION_WORDS[spec.position]
    size = size_words[int(rng.random() * len(size_words))]
    position = position_words[int(rng.random() * len(position_words))]
    if form in TEMPLATES:
        return fill_template(form, spec)
    return form.format(fg=spec.fg, shape=spec.shape, bg=spec.bg, size=size, pos=position)


def grammar_caption(spec: Attributes, rng: np.random.Generator) -> str:
    """A caption of ``spec`` drawn from the grammar: a pure function of ``spec`` and ``rng``'s state."""
    return fill_form(grammar_form(spec, rng), spec, rng)


__all__ = [
    "EXCLUDED_FORMS",
    "POSITION_WORDS",
    "SIZE_WORDS",
    "TEMPLATES",
    "TEMPLATE_SHARE",
    "Attributes",
    "fill_form",
    "fill_template",
    "grammar_caption",
    "grammar_form",
    "grammar_forms",
    "position_kind",
]
