"""A1111 prompt editing ``[from:to:when]`` and alternation ``[a|b]``: the prompt's text at each step.

:func:`schedules` is A1111's ``get_learned_conditioning_prompt_schedules`` for one prompt. It runs in time
linear in the prompt (up to a sort), with explicit stacks instead of recursion: one pass over the brackets
finds the valid groups (:class:`_EditScanner`), they are nested into a tree, and the tree is rendered at each
step where the text changes. :data:`MAX_SCHEDULE_CHARS` bounds the text a pathological prompt could produce.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from typing import NamedTuple

from latentstudio.prompts.errors import PromptError, check_length

MAX_SCHEDULE_CHARS = 5_000_000
"""Bound on the text :func:`schedules` may produce, counted as ``len(prompt) × number of entries``."""


# --- prompt editing and alternation (A1111 get_learned_conditioning_prompt_schedules) -----------------------
#
# A1111 parses with a lark Earley grammar in which ``[ ] ( ) :`` may also be literal at the top level; any
# parse error leaves the whole prompt unchanged. Its choice among the ambiguous parses comes down to:
# - a bracket group is a construct only if its balanced span is valid as a whole: every bracket inside is
#   balanced and valid; ``(…)`` holds at most one direct ``:`` and no ``|``; ``[…]`` is emphasis (no direct
#   ``:`` or ``|``), alternation (direct ``|``, no ``:``) or editing (one or two direct ``:``, no ``|``, and
#   the text after the last ``:`` is ``\s*NUMBER\s*``);
# - every valid group that is not inside another valid group is a construct; everything else is literal;
# - the parse fails if a ``|`` is not a direct separator of a valid alternation, or if a backslash precedes a
#   newline or ends the prompt (lark's ``plain`` terminal is ``([^\\\[\]():|]|\\.)+``).
# Where the parse is ambiguous, lark 1.1.2 breaks ties by sorting a set of forest nodes, so A1111's answer
# depends on PYTHONHASHSEED (e.g. "[a:1]]": the construct in about half of its launches, all literal in the
# others); we always take the construct. Checked against A1111's own code under lark 1.1.2 (4 to 28 hash
# seeds) on every string of up to 6 characters over ``[]():|a1`` (162 000) and 20 000 random strings of up
# to 24 pieces: equal wherever A1111 is deterministic, one of A1111's answers wherever it is not.

_EDIT_TOKEN_RE = re.compile(r"\\.|\\|[\[\]():|]")
# lark's common.SIGNED_NUMBER as lark compiles it; used with re.match, as lark's dynamic lexer does.
_NUMBER_RE = re.compile(
    r"[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.(?:[0-9]+)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)"
)
_SPACES_RE = re.compile(r"\s*")


class _Timing(NamedTuple):
    """Step arithmetic of A1111's ``collect_steps``: ``steps`` is where the schedule ends."""

    steps: int
    int_offset: int
    flt_offset: float
    old: bool

    def when(self, number: str) -> int:
        """The last step that shows the "before" text; at most ``steps``, below 1 for "never"."""
        v = float(number)
        if self.old:
            v = v * self.steps if v < 1 else v
        elif "." in number:  # a number containing "." is a fraction of the steps, whatever its value
            v = (v - self.flt_offset) * self.steps
        else:
            v = v - self.int_offset
        if math.isinf(v):  # A1111 raises OverflowError in int(); clamp as for any huge value
            return self.steps if v > 0 else 0
        return min(self.steps, int(v))


class _Frame:
    """An open bracket while scanning: its direct ``:`` and ``|`` positions; whether its inside is valid."""

    __slots__ = ("colons", "kind", "ok", "pipes", "start")

    def __init__(self, kind: str, start: int) -> None:
        self.kind, self.start, self.ok = kind, start, True
        self.colons: list[int] = []
        self.pipes: list[int] = []


class _Edit(NamedTuple):
    """A valid ``[from:to:when]`` (``when`` set) or ``[a|b|…]`` (``when`` None) group; ``end`` exclusive."""

    start: int
    end: int
    bounds: tuple[tuple[int, int] | None, ...]  # branch spans: (before, after) for editing, else the options
    when: int | None


class _Node(NamedTuple):
    """An edit and, for each of its branches, the edits nested directly in that branch."""

    edit: _Edit
    branches: tuple[tuple[_Node, ...], ...]


def _number(prompt: str, start: int, end: int) -> str | None:
    """The NUMBER if ``prompt[start:end]`` lexes as ``[WHITESPACE] NUMBER [WHITESPACE]``, else None."""
    pos = _SPACES_RE.match(prompt, start, end).end()  # type: ignore[union-attr]  # \s* always matches
    number = _NUMBER_RE.match(prompt, pos, end)
    if number is None or _SPACES_RE.match(prompt, number.end(), end).end() != end:  # type: ignore[union-attr]
        return None
    return number.group()


def _close_square(frame: _Frame, end: int, prompt: str, timing: _Timing) -> _Edit | bool:
    """Classify the ``[…]`` group ending at ``end``: an edit, True (emphasis) or False (not a construct)."""
    colons, pipes, start = frame.colons, frame.pipes, frame.start
    if not frame.ok or (colons and pipes) or len(colons) > 2:
        return False
    if not colons:
        if not pipes:
            return True
        cuts = [start, *pipes, end - 1]
        return _Edit(start, end, tuple((a + 1, b) for a, b in itertools.pairwise(cuts)), None)
    number = _number(prompt, colons[-1] + 1, end - 1)
    if number is None:
        return False
    if len(colons) == 1:
        return _Edit(start, end, (None, (start + 1, colons[0])), timing.when(number))
    return _Edit(start, end, ((start + 1, colons[0]), (colons[0] + 1, colons[1])), timing.when(number))


class _EditScanner:
    """One left-to-right pass over the brackets: the open groups (a stack) and the valid edits so far."""

    def __init__(self, prompt: str, timing: _Timing) -> None:
        self.prompt, self.timing = prompt, timing
        self.stack: list[_Frame] = []
        self.edits: list[_Edit] = []

    def scan(self) -> list[_Edit] | None:
        """Every valid edit group, in closing order; None when A1111's grammar rejects the prompt."""
        stack = self.stack
        for m in _EDIT_TOKEN_RE.finditer(self.prompt):
            token = m.group()
            if len(token) == 2:  # an escape: plain text
                continue
            if token == "\\":
                return None  # a backslash before a newline or at the end: no lark terminal matches it
            if token in "[(":
                stack.append(_Frame(token, m.start()))
            elif token in "])":
                if stack and not self._close(token, m.end()):
                    return None
            elif stack:
                (stack[-1].colons if token == ":" else stack[-1].pipes).append(m.start())
            elif token == "|":
                return None
        return None if any(frame.pipes for frame in stack) else self.edits

    def _close(self, token: str, end: int) -> bool:
        """Close the innermost group at ``token`` (``]`` or ``)``); False when the prompt cannot parse."""
        stack = self.stack
        if stack[-1].kind != ("[" if token == "]" else "("):  # a mismatched closer: every open group dies
            dead_pipes = any(frame.pipes for frame in stack)
            stack.clear()
            return not dead_pipes
        frame = stack.pop()
        if token == "]":
            result = _close_square(frame, end, self.prompt, self.timing)
        else:
            result = frame.ok and not frame.pipes and len(frame.colons) <= 1
        if isinstance(result, _Edit):
            self.edits.append(result)
        elif not result:
            if frame.pipes:
                return False  # its "|" ends up at the top level
            if stack:
                stack[-1].ok = False
        return True


def _build_tree(edits: list[_Edit]) -> tuple[_Node, ...]:
    """Nest the edits by containment (valid groups never cross); share out each one's children by branch."""
    order = sorted(edits)
    parents: list[int] = []
    enclosing: list[int] = []
    for i, edit in enumerate(order):
        while enclosing and order[enclosing[-1]].end <= edit.start:
            enclosing.pop()
        parents.append(enclosing[-1] if enclosing else -1)
        enclosing.append(i)
    children: list[list[_Node]] = [[] for _ in order]
    roots: list[_Node] = []
    for i in range(len(order) - 1, -1, -1):  # children start after their parent: build them first
        edit, kids = order[i], children[i][::-1]
        branches: list[list[_Node]] = [[] for _ in edit.bounds]
        k = 0
        for kid in kids:  # each child lies inside exactly one branch
            while (bound := edit.bounds[k]) is None or kid.edit.start >= bound[1]:
                k += 1
            branches[k].append(kid)
        node = _Node(edit, tuple(tuple(b) for b in branches))
        (children[parents[i]] if parents[i] >= 0 else roots).append(node)
    return tuple(roots[::-1])


def _render(prompt: str, roots: tuple[_Node, ...], step: int) -> str:
    """The prompt text at ``step`` (A1111's ``at_step``), walking the tree with an explicit stack."""
    pieces: list[str] = []
    stack: list[tuple[int, int, tuple[_Node, ...], int]] = [(0, len(prompt), roots, 0)]
    while stack:
        pos, end, nodes, i = stack.pop()
        if i == len(nodes):
            pieces.append(prompt[pos:end])
            continue
        edit = nodes[i].edit
        pieces.append(prompt[pos : edit.start])
        stack.append((edit.end, end, nodes, i + 1))
        k = (step - 1) % len(edit.bounds) if edit.when is None else int(step > edit.when)
        bound = edit.bounds[k]
        if bound is not None:
            stack.append((bound[0], bound[1], nodes[i].branches[k], 0))
    return "".join(pieces)


def _timing(steps: int, hires_steps: int | None, old_scheduling: bool) -> _Timing:
    """Validate the step counts and pick A1111's offsets."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if hires_steps is not None and hires_steps < 1:
        raise ValueError(f"hires_steps must be at least 1 or None, got {hires_steps}")
    if hires_steps is None or old_scheduling:
        return _Timing(steps, 0, 0.0, old_scheduling)
    return _Timing(hires_steps, steps, 1.0, False)


def schedules(
    prompt: str, steps: int, hires_steps: int | None = None, old_scheduling: bool = False
) -> list[tuple[int, str]]:
    """A1111 prompt editing and alternation: ``[(end_at_step, text), …]``, sorted, ending at the last step.

    ``[from:to:when]`` shows ``from`` while ``step <= when``, then ``to``; ``[to:when]`` and ``[from::when]``
    leave one side empty. A ``when`` containing ``"."`` is a fraction of the steps, otherwise a step number.
    ``[a|b|…]`` takes option ``(step - 1) % n`` at every step. With ``hires_steps`` the schedule is the hires
    pass's: it ends at ``hires_steps``, integers count from the start of the first pass (``when - steps``)
    and fractions above 1 are the hires part (``(when - 1) × hires_steps``). ``old_scheduling`` (infotext "Old
    prompt editing timelines") ignores hires: ``when < 1`` is a fraction, otherwise a step. A prompt A1111
    cannot parse comes back unchanged, as one entry.

    Raises:
        ValueError: ``steps`` or ``hires_steps`` below 1.
        PromptError: the prompt is too long, or the result would exceed :data:`MAX_SCHEDULE_CHARS`.
    """
    check_length(prompt)
    timing = _timing(steps, hires_steps, old_scheduling)
    edits = _EditScanner(prompt, timing).scan() if "[" in prompt else None
    if not edits:
        return [(timing.steps, prompt)]
    if any(edit.when is None for edit in edits):
        ends = list(range(1, timing.steps + 1))
    else:
        whens = {edit.when for edit in edits if edit.when is not None and edit.when >= 1}
        ends = sorted(whens | {timing.steps})
    if len(ends) * (len(prompt) + 1) > MAX_SCHEDULE_CHARS:
        raise PromptError(
            f"prompt schedule too large: {len(ends)} entries of up to {len(prompt)} characters "
            f"(limit {MAX_SCHEDULE_CHARS} characters)"
        )
    roots = _build_tree(edits)
    return [(end, _render(prompt, roots, end)) for end in ends]


def prompt_schedules(
    prompts: Sequence[str], steps: int, hires_steps: int | None = None, old_scheduling: bool = False
) -> list[list[tuple[int, str]]]:
    """:func:`schedules` for a batch, each distinct prompt computed once (A1111's
    ``get_learned_conditioning_prompt_schedules``)."""
    cache: dict[str, list[tuple[int, str]]] = {}
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = schedules(prompt, steps, hires_steps, old_scheduling)
    return [list(cache[prompt]) for prompt in prompts]
