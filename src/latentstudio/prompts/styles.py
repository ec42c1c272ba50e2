"""A1111 prompt styles (``styles.csv``): load, apply and extract them as A1111 v1.10 ``modules/styles.py``.

The file has the columns ``name,prompt,negative_prompt`` (the old ``name,text`` layout is read too). A style
whose text holds ``{prompt}`` wraps the prompt (every ``{prompt}`` is replaced); any other style is appended
with ``", "`` to the stripped prompt, empty parts dropped.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from latentstudio.prompts.errors import PromptError

PLACEHOLDER = "{prompt}"


class Style(NamedTuple):
    """One row of ``styles.csv``."""

    name: str
    prompt: str
    negative_prompt: str


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """A1111 ``merge_prompts``: fill ``{prompt}``, else ``", ".join`` the non-empty stripped parts."""
    if PLACEHOLDER in style_prompt:
        return style_prompt.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def load_styles(path: str | Path) -> dict[str, Style]:
    """Read a ``styles.csv`` (UTF-8, BOM allowed): ``{name: Style}``, a later row replacing a namesake.

    As A1111: a missing file is no styles, rows whose name starts with ``#`` are comments, spaces after a
    comma are skipped, a missing ``negative_prompt`` column or cell is ``""``.

    Raises:
        PromptError: the file is not UTF-8, not CSV, or has no ``name`` or ``prompt``/``text`` column.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    styles: dict[str, Style] = {}
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            reader = csv.DictReader(file, skipinitialspace=True)
            columns = reader.fieldnames or []
            text_column = "prompt" if "prompt" in columns else "text"
            if "name" not in columns or text_column not in columns:
                raise PromptError(f"{path}: need the columns name,prompt,negative_prompt; got {columns}")
            for row in reader:
                name = row["name"] or ""
                if not name.startswith("#"):
                    styles[name] = Style(name, row[text_column] or "", row.get("negative_prompt") or "")
    except (UnicodeDecodeError, csv.Error) as e:
        raise PromptError(f"{path}: not a readable styles CSV file ({e})") from None
    return styles


def apply_styles(
    prompt: str, negative_prompt: str, styles: Mapping[str, Style], names: Sequence[str]
) -> tuple[str, str]:
    """Apply the named styles in order to both prompts (A1111 ``apply_styles_to_prompt``).

    Raises:
        PromptError: a name that is not a style (A1111 silently skips it; we name it instead).
    """
    unknown = [name for name in names if name not in styles]
    if unknown:
        known = ", ".join(sorted(styles)[:20]) or "none"
        raise PromptError(f"unknown style(s) {unknown}; known styles: {known}")
    for name in names:
        prompt = merge_prompts(styles[name].prompt, prompt)
        negative_prompt = merge_prompts(styles[name].negative_prompt, negative_prompt)
    return prompt, negative_prompt


def extract_style_text(style_text: str, prompt: str) -> tuple[bool, str]:
    """A1111 ``extract_style_text_from_prompt``: whether ``prompt`` carries the style; the prompt without it.

    A ``{prompt}`` style matches when the stripped prompt starts and ends with the text around the
    placeholder; another style matches when the stripped prompt ends with it (a ``", "`` left before it goes
    too).
    A style with two placeholders never matches (A1111 raises ValueError there).
    """
    stripped_prompt, stripped_style = prompt.strip(), style_text.strip()
    if PLACEHOLDER in stripped_style:
        parts = stripped_style.split(PLACEHOLDER)
        if len(parts) == 2 and stripped_prompt.startswith(parts[0]) and stripped_prompt.endswith(parts[1]):
            return True, stripped_prompt[len(parts[0]) : len(stripped_prompt) - len(parts[1])]
    elif stripped_prompt.endswith(stripped_style):
        rest = stripped_prompt[: len(stripped_prompt) - len(stripped_style)]
        return True, rest.removesuffix(", ")
    return False, prompt


def extract_styles(
    prompt: str, negative_prompt: str, styles: Mapping[str, Style]
) -> tuple[list[str], str, str]:
    """A1111 ``extract_styles_from_prompt``: peel styles off the end until none matches.

    A style matches when both its prompt and its negative prompt match (:func:`extract_style_text`); styles
    with neither are skipped, each style is taken once, in file order. Returns the names in the order they
    would be applied, and the prompts without them.
    """
    extracted: list[str] = []
    candidates = [style for style in styles.values() if style.prompt or style.negative_prompt]
    while True:
        for style in candidates:
            matched, new_prompt = extract_style_text(style.prompt, prompt)
            if not matched:
                continue
            matched, new_negative = extract_style_text(style.negative_prompt, negative_prompt)
            if matched:
                prompt, negative_prompt = new_prompt, new_negative
                candidates.remove(style)
                extracted.append(style.name)
                break
        else:
            return extracted[::-1], prompt, negative_prompt
