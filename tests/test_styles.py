"""Prompt styles (prompts/styles.py) with A1111 v1.10's semantics (modules/styles.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from latentstudio.prompts.errors import PromptError
from latentstudio.prompts.styles import (
    Style,
    apply_styles,
    extract_style_text,
    extract_styles,
    load_styles,
    merge_prompts,
)


@pytest.mark.parametrize(
    ("style", "prompt", "expected"),
    [
        ("masterpiece", "a cat", "a cat, masterpiece"),
        ("  masterpiece  ", "  a cat  ", "a cat, masterpiece"),  # both stripped
        ("masterpiece", "", "masterpiece"),  # empty parts dropped
        ("", "a cat", "a cat"),
        ("best, {prompt}, 4k", " a cat ", "best,  a cat , 4k"),  # substituted as is, not stripped
        ("{prompt} and {prompt}", "x", "x and x"),  # every placeholder
    ],
)
def test_merge_prompts(style: str, prompt: str, expected: str) -> None:
    assert merge_prompts(style, prompt) == expected


def _write(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "styles.csv"
    path.write_bytes(text.encode(encoding))
    return path


def test_load_styles_a1111_format(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "\ufeffname,prompt,negative_prompt\n"
        'Photo, "{prompt}, photo, 35mm", "cartoon, drawing"\n'
        "# comment,ignored,ignored\n"
        "Short,only prompt\n"
        "Photo2,x,y\n"
        "Photo2,x2,y2\n"
        '"multi\nline","a\nb",\n',
    )
    assert load_styles(path) == {
        "Photo": Style("Photo", "{prompt}, photo, 35mm", "cartoon, drawing"),
        "Short": Style("Short", "only prompt", ""),
        "Photo2": Style("Photo2", "x2", "y2"),  # a later namesake wins
        "multi\nline": Style("multi\nline", "a\nb", ""),
    }


def test_load_styles_old_layout_missing_and_bad_files(tmp_path: Path) -> None:
    assert load_styles(_write(tmp_path, "name,text\nold,style text\n")) == {
        "old": Style("old", "style text", "")
    }
    assert load_styles(tmp_path / "missing.csv") == {}  # A1111: no file, no styles
    with pytest.raises(PromptError, match="need the columns"):
        load_styles(_write(tmp_path, "title,prompt\nx,y\n"))
    with pytest.raises(PromptError, match="not a readable styles CSV"):
        load_styles(_write(tmp_path, "name,prompt\nnaïve,x\n", encoding="latin-1"))


def test_apply_styles_in_order_and_unknown_names() -> None:
    styles = {
        "wrap": Style("wrap", "best, {prompt}", "{prompt}, blurry"),
        "tail": Style("tail", "4k", "lowres"),
        "empty": Style("empty", "", ""),
    }
    assert apply_styles("a cat", "ugly", styles, ["wrap", "tail", "empty"]) == (
        "best, a cat, 4k",
        "ugly, blurry, lowres",
    )
    assert apply_styles("a cat", "", styles, ["tail", "wrap"]) == ("best, a cat, 4k", "lowres, blurry")
    assert apply_styles("a cat", "", styles, []) == ("a cat", "")
    with pytest.raises(PromptError, match=r"unknown style\(s\) \['nope'\]; known styles: empty, tail, wrap"):
        apply_styles("a cat", "", styles, ["tail", "nope"])


def test_extract_style_text_a1111_docstring_examples() -> None:
    assert extract_style_text("masterpiece", "1girl, art by greg, masterpiece") == (
        True,
        "1girl, art by greg",
    )
    assert extract_style_text("masterpiece, {prompt}", "masterpiece, 1girl, art by greg") == (
        True,
        "1girl, art by greg",
    )
    assert extract_style_text("masterpiece, {prompt}", "exquisite, 1girl, art by greg") == (
        False,
        "exquisite, 1girl, art by greg",
    )
    assert extract_style_text("{prompt} {prompt}", "a a") == (False, "a a")  # A1111 raises ValueError


def test_extract_styles_undoes_apply_styles() -> None:
    styles = {
        "wrap": Style("wrap", "best, {prompt}", "{prompt}, blurry"),
        "tail": Style("tail", "4k", "lowres"),
        "blank": Style("blank", "", ""),
    }
    prompt, negative = apply_styles("a cat", "ugly", styles, ["tail", "wrap"])
    assert extract_styles(prompt, negative, styles) == (["tail", "wrap"], "a cat", "ugly")
    assert extract_styles("a dog", "ugly", styles) == ([], "a dog", "ugly")


words = st.from_regex(r"[a-z]{1,6}( [a-z]{1,6}){0,2}", fullmatch=True)


@given(words, words, words, words)
def test_apply_then_extract_round_trip(prompt: str, negative: str, tail: str, neg_tail: str) -> None:
    styles = {
        "wrap": Style("wrap", "best, {prompt}, 4k", "{prompt}, blurry"),
        "tail": Style("tail", tail, neg_tail),
    }
    styled = apply_styles(prompt, negative, styles, ["tail", "wrap"])
    names, original, original_negative = extract_styles(*styled, styles)
    assert apply_styles(original, original_negative, styles, names) == styled
