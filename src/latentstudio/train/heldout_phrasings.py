"""Held-out phrasings of the shapes set: caption templates the training grammar never produces (frozen).

``latentstudio eval shapes --set heldout`` writes its prompts with these templates (placeholders ``{fg}``
``{shape}`` ``{bg}`` ``{size}`` ``{pos}``, filled with the attribute names of a spec by
:func:`latentstudio.train.captions.fill_template`). They use the words the grammar of
:mod:`latentstudio.train.captions` uses (so the text encoder knows them), plus a few common fillers
("the", "is", "and", "over", "of"), but in structures it never builds: a position first, no article, a
bare trailing position or size, "in {fg}", colons and "and" as separators, fillers in front of lists or
"with" clauses, a comma straight after the noun, "background {bg}" without a colon.

Every template names the foreground colour, the shape and the background (all three are scored); some omit
the size (never scored) or the position (scored only where named).

The first three are the misread phrasings of issue 18. The grammar would build them from its ordinary
clauses, so it excludes exactly these three forms (:data:`latentstudio.train.captions.EXCLUDED_FORMS`);
nearby forms (another filler, another background frame, an added size) stay in the grammar. The other 21
are outside the grammar by its structure alone. tests/test_captions.py checks both: no template here is a
form of :func:`latentstudio.train.captions.grammar_forms`, and no sampled grammar caption equals a template
here filled with the same spec.

Frozen: changing a template changes what ``eval shapes --set heldout`` measures; add new ones at the end.
"""

from __future__ import annotations

ISSUE_PHRASINGS = (
    "on a {bg} background, a {fg} {shape}",
    "a picture of a {fg} {shape} on a {bg} background",
    "a {fg} {shape} in the {pos} on a {bg} background",
)
HELDOUT_TEMPLATES = (
    *ISSUE_PHRASINGS,
    "in the {pos}, a {fg} {shape} on a {bg} background",  # the position first
    "{fg} {shape} on a {bg} background",  # prose without an article
    "a {size} {shape} in {fg} on a {bg} background",  # "in {fg}"
    "the {shape} is {fg} and the background is {bg}",
    "a {fg} {shape} on a {bg} background, {pos}",  # a bare trailing position after "on a … background"
    "{bg} background with a {fg} {shape} in the {pos}",  # "with" clause without an article
    "a drawing of a {size} {fg} {shape}, {pos}, {bg} background",  # a filler in front of a list
    "on a {bg} background there is a {fg} {shape}",  # background first without a comma
    "an image of a {bg} background with a {fg} {shape}",  # a filler in front of a "with" clause
    "a {fg} {shape} in the {pos}, {bg} background",  # prose, then a list-style background
    "{pos}: a {size} {fg} {shape}, background: {bg}",
    "a {fg} {shape} and a {bg} background",
    "a photo of a {fg} {shape} {pos} on {bg}",  # a bare position inside prose
    "a {fg} {shape} on a {bg} background, {size}",  # a bare trailing size
    "a {fg} {shape} over a {bg} background",
    "against a {bg} background: a {size} {fg} {shape} at the {pos}",
    "there is a {fg} {shape} and the background is {bg}",
    "a {fg} {shape}, in the {pos}, against a {bg} background",  # a comma straight after the noun
    "a {fg} {shape} in the {pos} of a {bg} background",
    "{size} {fg} {shape} at the {pos}, {bg} background",  # a prose position inside a list
    "background {bg}, {fg} {shape}",
)


def names_position(template: str) -> bool:
    """Whether ``template`` names the position (only those prompts score it)."""
    return "{pos}" in template


__all__ = ["HELDOUT_TEMPLATES", "ISSUE_PHRASINGS", "names_position"]
