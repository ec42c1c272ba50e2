"""CLIP tokenizers built offline: known ids, padding/truncation, parity with OpenAI's reference, no network.

The reference is ``open_clip.tokenizer.SimpleTokenizer`` (OpenAI's implementation, copied into open_clip), run
on the same BPE file. One narrow, documented exclusion: open_clip renamed OpenAI's special tokens to
``<start_of_text>``/``<end_of_text>``, so text that *spells out* a special token is tokenized differently by
the reference than by OpenAI's original (which ours follows); `test_special_token_literals` pins both.
"""

from __future__ import annotations

import copy
import html
import os
import pickle
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from latentstudio.models.tokenizer import (
    CLIP_BOS_ID,
    CLIP_EOS_ID,
    CLIP_MAX_LENGTH,
    CLIP_VOCAB_SIZE,
    OpenAICLIPTokenizer,
    PadToken,
    build_clip_tokenizer,
    clean_text,
    clip_tokenizer,
    load_clip_bpe,
)

PAD_IDS: dict[PadToken, int] = {"endoftext": CLIP_EOS_ID, "!": 0}
_SPECIAL_LITERALS = ("<|startoftext|>", "<|endoftext|>", "<start_of_text>", "<end_of_text>")
_HYPOTHESIS = settings(max_examples=300, deadline=None, database=None)

BASE_PROMPTS = [
    "a photo of a cat",
    "masterpiece, best quality, 1girl, solo, looking at viewer, (smile:1.2), [blue|red] hair",
    "A cozy cabin in the woods at night, snow falling, warm light; by Greg Rutkowski & Alphonse Mucha",
    "it's a dog's life, isn't it? they'll say we've done what I'd've",
    "(((dramatic lighting))), <lora:detail_tweaker:0.8>, BREAK sharp focus, 8k uhd, f/1.8, 85mm",
    "price: $1,299.99 — 50% off!!! call 555-0100 #deal @store",
    "café naïve façade résumé jalapeño Über Straße ΣΊΣΥΦΟΣ İstanbul",
    "東京の夜景、ネオン、雨 · 서울 야경 · 北京烤鸭 · Москва зимой · القاهرة · עברית · हिन्दी",
    "emoji 🐱🐶 👩‍🚀 🇫🇷 ❤️ 👍🏽 🏳️‍🌈 ✨✨✨",
    "“curly quotes” and ‘single’ … ellipsis – en dash — em dash",
    "ﬁne ﬂowers, ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ, ①②③, ½ ¼ ², ℃ № ™",
    "html &amp; entities &lt;b&gt; &quot;quoted&quot; &#39;single&#39; &amp;amp; &#x1F431; &nbsp;x",
    "mojibake: cafÃ© naÃ¯ve â€œquotedâ€\x9d",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp\u2003em-space\u3000ideographic   many    spaces  ",
    "zero\u200bwidth\u200djoiner\ufeffbom soft\u00adhyphen",
    "combining e\u0301 vs é, a\u0308 vs ä, ypogegrammeni \u0345 in text",
    "numbers 0123456789 3.14159 1e-10 -42 +7 0x1F 1,000,000",
    "snake_case kebab-case camelCase PascalCase SCREAMING_CASE dot.case path/to/file.png",
    "URL https://example.com/a?b=c&d=e#frag and email someone@example.org",
    "a" * 40 + " " + "b" * 40,
    "repeated repeated repeated words words words",
    "'s 't 're 've 'm 'll 'd ' ''' `backticks` \"double\"",
    "brackets [({<>})] and math ∑∫√∞≈≠≤≥ and arrows ←↑→↓ and boxes ┌─┐",
    "control\x00chars\x01\x07\x1b[31mred\x1b[0m",
    "",
    "   ",
    "!",
    "!!! ??? ...",
    "wow! amazing! hi!!",
    "portrait of a cyborg, intricate, elegant, highly detailed, digital painting, artstation, concept art",
    "ALL CAPS PROMPT WITH MIXED case And Title Case",
    "Ελληνικά κείμενα με τελικό σίγμα: ΟΔΟΣ, λόγος",
    "Devanagari नमस्ते, Thai สวัสดี, Tamil வணக்கம், Georgian გამარჯობა",
    "CJK ext: 𠀀𪜀𫝀𰀀 Tangut 𗀀 Cuneiform 𒀀 musical 𝄞 math 𝐀𝑨𝒜",
    "private use \ue000\U000f0000 and unassigned \U000e0100 \U0010fffd",
    "2 cats, 3 dogs and 10,000 birds; 1st 2nd 3rd 4th",
    "<lora:add_detail:1>, <hypernet:x:0.5>, embedding:easynegative, (worst quality:1.4)",
    "ending with punctuation.",
    "\u2028line separator\u2029paragraph separator\x85next line",
    "full stop。comma、quote「」『』",
]


def _variants(text: str) -> list[str]:
    """The text as written, in upper/title case, with spread-out whitespace, and HTML-escaped."""
    return [text, text.upper(), text.title(), "  " + text.replace(" ", " \t ") + "\n", html.escape(text)]


CURATED = list(dict.fromkeys(v for text in BASE_PROMPTS for v in _variants(text)))

FRAGMENTS = [
    "a",
    "photo",
    "of",
    "Cat",
    "DOG",
    " ",
    "  ",
    "\t",
    "\n",
    ",",
    ".",
    "!",
    "?",
    "'s",
    "'LL",
    "(",
    ")",
    "[",
    "]",
    ":1.2",
    "&amp;",
    "&lt;",
    "&gt;",
    "&quot;",
    "&#39;",
    "&#x41;",
    "&nbsp;",
    "&amp;amp;",
    "🐱",
    "👩‍🚀",
    "🇯🇵",
    "❤️",
    "42",
    "3.14",
    "1,000",
    "１２３",
    "ｆｕｌｌ",
    "é",
    "e\u0301",
    "ß",
    "İ",
    "Σ",
    "日本",
    "한국",
    "Ã©",
    "“",
    "”",
    "’",
    "—",
    "…",
    "ﬁ",
    "\u00a0",
    "\u200b",
    "\u0345",
    "\x00",
    "_",
    "-",
    "/",
    "#",
    "@",
    "<",
    ">",
    "|",
    "~",
]
PROMPTISH = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=40).map("".join)
MIXED_CASE_ASCII = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from(["\t", "\n", "\r"]),
    max_size=120,
)


@pytest.fixture(scope="module")
def reference() -> Any:
    """open_clip's copy of OpenAI's SimpleTokenizer (importing open_clip sets an env var: undone here)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    from open_clip.tokenizer import SimpleTokenizer  # slow import (torch): only for these tests

    if before is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = before
    return SimpleTokenizer()


def _ids(tokenizer: OpenAICLIPTokenizer, text: str) -> list[int]:
    ids: list[int] = tokenizer(text, add_special_tokens=False).input_ids
    return ids


def _names_special_token(text: str) -> bool:
    """The single exclusion from parity: text spelling out a special token (see the module docstring)."""
    cleaned = clean_text(text)
    return any(literal in cleaned for literal in _SPECIAL_LITERALS)


@pytest.mark.parametrize("pad", ["endoftext", "!"])
def test_known_ids(pad: PadToken) -> None:
    assert clip_tokenizer(pad)("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize("pad", ["endoftext", "!"])
def test_special_tokens_and_limits(pad: PadToken) -> None:
    tokenizer = clip_tokenizer(pad)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (49406, 49407, 49407)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        "<|startoftext|>",
        "<|endoftext|>",
        "<|endoftext|>",
    )
    assert tokenizer.pad_token_id == PAD_IDS[pad]
    assert tokenizer.model_max_length == CLIP_MAX_LENGTH
    assert len(tokenizer) == CLIP_VOCAB_SIZE
    assert tokenizer.get_added_vocab() == {"<|startoftext|>": 49406, "<|endoftext|>": 49407}


def test_vocab_and_merges_equal_reference(reference: Any) -> None:
    vocab, merges = load_clip_bpe()
    expected = dict(reference.encoder)
    expected["<|startoftext|>"] = expected.pop("<start_of_text>")
    expected["<|endoftext|>"] = expected.pop("<end_of_text>")
    assert vocab == expected
    assert merges == list(reference.bpe_ranks)
    assert len(vocab) == CLIP_VOCAB_SIZE
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"], vocab["!"]) == (CLIP_BOS_ID, CLIP_EOS_ID, 0)


def test_factory_is_cached_and_validates() -> None:
    assert clip_tokenizer() is clip_tokenizer("endoftext") is clip_tokenizer(pad="endoftext")
    assert clip_tokenizer("!") is not clip_tokenizer("endoftext")
    assert build_clip_tokenizer("!") is not clip_tokenizer("!")
    for factory in (clip_tokenizer, build_clip_tokenizer):
        with pytest.raises(ValueError, match="pad must be one of 'endoftext', '!'; got '<pad>'"):
            factory("<pad>")  # type: ignore[arg-type]


@pytest.mark.parametrize("pad", ["endoftext", "!"])
def test_pads_to_77_with_the_variant_pad_id(pad: PadToken, reference: Any) -> None:
    encoded = clip_tokenizer(pad)("a photo of a cat", padding="max_length", truncation=True)
    assert encoded.input_ids == [49406, 320, 1125, 539, 320, 2368, 49407] + [PAD_IDS[pad]] * 70
    assert encoded.attention_mask == [1] * 7 + [0] * 70
    if pad == "!":  # open_clip pads with zeros, i.e. "!": the whole row equals the reference
        assert encoded.input_ids == reference(["a photo of a cat"])[0].tolist()


@pytest.mark.parametrize("pad", ["endoftext", "!"])
def test_truncates_to_77_ending_with_eos(pad: PadToken, reference: Any) -> None:
    text = "a beautiful painting of a lighthouse, " * 20
    content = _ids(clip_tokenizer(pad), text)
    assert len(content) > 100
    ids = clip_tokenizer(pad)(text, padding="max_length", truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    row = ids[0].tolist()
    assert row == [CLIP_BOS_ID, *content[:75], CLIP_EOS_ID]
    assert row == reference([text])[0].tolist()


def test_exclamation_mark_is_not_a_special_token(reference: Any) -> None:
    """Padding with "!" must not make "!" special: "wow!" keeps "!</w>" (256), as in open_clip (SD2.x)."""
    for text in ["wow!", "hi!!", "!", "a ! b", "!!!?"]:
        assert (
            _ids(clip_tokenizer("!"), text)
            == _ids(clip_tokenizer("endoftext"), text)
            == reference.encode(text)
        )
    assert _ids(clip_tokenizer("!"), "wow!") == [2781, 256]


def test_batch_equals_single() -> None:
    tokenizer = clip_tokenizer()
    texts = ["a photo of a cat", "", "  HELLO &amp; World!  ", "🐱" * 3]
    batch = tokenizer(texts, padding="max_length", truncation=True).input_ids
    assert batch == [tokenizer(t, padding="max_length", truncation=True).input_ids for t in texts]
    assert tokenizer("").input_ids == [CLIP_BOS_ID, CLIP_EOS_ID]


def test_decode_round_trip() -> None:
    tokenizer = clip_tokenizer()
    ids = tokenizer("A Photo of a CAT, on a mat!").input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a photo of a cat , on a mat !"


def test_special_token_literals(reference: Any) -> None:
    """Spelled-out special tokens: ours (= OpenAI original) and open_clip differ only in the names."""
    tokenizer = clip_tokenizer()
    assert _ids(tokenizer, "a <|endoftext|> b") == [320, CLIP_EOS_ID, 321]
    assert _ids(tokenizer, "a <|STARTOFTEXT|> b") == [320, CLIP_BOS_ID, 321]
    assert reference.encode("a <end_of_text> b") == [320, CLIP_EOS_ID, 321]
    for ours, theirs in [("a <end_of_text> b", "a <|endoftext|> b"), ("<start_of_text>", "<|startoftext|>")]:
        spelled_out = _ids(tokenizer, ours), reference.encode(theirs)
        assert all(len(ids) > 3 and not {CLIP_BOS_ID, CLIP_EOS_ID} & set(ids) for ids in spelled_out)


def test_pretokenized_input_is_refused() -> None:
    with pytest.raises(ValueError, match="is_split_into_words"):
        clip_tokenizer()(["a", "cat"], is_split_into_words=True)


@pytest.mark.parametrize("pad", ["endoftext", "!"])
def test_curated_strings_equal_reference(pad: PadToken, reference: Any) -> None:
    assert len(CURATED) >= 150
    tokenizer = clip_tokenizer(pad)
    mismatches = [text for text in CURATED if _ids(tokenizer, text) != reference.encode(text)]
    assert mismatches == []


@_HYPOTHESIS
@given(text=st.text(max_size=200))
def test_any_unicode_text_equals_reference(text: str, reference: Any) -> None:
    assume(not _names_special_token(text))
    assert _ids(clip_tokenizer(), text) == reference.encode(text)


@_HYPOTHESIS
@given(text=PROMPTISH)
def test_promptlike_text_equals_reference(text: str, reference: Any) -> None:
    assume(not _names_special_token(text))
    assert _ids(clip_tokenizer("!"), text) == reference.encode(text)


@_HYPOTHESIS
@given(text=MIXED_CASE_ASCII)
def test_ascii_text_equals_reference(text: str, reference: Any) -> None:
    assume(not _names_special_token(text))
    assert _ids(clip_tokenizer(), text) == reference.encode(text)


def test_copies_are_independent_and_picklable() -> None:
    shared = clip_tokenizer("!")
    copied = copy.deepcopy(shared)
    copied.add_tokens(["<my-embedding>"])
    assert "<my-embedding>" not in shared.get_vocab()
    restored = pickle.loads(pickle.dumps(shared))
    assert (
        restored("wow! a cat", padding="max_length").input_ids
        == shared("wow! a cat", padding="max_length").input_ids
    )
    assert restored.decode(restored("wow! a cat").input_ids, skip_special_tokens=True) == "wow ! a cat"


def test_concurrent_calls_with_different_padding() -> None:
    """Each call reconfigures the shared Rust backend; concurrent calls must not see each other's settings."""
    tokenizer = clip_tokenizer()
    errors: list[str] = []

    def work(padded: bool) -> None:
        for _ in range(300):
            ids = tokenizer("a photo of a cat", padding="max_length" if padded else False).input_ids
            if len(ids) != (77 if padded else 7):
                errors.append(f"padded={padded}: {len(ids)} ids")

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def _refuse_network(*_args: object, **_kwargs: object) -> NoReturn:
    raise OSError("network access attempted")


def test_construction_opens_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, _refuse_network)
    monkeypatch.setattr(socket, "create_connection", _refuse_network)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse_network)
    for pad in ("endoftext", "!"):
        tokenizer = build_clip_tokenizer(pad)  # uncached: really constructs
        assert tokenizer("a photo of a cat").input_ids[-1] == CLIP_EOS_ID


_FRESH_PROCESS_CHECK = """
import os, socket, sys
def refuse(*a, **k):
    raise OSError("network access attempted")
socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = socket.getaddrinfo = refuse
env = dict(os.environ)
from latentstudio.models.tokenizer import clip_tokenizer
assert dict(os.environ) == env, "import changed the environment"
assert "open_clip" not in sys.modules and "torch" not in sys.modules, "import pulled in open_clip/torch"
assert clip_tokenizer("!")("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
print("ok")
"""


def test_fresh_process_import_and_construction_stay_offline_and_side_effect_free(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS_CHECK],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert list(tmp_path.iterdir()) == []
