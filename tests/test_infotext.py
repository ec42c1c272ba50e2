"""A1111 infotext (reference/a1111-compat.md §2): quote, the §2.3 parse vectors, create_infotext layout and
order, and format/parse as inverses on everything A1111's format can represent."""

from __future__ import annotations

import operator
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentstudio.infotext import (
    FIXED_KEYS,
    TRAILING_KEYS,
    format,
    ordered_params,
    parse,
    quote,
    unquote,
    uses_emphasis,
)

# Every parse result holds these unless the text has the key (§2.2 defaults table, A1111's types).
DEFAULTS: dict[str, object] = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Refiner switch by sampling steps": False,
}


def assert_same(got: dict[str, object], expected: dict[str, object]) -> None:
    """Equal dicts with equal value types (``0 == False`` and ``"512" != 512`` both matter here)."""
    assert got == expected
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in expected.items()}


# --- quote ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", "abc"),
        ("a, b", '"a, b"'),
        ("a: b", '"a: b"'),
        ("line1\nline2", '"line1\\nline2"'),
        ('say "hi", ok', '"say \\"hi\\", ok"'),
        (7, 7),
        ("ünï, x", '"ünï, x"'),
        ('say "hi"', 'say "hi"'),  # quotes alone do not trigger quoting
    ],
)
def test_quote_vectors(value: object, expected: object) -> None:
    out = quote(value)
    assert out == expected
    assert type(out) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", ""), ("abc", "abc"), ('"a, b"', "a, b"), ('"bad', '"bad'), ('"\\x"', '"\\x"'), ('"', '"')],
)
def test_unquote(text: str, expected: str) -> None:
    assert unquote(text) == expected


# --- §2.3 parse vectors -----------------------------------------------------------------------------------

EXAMPLE_1 = (
    "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, "
    "by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\n"
    "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, "
    "poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"
)


def test_example_1_docstring() -> None:
    prompt, negative, _ = EXAMPLE_1.split("\n")
    expected = {
        **DEFAULTS,
        "Steps": "20",
        "Sampler": "Euler a",
        "CFG scale": "7",
        "Seed": "965400086",
        "Size-1": "512",
        "Size-2": "512",
        "Model hash": "45dee52b",
        "Prompt": prompt,
        "Negative prompt": negative.removeprefix("Negative prompt: "),
        "Emphasis": "Original",
    }
    assert_same(parse(EXAMPLE_1), expected)


def test_example_2_no_emphasis() -> None:
    text = (
        "a cat\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, "
        "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
    )
    expected = {
        **DEFAULTS,
        "Steps": "20",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "7",
        "Seed": "1234",
        "Size-1": "512",
        "Size-2": "768",
        "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly",
        "Version": "v1.10.1",
        "Prompt": "a cat",
        "Negative prompt": "",
    }
    assert_same(parse(text), expected)


def test_example_3_multiline_and_quoted() -> None:
    text = (
        "masterpiece, <lora:detail:0.6>, 1girl\nsecond line of prompt\n"
        "Negative prompt: lowres, bad hands\nmore negative\n"
        "Steps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, Seed: 42, Size: 512x512, "
        "Model hash: abcdef1234, Model: mymodel, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, "
        'Hires steps: 15, Hires upscaler: Latent, Lora hashes: "detail: 0123456789ab", '
        'TI hashes: "easyneg: 1a2b3c4d5e6f, bad: 00112233", Variation seed: 99, '
        "Variation seed strength: 0.3, Seed resize from: 640x480, ENSD: 31337, Version: v1.9.4"
    )
    expected = {
        **DEFAULTS,
        "Steps": "30",
        "Sampler": "Euler a",
        "Schedule type": "Automatic",
        "CFG scale": "6.5",
        "Seed": "42",
        "Size-1": "512",
        "Size-2": "512",
        "Model hash": "abcdef1234",
        "Model": "mymodel",
        "Denoising strength": "0.45",
        "Clip skip": "2",
        "Hires upscale": "2",
        "Hires steps": "15",
        "Hires upscaler": "Latent",
        "Lora hashes": "detail: 0123456789ab",
        "TI hashes": "easyneg: 1a2b3c4d5e6f, bad: 00112233",
        "Variation seed": "99",
        "Variation seed strength": "0.3",
        "Seed resize from-1": "640",
        "Seed resize from-2": "480",
        "ENSD": "31337",
        "Version": "v1.9.4",
        "Prompt": "masterpiece, <lora:detail:0.6>, 1girl\nsecond line of prompt",
        "Negative prompt": "lowres, bad hands\nmore negative",
    }
    assert_same(parse(text), expected)


def test_example_4_quoted_colons_and_commas() -> None:
    text = (
        "a photo\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, "
        'Hires prompt: "a photo, highly detailed", Hires resize: 1024x1024, Template: "x: y, z"'
    )
    expected = {
        **DEFAULTS,
        "Steps": "20",
        "Sampler": "Euler",
        "CFG scale": "7",
        "Seed": "1",
        "Size-1": "512",
        "Size-2": "512",
        "Hires prompt": "a photo, highly detailed",
        "Hires resize-1": "1024",
        "Hires resize-2": "1024",
        "Template": "x: y, z",
        "Prompt": "a photo",
        "Negative prompt": "",
    }
    assert_same(parse(text), expected)


def test_example_5_fewer_than_3_params_is_prompt() -> None:
    expected = {**DEFAULTS, "Prompt": "just a prompt with no params", "Negative prompt": ""}
    assert_same(parse("just a prompt with no params"), expected)
    two = "a cat\nSteps: 20, Seed: 1"
    assert_same(parse(two), {**DEFAULTS, "Prompt": two, "Negative prompt": ""})


def test_example_6_backcompat_flags_and_first_pass_size() -> None:
    text = (
        "(old:1.2) [editing:thing:0.5]\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 5, Size: 512x512, "
        "First pass size: 0x0, Version: v1.5.0"
    )
    expected = {
        **DEFAULTS,
        "Steps": "20",
        "Sampler": "DDIM",
        "CFG scale": "7",
        "Seed": "5",
        "Size-1": 512,
        "Size-2": 512,
        "First pass size-1": "0",
        "First pass size-2": "0",
        "Version": "v1.5.0",
        "Prompt": "(old:1.2) [editing:thing:0.5]",
        "Negative prompt": "",
        "Hires resize-1": 512,
        "Hires resize-2": 512,
        "Emphasis": "Original",
        "Old prompt editing timelines": True,
        "Pad conds v0": True,
        "Downcast alphas_cumprod": True,
    }
    assert_same(parse(text), expected)


# --- other parse rules ------------------------------------------------------------------------------------

BASE = "Steps: 20, Sampler: Euler, Seed: 1"


def test_first_pass_size_nonzero_and_auto() -> None:
    res = parse(f"p\n{BASE}, Size: 1024x1024, First pass size: 512x512")
    assert (res["Size-1"], res["Size-2"], res["Hires resize-1"], res["Hires resize-2"]) == (
        512,
        512,
        1024,
        1024,
    )
    # 0x0 uses the old algorithm: scale to ~512² pixels, round up to multiples of 64.
    res = parse(f"p\n{BASE}, Size: 1024x768, First pass size: 0x0")
    assert (res["Size-1"], res["Size-2"], res["Hires resize-1"], res["Hires resize-2"]) == (
        640,
        448,
        1024,
        768,
    )


def test_hypernet_is_appended_to_the_prompt() -> None:
    assert parse(f"a cat\n{BASE}, Hypernet: anime")["Prompt"] == "a cat<hypernet:anime:1.0>"
    res = parse(f"a cat\n{BASE}, Hypernet: anime, Hypernet strength: 0.5")
    assert res["Prompt"] == "a cat<hypernet:anime:0.5>"


def test_conditional_defaults() -> None:
    res = parse(f"p\n{BASE}, FP8 weight: Enable for SDXL")
    assert res["Cache FP16 weight for LoRA"] is False
    assert "Cache FP16 weight for LoRA" not in parse(f"p\n{BASE}")
    # A non-WxH Hires resize keeps its key and still gets the -1/-2 defaults.
    res = parse(f"p\n{BASE}, Hires resize: big")
    assert (res["Hires resize"], res["Hires resize-1"], res["Hires resize-2"]) == ("big", 0, 0)
    assert parse(f"p\n{BASE}, Emphasis: No norm")["Emphasis"] == "No norm"


@pytest.mark.parametrize(
    ("prompt", "negative", "expected"),
    [
        ("a (b) c", "", True),
        ("plain", "[x]", True),
        ("\\(literal\\)", "", False),
        ("a BREAK b", "", False),
        ("(a BREAK b:1.5)", "", True),
        ("(a:1.0)", "", False),
        ("(BRE\\AK)", "", False),  # merges to the run "BREAK" at 1.1, which A1111's rule skips
        ("[(a)]", "", False),  # 1.1 / 1.1 is exactly 1.0
        ("a) b]", "", False),
    ],
)
def test_emphasis_rule(prompt: str, negative: str, expected: bool) -> None:
    assert uses_emphasis(prompt, negative) is expected
    assert ("Emphasis" in parse(f"{prompt}\nNegative prompt: {negative}\n{BASE}")) is expected


@pytest.mark.parametrize(
    ("version", "flags"),
    [
        ("v1.5.2", {"Downcast alphas_cumprod", "Old prompt editing timelines", "Pad conds v0"}),
        ("v1.6.0", {"Downcast alphas_cumprod"}),
        ("v1.7.0-224-gabc1234", {"Downcast alphas_cumprod"}),
        ("v1.7.0-225-gabc1234", set()),
        ("v1.10.1", set()),
        ("not a version", set()),
        ("9" * 5000, set()),  # int()'s digit limit inside packaging: no version, as any parse failure
        ("1." + "9" * 5000, set()),
    ],
)
def test_backcompat_by_version(version: str, flags: set[str]) -> None:
    res = parse(f"a [b:c:3]\nSteps: 20, Sampler: PLMS, Seed: 1, Version: {version}")
    all_flags = {"Downcast alphas_cumprod", "Old prompt editing timelines", "Pad conds v0"}
    assert {f for f in all_flags if res.get(f) is True} == flags
    assert (
        set(parse(f"a [b:c:3]\nSteps: 20, Sampler: PLMS, Version: {version}", backcompat=False)) & flags
        == set()
    )


def test_backcompat_refiner() -> None:
    res = parse(f"p\n{BASE}, Refiner: sdxl_refiner, Version: v1.7.0")
    assert res["Refiner switch by sampling steps"] is True
    res = parse(f"p\n{BASE}, Refiner: sdxl_refiner, Version: v1.8.0")
    assert res["Refiner switch by sampling steps"] is False


def test_skip_fields() -> None:
    res = parse(f"p\n{BASE}, Clip skip: 2", skip_fields=["Seed", "Clip skip", "RNG"])
    assert "Seed" not in res
    assert "Clip skip" not in res
    assert "RNG" not in res
    assert res["Steps"] == "20"


# --- format and ordering ----------------------------------------------------------------------------------

CAT_FIXED: dict[str, object] = {
    "Steps": 20,
    "Sampler": "Euler a",
    "Schedule type": "Automatic",
    "CFG scale": 7.0,
    "Image CFG scale": None,
    "Seed": 123,
    "Face restoration": None,
    "Size": "512x512",
    "Model hash": "6ce0161689",
    "Model": "v1-5-pruned-emaonly",
    "Variation seed": None,
    "Version": "v1.10.1",
    "User": None,
}
CAT_TEXT = (
    "a cat\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.0, Seed: 123, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
)


def test_reference_api_txt2img_infotext() -> None:
    assert format("a cat", "", ordered_params(CAT_FIXED, {})) == CAT_TEXT


def test_reference_hires_infotext() -> None:
    extra = {"Denoising strength": 0.7, "Hires upscale": 2.0, "Hires upscaler": "Latent"}
    expected = CAT_TEXT.replace(
        ", Version:", ", Denoising strength: 0.7, Hires upscale: 2.0, Hires upscaler: Latent, Version:"
    )
    assert format("a cat", "", ordered_params(CAT_FIXED, extra)) == expected


def test_ordered_params_rules() -> None:
    fixed = {"Steps": 20, "Seed": 1, "Version": "v1.10.1", "User": "bob"}
    extra = {"Zeta": 1, "Schedule type": "Karras", "Version": "ignored", "Alpha": None, "Beta": 2}
    assert list(ordered_params(fixed, extra).items()) == [
        ("Steps", 20),
        ("Schedule type", "Karras"),
        ("Seed", 1),
        ("Zeta", 1),
        ("Beta", 2),
        ("Version", "v1.10.1"),
        ("User", "bob"),
    ]
    assert FIXED_KEYS[:3] == ("Steps", "Sampler", "Schedule type")
    assert FIXED_KEYS[-1] == "Tiling"
    assert len(FIXED_KEYS) == 26
    assert TRAILING_KEYS == ("Version", "User")
    with pytest.raises(ValueError, match="Hires upscale"):
        ordered_params({"Hires upscale": 2.0}, {})


def test_format_layout() -> None:
    params = {"Steps": 20, "Tiling": "Tiling", "Lora hashes": "a: 1, b: 2", "Skip": None, "Eta": 0.5}
    text = format("line one\nline two", "neg", params)
    assert (
        text
        == 'line one\nline two\nNegative prompt: neg\nSteps: 20, Tiling, Lora hashes: "a: 1, b: 2", Eta: 0.5'
    )
    assert format("", "", {"Steps": 1}) == "Steps: 1"
    assert format("  p  ", "", {}) == "p"


# --- format ∘ parse -----------------------------------------------------------------------------------------

# Keys with their own parse semantics (tested above), excluded from the round trip.
RESERVED = {
    "Prompt", "Negative prompt", "Styles array", "Hypernet", "Hypernet strength", "First pass size",
    "Hires resize", "Version", "FP8 weight", "Cache FP16 weight for LoRA", "Emphasis", "Refiner",
    "Old prompt editing timelines", "Pad conds v0", "Downcast alphas_cumprod",
}  # fmt: skip
REAL_KEYS = [
    "Steps",
    "Sampler",
    "CFG scale",
    "Seed",
    "Size",
    "Model hash",
    "Clip skip",
    "Schedule type",
    "RNG",
]
SPECIAL_CHARS = list(',:"\\\n -/x1')
CHARS = st.one_of(st.sampled_from(SPECIAL_CHARS), st.characters(codec="utf-8"))


def _lines_text() -> st.SearchStrategy[str]:
    # parse strips every prompt line, reads a "Negative prompt:" line as the start of the negative prompt and
    # drops empty lines before the first text (strip of the whole text / of the negative prompt's first line).
    # ( and [ would add the Emphasis key (tested separately).
    chars = CHARS.filter(lambda c: c not in "\n([")
    line = st.text(chars, max_size=12).map(str.strip).filter(lambda ln: not ln.startswith("Negative prompt:"))
    return st.lists(line, max_size=3).map(lambda lines: "\n".join(lines).lstrip("\n"))


def _needs_quote(value: str) -> bool:
    return any(c in value for c in ",:\n")


def _representable_value(value: str) -> bool:
    if not value:
        return False  # A1111 drops empty values with a parse error
    if _needs_quote(value):
        return True  # JSON-quoted: exact
    # Unquoted: `:\s*` eats leading whitespace and the final strip trailing whitespace. One starting with `"`
    # is read by the regex's quoted alternative: JSON-decoded if it also ends with `"`, and it can swallow
    # the following parameters up to a later `"` (test_lossy_unquoted_value_starting_with_a_quote).
    return value == value.strip() and value[0] != '"'


WORD_CHARS = st.one_of(st.characters(categories=("L", "Nd")), st.just("_"))
KEYS = st.one_of(
    st.sampled_from(REAL_KEYS),
    st.builds(
        operator.add,
        WORD_CHARS,
        st.text(st.one_of(WORD_CHARS, st.sampled_from(" -/")), min_size=1, max_size=12),
    ),
).filter(lambda k: re.fullmatch(r"\w[\w \-/]+", k) and k not in RESERVED and not k.endswith(("-1", "-2")))
VALUES = st.one_of(
    st.text(CHARS, min_size=1, max_size=16),
    st.from_regex(r"\d{1,4}x\d{1,4}\n?", fullmatch=True),  # WxH, also before a final newline
)


def _pair_ok(pair: tuple[str, str]) -> bool:
    return _representable_value(pair[1]) and pair[1] != pair[0]  # a value equal to its key prints bare


PARAMS = st.lists(
    st.tuples(KEYS, VALUES).filter(_pair_ok), min_size=3, max_size=7, unique_by=lambda p: p[0]
).map(dict)


@settings(max_examples=300, deadline=None)
@given(prompt=_lines_text(), negative=_lines_text(), params=PARAMS)
def test_parse_inverts_format(prompt: str, negative: str, params: dict[str, str]) -> None:
    expected: dict[str, object] = {**DEFAULTS, "Prompt": prompt, "Negative prompt": negative}
    for key, value in params.items():
        m = re.match(r"^(\d+)x(\d+)$", value)  # A1111's size rule; `$` also matches before a final "\n"
        if m:
            expected[f"{key}-1"], expected[f"{key}-2"] = m.groups()
        else:
            expected[key] = value
    assert_same(parse(format(prompt, negative, params)), expected)


# --- what A1111's format cannot represent (each is A1111 behaviour) ----------------------------------------


def test_lossy_value_equal_to_key_and_empty_and_none() -> None:
    text = format("p", "", {"Steps": "20", "Tiling": "Tiling", "Seed": "1", "Sampler": "", "Eta": None})
    assert text == "p\nSteps: 20, Tiling, Seed: 1, Sampler:"
    res = parse(text)
    assert "Tiling" not in res
    assert "Sampler" not in res
    assert "Eta" not in res


def test_lossy_unquoted_whitespace_and_json_lookalikes() -> None:
    res = parse(format("p", "", {"Aa": " x", "Bb": "y ", "Cc": '"json"', "Dd": '"not" json', "Ee": "z "}))
    assert (res["Aa"], res["Bb"], res["Cc"], res["Dd"], res["Ee"]) == ("x", "y ", "json", '"not" json', "z")


def test_lossy_prompt_lines() -> None:
    res = parse(format(" a \n\tb", "\nNegative prompt: n\nNegative prompt: m", {"Aa": 1, "Bb": 2, "Cc": 3}))
    assert res["Prompt"] == "a\nb"
    assert res["Negative prompt"] == "n\nm"
    res = parse(format("Negative prompt: x", "", {"Aa": 1, "Bb": 2, "Cc": 3}))
    assert (res["Prompt"], res["Negative prompt"]) == ("", "x")


def test_lossy_size_with_trailing_newline() -> None:
    res = parse(format("p", "", {"Aa": "1", "Bb": "2", "Size": "512x768\n"}))
    assert (res["Size-1"], res["Size-2"]) == ("512", "768")
    assert "Size" not in res


def test_lossy_unquoted_value_starting_with_a_quote() -> None:
    text = format("", "", {"Steps": ",", "Sampler": '"\\', "Seed": ","})
    assert text == 'Steps: ",", Sampler: "\\, Seed: ","'
    res = parse(text)  # `"\, Seed: "` is one quoted value: only 2 parameters, so the line is the prompt
    assert res["Prompt"] == text
    assert "Steps" not in res
    res = parse(format("p", "", {"Aa": '"x\\', "Bb": "1", "Cc": 'y"', "Dd": "2", "Ee": "3"}))
    assert res["Aa"] == '"x\\, Bb: 1, Cc: y"'
    assert "Bb" not in res
    assert res["Dd"] == "2"
