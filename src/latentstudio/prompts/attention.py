"""A1111 emphasis: ``(x)``, ``[x]``, ``(x:w)`` and ``BREAK`` turned into weighted text runs.

:func:`parse_attention` is A1111's ``parse_prompt_attention``, with bit-identical weights. It tokenizes once
and records each bracket's multiplication over a range of runs instead of doing it, so the work is linear in
the prompt plus the updates, bounded by :data:`MAX_EMPHASIS_UPDATES`.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from latentstudio.prompts.errors import PromptError, check_length

MAX_EMPHASIS_UPDATES = 2_000_000
"""Weight updates :func:`parse_attention` may make: the sum over brackets of the text runs each one covers.
Real prompts need at most a few thousand; ``"(a" * 100_000`` (100 000 unclosed brackets) would need 5e9."""

_ATTENTION_RE = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_BREAK_RE = re.compile(r"\bBREAK\b")
_ROUND = 1.1
_SQUARE = 1 / 1.1
_SPACES_RE = re.compile(r"\s*")


class _Emphasis(NamedTuple):
    """A1111's attention pass with its range multiplications recorded instead of done.

    A *run* is the set of entries appended between two bracket events; all of its entries share a weight.
    """

    entries: list[tuple[str, float, int]]  # text, sign (-1.0 for the BREAK marker), run
    ops: list[tuple[int, int, float]]  # runs [first, end) times a multiplier, in A1111's order
    runs: int


def _split_break(text: str) -> list[str]:
    """A1111's ``re.split(r"\\s*\\bBREAK\\b\\s*", text)``, without that regex's quadratic backtracking over
    a long run of spaces: each whole-word BREAK takes the whitespace on both sides with it."""
    parts: list[str] = []
    pos = 0
    for m in _BREAK_RE.finditer(text):
        parts.append(text[pos : m.start()].rstrip())  # str.rstrip strips exactly what \s matches
        pos = _SPACES_RE.match(text, m.end()).end()  # type: ignore[union-attr]  # \s* always matches
    parts.append(text[pos:])
    return parts


def _weight(text: str, pos: int) -> float:
    """``float(text)`` for an emphasis weight; A1111 raises a bare ValueError on e.g. ``1.2.3``."""
    try:
        return float(text)
    except ValueError:
        raise PromptError(f"invalid emphasis weight {text!r} at position {pos}") from None


def _emphasis(text: str) -> _Emphasis:
    """Tokenize as A1111 does and record which runs each closed (or unclosed) bracket multiplies."""
    entries: list[tuple[str, float, int]] = []
    ops: list[tuple[int, int, float]] = []
    brackets: dict[str, list[int]] = {"(": [], "[": []}  # first run of each open bracket
    runs, fresh = 0, True
    for m in _ATTENTION_RE.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token in brackets:
            brackets[token].append(runs)
            fresh = True
            continue
        close: tuple[str, float] | None = None
        if weight is not None and brackets["("]:
            close = ("(", _weight(weight, m.start(1)))
        elif token == ")" and brackets["("]:
            close = ("(", _ROUND)
        elif token == "]" and brackets["["]:
            close = ("[", _SQUARE)
        if close is not None:
            first = brackets[close[0]].pop()
            if first < runs:
                ops.append((first, runs, close[1]))
            fresh = True
            continue
        if fresh:  # the first entry after a bracket event starts a new run
            runs, fresh = runs + 1, False
        if token[0] == "\\":
            entries.append((token[1:], 1.0, runs - 1))
            continue
        for i, part in enumerate(_split_break(token)):
            if i > 0:
                entries.append(("BREAK", -1.0, runs - 1))
            entries.append((part, 1.0, runs - 1))
    for kind, multiplier in (("(", _ROUND), ("[", _SQUARE)):  # unclosed brackets apply to the end, ( first
        ops.extend((first, runs, multiplier) for first in brackets[kind] if first < runs)
    return _Emphasis(entries, ops, runs)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """A1111 ``parse_prompt_attention``: ``(text, weight)`` runs, equal neighbours merged.

    ``(x)`` multiplies by 1.1, ``[x]`` by 1/1.1, ``(x:w)`` by ``w``; unclosed brackets apply to the end of the
    text, unmatched ``)``/``]`` are literal; ``\\( \\) \\[ \\] \\\\`` are escapes and a backslash before any
    other character is dropped. ``BREAK`` (a whole word, with the whitespace around it) becomes
    ``("BREAK", -1.0)``, multiplied like its neighbours when inside brackets (as A1111 does). The weights are
    bit-identical to A1111's: each is multiplied in A1111's order.

    Raises:
        PromptError: a weight that is not a number (``(a:1.2.3)``), a weight that overflows to inf/nan (e.g.
            8000 nested parentheses), more than :data:`MAX_EMPHASIS_UPDATES` updates, or a prompt that is too
            long.
    """
    check_length(text)
    parsed = _emphasis(text)
    updates = sum(end - first for first, end, _ in parsed.ops)
    if updates > MAX_EMPHASIS_UPDATES:
        raise PromptError(
            f"too many nested or unclosed emphasis brackets: {updates} weight updates "
            f"(limit {MAX_EMPHASIS_UPDATES})"
        )
    factors = [1.0] * parsed.runs
    for first, end, multiplier in parsed.ops:
        factors[first:end] = [factor * multiplier for factor in factors[first:end]]
    runs: list[tuple[list[str], float]] = []
    for part, sign, run in parsed.entries:
        weight = sign * factors[run]
        if runs and runs[-1][1] == weight:  # merge equal neighbours (0.0 == -0.0 too, as in A1111)
            runs[-1][0].append(part)
        else:
            runs.append(([part], weight))
    merged = [("".join(parts), weight) for parts, weight in runs] or [("", 1.0)]
    bad = next((part for part, weight in merged if not math.isfinite(weight)), None)
    if bad is not None:
        raise PromptError(f"emphasis weight of {bad[:40]!r} is not finite (too many nested brackets?)")
    return merged
