"""The A1111 prompt language, parsed as stable-diffusion-webui v1.10 parses it (pure functions, no torch).

A1111 applies the pieces in this order, and so should the pipeline:

1. :func:`strip_comments` (``#`` comments, when enabled),
2. :func:`extract_networks` (``<lora:…>`` tags are removed from the text),
3. :func:`split_and` (``AND`` sub-prompts with ``:weight``),
4. :func:`schedules` per sub-prompt (prompt editing ``[a:b:when]`` and alternation ``[a|b]``),
5. :func:`parse_attention` per scheduled text (emphasis and ``BREAK``).

Every function runs in time linear in the prompt (up to a sort), with explicit stacks instead of recursion,
so 10 000 nested brackets can neither hang nor overflow the stack, and every function rejects a prompt longer
than :data:`MAX_PROMPT_CHARS` at once. Where A1111 crashes (a malformed weight such as ``(a:1.2.3)``,
``<lora:x:abc>``) or yields non-finite numbers, :class:`PromptError` names the problem instead. Two budgets
bound pathological inputs that no real prompt comes near: :data:`MAX_EMPHASIS_UPDATES` and
:data:`MAX_SCHEDULE_CHARS`. NUL bytes, lone surrogates and other odd characters are text like any other.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

MAX_PROMPT_CHARS = 100_000
"""Longest prompt any function here accepts (A1111 has no limit). 100 000 characters is ~25 000 CLIP tokens,
333 chunks of 75; the server's own limit is lower. Keeps each function's worst case well under a second."""

MAX_EMPHASIS_UPDATES = 2_000_000
"""Weight updates :func:`parse_attention` may make: the sum over brackets of the text runs each one covers.
Real prompts need at most a few thousand; ``"(a" * 100_000`` (100 000 unclosed brackets) would need 5e9."""

MAX_SCHEDULE_CHARS = 5_000_000
"""Bound on the text :func:`schedules` may produce, counted as ``len(prompt) × number of entries``."""


class PromptError(ValueError):
    """A prompt that cannot be used, with the reason (and the position where there is one)."""


def _check_length(prompt: str) -> None:
    """Reject a prompt longer than :data:`MAX_PROMPT_CHARS`."""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptError(f"prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")


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
    _check_length(prompt)
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


# --- attention / emphasis (A1111 parse_prompt_attention) ----------------------------------------------------

_ATTENTION_RE = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_BREAK_RE = re.compile(r"\bBREAK\b")
_ROUND = 1.1
_SQUARE = 1 / 1.1


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
    _check_length(text)
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
    _check_length(prompt)
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


# --- extra networks and comments ----------------------------------------------------------------------------

_EXTRA_NETWORK_RE = re.compile(r"<(\w+):([^>]+)>")
_COMMENT_LINE_RE = re.compile(r"(^|\n)#[^\n]*(\n|$)")
_COMMENT_RE = re.compile(r"#[^\n]*(\n|$)")


class LoraTag(NamedTuple):
    """One ``<lora:name:te:unet:dyn>`` with A1111's Lora defaults applied."""

    name: str
    te_multiplier: float
    unet_multiplier: float
    dyn_dim: int | None


class HypernetTag(NamedTuple):
    """One ``<hypernet:name:multiplier>``."""

    name: str
    multiplier: float


def extract_networks(prompt: str) -> tuple[str, dict[str, list[list[str]]]]:
    """A1111 ``extra_networks.parse_prompt``: the prompt without its ``<kind:arg:…>`` tags, and the args.

    The tag pattern is ``<(\\w+):([^>]+)>`` (names may hold spaces, args may not hold ``>``); args are split
    on ``:`` and kept as text, in order, kinds in order of first appearance:
    ``"a <lora:x:0.5> b"`` → ``("a  b", {"lora": [["x", "0.5"]]})``.
    """
    _check_length(prompt)
    networks: dict[str, list[list[str]]] = {}

    def found(m: re.Match[str]) -> str:
        networks.setdefault(m.group(1), []).append(m.group(2).split(":"))
        return ""

    last = prompt.rfind(">") + 1  # searching only up to the last ">" keeps the regex linear
    return _EXTRA_NETWORK_RE.sub(found, prompt[:last]) + prompt[last:], networks


def split_network_args(args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """A1111 ``ExtraNetworkParams``: ``k=v`` (exactly one ``=``) is named, the rest positional; last wins."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in args:
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    return positional, named


def _number_arg(tag: str, value: str, convert: type[float] | type[int]) -> float:
    """``float(value)`` / ``int(value)`` as A1111 converts tag args, but finite and with a clear error."""
    try:
        number = convert(value)
    except ValueError:
        raise PromptError(f"{tag}: {value!r} is not a valid {convert.__name__}") from None
    if not math.isfinite(number):
        raise PromptError(f"{tag}: {value!r} is not finite")
    return number


def lora_tags(networks: Mapping[str, Sequence[Sequence[str]]]) -> list[LoraTag]:
    """The ``lora``/``lyco`` (alias) tags of :func:`extract_networks`, as A1111's Lora extension reads them.

    Positional ``name:te:unet:dyn``; ``te`` defaults to 1.0, ``unet`` to the (final) ``te``; named ``te=``,
    ``unet=`` and ``dyn=`` override the positional values. Like A1111, the ``lora`` and ``lyco`` lists are
    concatenated in order of the kinds' first appearance.

    Raises:
        PromptError: a tag with no name, or a multiplier/dim that is not a finite number.
    """
    tags: list[LoraTag] = []
    for kind, params in networks.items():
        for args in params if kind in ("lora", "lyco") else ():
            tag = f"<{kind}:{':'.join(args)}>"
            positional, named = split_network_args(args)
            if not positional:
                raise PromptError(f"{tag}: no network name")
            te = _number_arg(tag, positional[1], float) if len(positional) > 1 else 1.0
            te = _number_arg(tag, named["te"], float) if "te" in named else te
            unet = _number_arg(tag, positional[2], float) if len(positional) > 2 else te
            unet = _number_arg(tag, named["unet"], float) if "unet" in named else unet
            dyn = int(_number_arg(tag, positional[3], int)) if len(positional) > 3 else None
            dyn = int(_number_arg(tag, named["dyn"], int)) if "dyn" in named else dyn
            tags.append(LoraTag(positional[0], te, unet, dyn))
    return tags


def hypernet_tags(networks: Mapping[str, Sequence[Sequence[str]]]) -> list[HypernetTag]:
    """The ``hypernet`` tags as A1111 reads them: ``name:multiplier`` (raw items, default 1.0)."""
    tags: list[HypernetTag] = []
    for args in networks.get("hypernet", ()):
        tag = f"<hypernet:{':'.join(args)}>"
        tags.append(HypernetTag(args[0], _number_arg(tag, args[1], float) if len(args) > 1 else 1.0))
    return tags


def strip_comments(prompt: str) -> str:
    """A1111 ≥ 1.8 prompt comments (setting "Enable comments", on by default): ``#`` to the end of the line.

    Exactly A1111's two substitutions, in order: a whole comment line (``#`` at the start of the prompt or of
    a line) with its line break becomes ``"\\n"``; then any other ``#…`` to the end of the line, with its line
    break, becomes ``"\\n"``. Escapes are not honoured (``\\#`` starts a comment too). Examples:
    ``"a cat # comment"`` → ``"a cat \\n"``; ``"# line\\na dog"`` → ``"\\na dog"``;
    ``"a\\n# mid\\nb"`` → ``"a\\nb"``.
    """
    _check_length(prompt)
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
