"""A1111 infotext (the PNG ``parameters`` chunk): :func:`format` and :func:`parse`.

Layout and parsing follow reference/a1111-compat.md §2 (``create_infotext`` in ``modules/processing.py``,
``parse_generation_parameters`` in ``modules/infotext_utils.py``, v1.10.1) with default settings: the style
store is ``styles`` (none unless given), ``infotext_styles`` is ``style_mode``, ``infotext_skip_pasting`` is
``skip_fields``, ``auto_backcompat`` is ``backcompat`` and ``use_old_hires_fix_width_height`` is off.

``format`` and ``parse`` are inverse for the texts A1111 can represent; A1111's own format loses:

* whitespace at the start or end of a prompt line or a negative-prompt line (``parse`` strips each line), a
  prompt or negative-prompt line starting with ``Negative prompt:``, empty lines before the first non-empty
  negative-prompt line, and leading empty prompt lines (the whole text is stripped);
* a parameter whose value equals its key (printed as the bare key, which the regex skips), an empty value
  (A1111 reports a parse error and drops it), leading whitespace of an unquoted value and trailing whitespace
  of the last one;
* an unquoted value (no ``,``, ``:`` or newline) that starts and ends with ``"`` and is valid JSON: it comes
  back JSON-decoded;
* any value matching ``^(\\d+)x(\\d+)$`` (``$`` also matches before a final newline) becomes ``Key-1`` and
  ``Key-2``; a last line with fewer than 3 parameters is read as prompt.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Collection, Mapping
from typing import TypeVar

from packaging import version as pkg_version

from latentstudio.prompts.attention import parse_attention
from latentstudio.prompts.errors import PromptError
from latentstudio.prompts.styles import Style, extract_styles

_log = logging.getLogger(__name__)

T = TypeVar("T")
InfotextValue = str | int | bool | list[str]  # list: only "Styles array"
STYLE_MODES = ("Ignore", "Apply", "Discard", "Apply if any")  # A1111's ``infotext_styles`` choices
_HR_STYLES = pkg_version.parse("1.8.0-139")  # infotext_versions.v180_hr_styles

FIXED_KEYS: tuple[str, ...] = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength", "Conditional mask weight",
    "Clip skip", "ENSD", "Token merging ratio", "Token merging ratio hr", "Init image hash", "RNG", "Tiling",
)  # fmt: skip
"""``create_infotext``'s fixed keys, in order (the reference's "Size (WxH)" is the key ``Size``)."""
TRAILING_KEYS: tuple[str, ...] = ("Version", "User")
"""Written after the extra generation parameters."""

PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SPACES = re.compile(r"\s*")
_KEY_RUN = re.compile(r"[\w \-/]*")
_WORD = re.compile(r"\w")
IMAGE_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
NEGATIVE_PREFIX = "Negative prompt:"

# Added by parse when absent, in A1111's order. Hires resize-1/-2, Cache FP16 weight for LoRA and Emphasis
# have their own conditions (see parse).
_DEFAULTS_BEFORE_HIRES_FIX: tuple[tuple[str, InfotextValue], ...] = (
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
)
_DEFAULTS_AFTER_HIRES_FIX: tuple[tuple[str, InfotextValue], ...] = (
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)


def quote(value: T) -> T | str:
    """A1111 ``quote``: JSON-encode (keeping non-ASCII) when ``str(value)`` has ``,``, newline or ``:``."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return value
    return json.dumps(value, ensure_ascii=False)


def unquote(text: str) -> str:
    """A1111 ``unquote``: JSON-decode a ``"…"`` string; anything else, or invalid JSON, is returned as is."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


def ordered_params(fixed: Mapping[str, object], extra: Mapping[str, object]) -> dict[str, object]:
    """The parameters in ``create_infotext`` order, without None values.

    ``fixed`` holds values for :data:`FIXED_KEYS` and :data:`TRAILING_KEYS` (missing keys are None); ``extra``
    is ``extra_generation_params`` in insertion order. An extra key that is also a fixed key keeps the fixed
    position and takes the extra value; Version and User always come last.
    """
    unknown = set(fixed) - set(FIXED_KEYS) - set(TRAILING_KEYS)
    if unknown:
        raise ValueError(f"fixed: unknown keys {sorted(unknown)}; allowed: {FIXED_KEYS + TRAILING_KEYS}")
    params: dict[str, object] = {key: fixed.get(key) for key in FIXED_KEYS}
    params.update(extra)
    for key in TRAILING_KEYS:
        params.pop(key, None)
        params[key] = fixed.get(key)
    return {key: value for key, value in params.items() if value is not None}


def format(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Infotext as ``create_infotext`` writes it: prompt, ``Negative prompt:`` line if any, parameter line.

    None values are dropped, a value equal to its key prints as the bare key, anything else as
    ``Key: quote(value)`` with Python ``str()`` (so ``7.0`` stays ``7.0``). The result is stripped.
    """
    line = ", ".join(
        key if key == value else f"{key}: {quote(value)}"
        for key, value in params.items()
        if value is not None
    )
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


def _split_prompts(lines: list[str]) -> tuple[str, str]:
    """Prompt and negative prompt from the lines before the parameter line (each line stripped)."""
    prompt, negative, in_negative = "", "", False
    for raw in lines:
        line = raw.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    return prompt, negative


def _run_end(run: re.Pattern[str], line: str, pos: int) -> int:
    """End of ``run`` (a pattern that also matches the empty string) matched at ``pos``."""
    found = run.match(line, pos)
    return pos if found is None else found.end()


def param_pairs(line: str) -> list[tuple[str, str]]:
    """``PARAM_RE.findall(line)`` (A1111's ``re_param``) in linear time.

    ``findall`` retries the pattern at every position, and a failed try scans the whole run of whitespace
    and key characters after it: quadratic in a long line without ``:`` (2 MB took minutes). A try can only
    fail in the key (the value part always matches). When the try's whitespace is followed by a word
    character, every later start up to the end of that key run meets the same end without ``:`` (or the same
    too short key), so the next try worth making is at the run's end; otherwise every start inside the
    whitespace fails on the same character, so the next is just past it."""
    pairs: list[tuple[str, str]] = []
    pos, end = 0, len(line)
    while pos < end:
        found = PARAM_RE.match(line, pos)
        if found is not None:
            pairs.append((found.group(1), found.group(2)))
            pos = found.end()
            continue
        key = _run_end(_SPACES, line, pos)
        after = _run_end(_KEY_RUN, line, key) if _WORD.match(line, key) else key + 1
        pos = max(pos + 1, after)
    return pairs


def _parse_param_line(line: str) -> dict[str, InfotextValue]:
    """``Key: value`` pairs of the parameter line; ``WxH`` values split into ``Key-1``/``Key-2``."""
    res: dict[str, InfotextValue] = {}
    for key, raw in param_pairs(line):
        if not raw:
            _log.warning('Error parsing "%s: %s"', key, raw)  # A1111: IndexError caught, key dropped
            continue
        value = unquote(raw) if raw[0] == '"' and raw[-1] == '"' else raw
        m = IMAGE_SIZE_RE.match(value)
        if m is not None:
            res[f"{key}-1"], res[f"{key}-2"] = m.group(1), m.group(2)
        else:
            res[key] = value
    return res


def _restore_old_hires_fix(res: dict[str, InfotextValue]) -> None:
    """Legacy ``First pass size`` → Size (first pass) and Hires resize (final size), as ints.

    Sizes A1111 would crash on (a zero final size, numbers past Python's 4300-digit ``int`` limit) are
    left as they were, with the warning A1111 logs for values it cannot parse."""
    first_w, first_h = res.get("First pass size-1"), res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    try:
        fw, fh = int(str(first_w)), int(str(first_h))  # parsed strings, or ints (never the styles list)
        width, height = int(str(res.get("Size-1", 512))), int(str(res.get("Size-2", 512)))
    except ValueError:
        _log.warning('Error parsing "First pass size: %.40sx%.40s"', first_w, first_h)
        return
    if (fw == 0 or fh == 0) and width * height == 0:
        _log.warning("Error parsing First pass size: the image size is 0")
        return
    if fw == 0 or fh == 0:  # processing.old_hires_fix_first_pass_dimensions
        scale = math.sqrt(512 * 512 / (width * height))
        fw, fh = math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64
    res["Size-1"], res["Size-2"] = fw, fh
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def uses_emphasis(*texts: str) -> bool:
    """Whether any text has a non-1.0 attention weight other than a BREAK marker (A1111's Emphasis rule)."""
    try:
        parsed = [parse_attention(text) for text in texts]
    except PromptError:  # a prompt over the parser's limits: A1111 would not have emphasis off for it either
        return True
    return any(w != 1.0 and part != "BREAK" for runs in parsed for part, w in runs)


def _parse_version(text: InfotextValue | None) -> pkg_version.Version | None:
    """``infotext_versions.parse_version``: ``v1.7.0-225-gabc`` → ``v1.7.0-225``; None when unparsable
    (A1111 catches every exception: newer ``packaging`` raises ``ValueError`` for a 5000-digit part)."""
    if not isinstance(text, str):
        return None
    m = re.match(r"([^-]+-[^-]+)-.*", text)
    try:
        return pkg_version.parse(m.group(1) if m else text)
    except ValueError:  # InvalidVersion, or int()'s digit limit
        return None


def _backcompat(res: dict[str, InfotextValue]) -> None:
    """``infotext_versions.backcompat``: compatibility flags for infotexts from older versions."""
    ver = _parse_version(res.get("Version"))
    if ver is None:
        return
    if ver < pkg_version.parse("1.6.0") and "[" in str(res.get("Prompt", "")):
        res["Old prompt editing timelines"] = True
    if ver < pkg_version.parse("1.6.0") and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if ver < pkg_version.parse("v1.7.0-225"):
        res["Downcast alphas_cumprod"] = True
    if ver < pkg_version.parse("1.8.0") and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


def _extract_styles(
    res: dict[str, InfotextValue], prompt: str, negative: str, styles: Mapping[str, Style], mode: str
) -> tuple[str, str]:
    """A1111's style step (``infotext_styles`` ≠ "Ignore"): the prompts without the styles they end with,
    and ``Styles array`` ("Apply", or "Apply if any" when some matched). When the infotext has a ``Hires
    prompt`` or ``Hires negative prompt`` and no ``Version`` of 1.8.0-139 or older, each hires prompt (a
    missing one: the main one) loses its styles too and becomes "" where it then equals the main prompt's;
    if the hires prompts carry other styles than the main ones, nothing is extracted and the hires prompts
    stay as written."""
    found, bare, bare_negative = extract_styles(prompt, negative, styles)
    version = _parse_version(res.get("Version"))
    has_hires = "Hires prompt" in res or "Hires negative prompt" in res
    if has_hires and (version is None or version > _HR_STYLES):
        hr_prompt = str(res.get("Hires prompt", prompt))
        hr_negative = str(res.get("Hires negative prompt", negative))
        hr_found, hr_bare, hr_bare_negative = extract_styles(hr_prompt, hr_negative, styles)
        if hr_found != found:
            return prompt, negative
        res["Hires prompt"] = "" if hr_bare == bare else hr_bare
        res["Hires negative prompt"] = "" if hr_bare_negative == bare_negative else hr_bare_negative
    if (mode == "Apply if any" and found) or mode == "Apply":
        res["Styles array"] = found
    return bare, bare_negative


def parse(
    text: str,
    *,
    skip_fields: Collection[str] = (),
    backcompat: bool = True,
    styles: Mapping[str, Style] | None = None,
    style_mode: str = "Apply if any",
) -> dict[str, InfotextValue]:
    """A1111 ``parse_generation_parameters``: infotext → ``{"Prompt", "Negative prompt", key: value, …}``.

    Values stay strings except the defaults (ints/bools as in A1111), the First pass size conversion (ints),
    the backward-compatibility flags (True) and ``Styles array`` (a list). ``styles``: the style store
    (A1111's ``styles.csv``; None: no styles) and ``style_mode`` its ``infotext_styles`` option (one of
    :data:`STYLE_MODES`; as in A1111 any other value acts as "Discard"), which also decides whether a hires
    prompt equal to the main one reads as "" (see :func:`_extract_styles`; not with "Ignore").
    ``skip_fields`` are removed at the end.
    """
    *lines, last = text.strip().split("\n")
    if len(param_pairs(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative = _split_prompts(lines)
    res = _parse_param_line(last)
    if style_mode != "Ignore":
        prompt, negative = _extract_styles(res, prompt, negative, styles or {}, style_mode)
    res["Prompt"], res["Negative prompt"] = prompt, negative
    res.setdefault("Clip skip", "1")
    if "Hypernet" in res:
        res["Prompt"] = f"{res['Prompt']}<hypernet:{res['Hypernet']}:{res.get('Hypernet strength', '1.0')}>"
    if "Hires resize-1" not in res:
        res["Hires resize-1"], res["Hires resize-2"] = 0, 0
    for key, value in _DEFAULTS_BEFORE_HIRES_FIX:
        res.setdefault(key, value)
    _restore_old_hires_fix(res)
    for key, value in _DEFAULTS_AFTER_HIRES_FIX:
        res.setdefault(key, value)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False
    if "Emphasis" not in res and uses_emphasis(prompt, negative):
        res["Emphasis"] = "Original"
    res.setdefault("Refiner switch by sampling steps", False)
    if backcompat:
        _backcompat(res)
    return {key: value for key, value in res.items() if key not in skip_fields}
