"""The A1111 prompt language, parsed as stable-diffusion-webui v1.10 parses it (pure functions, no torch).

A1111 applies the pieces in this order, and so should the pipeline:

1. :func:`strip_comments` (``#`` comments, when enabled),
2. :func:`~latentstudio.prompts.networks.extract_networks` (``<lora:…>`` tags are removed from the text),
3. :func:`split_and` (``AND`` sub-prompts with ``:weight``),
4. :func:`~latentstudio.prompts.editing.schedules` per sub-prompt (prompt editing ``[a:b:when]`` and
   alternation ``[a|b]``),
5. :func:`~latentstudio.prompts.attention.parse_attention` per scheduled text (emphasis and ``BREAK``).

This module holds the text-level passes (comments, ``AND``) and :func:`check_prompt`, which runs them all;
the others live in :mod:`~latentstudio.prompts.networks`, :mod:`~latentstudio.prompts.editing` and
:mod:`~latentstudio.prompts.attention`, on :mod:`~latentstudio.prompts.errors`.

Every function runs in time linear in the prompt (up to a sort), with explicit stacks instead of recursion,
so 10 000 nested brackets can neither hang nor overflow the stack, and every function rejects a prompt longer
than :data:`~latentstudio.prompts.errors.MAX_PROMPT_CHARS` at once. Where A1111 crashes (a malformed weight
such as ``(a:1.2.3)``, ``<lora:x:abc>``) or yields non-finite numbers,
:class:`~latentstudio.prompts.errors.PromptError` names the problem instead. Two budgets bound pathological
inputs that no real prompt comes near: :data:`~latentstudio.prompts.attention.MAX_EMPHASIS_UPDATES` and
:data:`~latentstudio.prompts.editing.MAX_SCHEDULE_CHARS`. NUL bytes, lone surrogates and other odd characters
are text like any other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from latentstudio.prompts.attention import parse_attention
from latentstudio.prompts.editing import schedules
from latentstudio.prompts.errors import PromptError, check_length
from latentstudio.prompts.networks import extract_networks, hypernet_tags, lora_tags

# --- AND (composable diffusion) -----------------------------------------------------------------------------

_AND_RE = re.compile(r"\bAND\b")
_AND_WEIGHT_RE = re.compile(r"\s*([-+]?(?:\d+\.?|\d*\.\d+))")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """A1111's ``AND`` split: ``[(sub_prompt, weight), …]``.

    The prompt is split on ``\\bAND\\b``; each part loses its trailing whitespace and a trailing
    ``:number`` (A1111's ``re_weight``, computed here without its quadratic backtracking). Leading whitespace
    stays: ``"a AND b"`` gives ``[("a", 1.0), (" b", 1.0)]``.

    Raises:
        PromptError: a weight with so many digits that it is infinite, or a prompt that is too long.
    """
    check_length(prompt)
    parts: list[tuple[str, float]] = []
    for sub in _AND_RE.split(prompt):
        text, weight = sub.rstrip(), 1.0
        colon = text.rfind(":")
        number = _AND_WEIGHT_RE.fullmatch(text, colon + 1) if colon >= 0 else None
        if number is not None:
            text, weight = text[:colon].rstrip(), float(number.group(1))
            if not math.isfinite(weight):
                raise PromptError(f"AND weight {number.group(1)[:40]!r}… is not finite")
        parts.append((text, weight))
    return parts


def multicond_prompt_list(prompts: Sequence[str]) -> tuple[list[list[tuple[int, float]]], list[str]]:
    """A1111 ``get_multicond_prompt_list``: per prompt ``(index, weight)`` into the distinct sub-prompts."""
    index: dict[str, int] = {}  # sub-prompt → position, in order of first appearance
    batch = [[(index.setdefault(text, len(index)), weight) for text, weight in split_and(p)] for p in prompts]
    return batch, list(index)


# --- comments and the whole-prompt check --------------------------------------------------------------------

_COMMENT_LINE_RE = re.compile(r"(^|\n)#[^\n]*(\n|$)")
_COMMENT_RE = re.compile(r"#[^\n]*(\n|$)")


def strip_comments(prompt: str) -> str:
    """A1111 ≥ 1.8 prompt comments (setting "Enable comments", on by default): ``#`` to the end of the line.

    Exactly A1111's two substitutions, in order: a whole comment line (``#`` at the start of the prompt or of
    a line) with its line break becomes ``"\\n"``; then any other ``#…`` to the end of the line, with its line
    break, becomes ``"\\n"``. Escapes are not honoured (``\\#`` starts a comment too). Examples:
    ``"a cat # comment"`` → ``"a cat \\n"``; ``"# line\\na dog"`` → ``"\\na dog"``;
    ``"a\\n# mid\\nb"`` → ``"a\\nb"``.
    """
    check_length(prompt)
    return _COMMENT_RE.sub("\n", _COMMENT_LINE_RE.sub("\n", prompt))


def check_prompt(prompt: str, steps: int) -> None:
    """Parse ``prompt`` the way a job will (comments, network tags, AND, editing, attention) so that a bad
    prompt fails at the edge, before any model work.

    Raises:
        PromptError: the first problem found, e.g. an emphasis weight ``1.2.3`` or a non-finite multiplier.
    """
    text, networks = extract_networks(strip_comments(prompt))
    lora_tags(networks)
    hypernet_tags(networks)
    for part, _ in split_and(text):
        for _, scheduled in schedules(part, steps):
            parse_attention(scheduled)
