"""A1111 75-token chunking: BREAK, comma backtracking, embeddings never split, counts (reference §3.5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from latentstudio.prompts.chunks import CHUNK_LENGTH, SpecialTokens, token_target, tokenize_line

SPECIAL = SpecialTokens(start=1, end=2, comma=3)


def _words(texts: list[str]) -> list[list[int]]:
    """A toy tokenizer: one token per space-separated word; "," is the comma token, "wN" is id N."""
    return [
        [3 if w == "," else int(w[1:]) for w in t.split() if w == "," or w.startswith("w")] for t in texts
    ]


def _text(n: int, start: int = 10) -> str:
    return " ".join(f"w{start + i}" for i in range(n))


def test_short_prompt_is_one_padded_chunk() -> None:
    chunks, count = tokenize_line([(_text(3), 1.0)], _words, special=SPECIAL)
    assert count == 3
    assert len(chunks) == 1
    assert chunks[0].tokens == [1, 10, 11, 12, *[2] * 72, 2]
    assert len(chunks[0].tokens) == CHUNK_LENGTH + 2
    assert chunks[0].multipliers == [1.0] * 77


def test_empty_prompt_gives_one_chunk_of_padding() -> None:
    chunks, count = tokenize_line([("", 1.0)], _words, special=SPECIAL)
    assert count == 0
    assert chunks[0].tokens == [1, *[2] * 76]


def test_long_prompt_splits_at_75_and_weights_follow_their_tokens() -> None:
    chunks, count = tokenize_line([(_text(70), 1.0), (_text(10, 200), 1.5)], _words, special=SPECIAL)
    assert count == 80
    assert len(chunks) == 2
    assert chunks[0].tokens[71:76] == [200, 201, 202, 203, 204]
    assert chunks[0].multipliers[71:76] == [1.5] * 5
    assert chunks[1].tokens[1:6] == [205, 206, 207, 208, 209]
    assert chunks[1].tokens[6] == 2
    assert token_target(count) == 150
    assert token_target(23) == 75
    assert token_target(0) == 75


def test_break_closes_the_chunk() -> None:
    chunks, count = tokenize_line(
        [(_text(2), 1.0), ("BREAK", -1.0), (_text(2, 50), 1.0)], _words, special=SPECIAL
    )
    assert len(chunks) == 2
    assert chunks[0].tokens[:4] == [1, 10, 11, 2]
    assert chunks[1].tokens[:4] == [1, 50, 51, 2]
    assert count == 75 + 2


def test_comma_backtrack_moves_the_tail_after_a_nearby_comma() -> None:
    text = f"{_text(60)} , {_text(20, 100)}"  # comma at index 60; 75 reached inside the second part
    chunks, _ = tokenize_line([(text, 1.0)], _words, special=SPECIAL)
    assert chunks[0].tokens[60 + 1] == 3  # the comma stays, then padding
    assert chunks[0].tokens[62:76] == [2] * 14
    assert chunks[1].tokens[1:21] == list(range(100, 120))
    far = f"{_text(10)} , {_text(70, 100)}"  # comma 65 tokens before the boundary: no backtrack
    chunks, _ = tokenize_line([(far, 1.0)], _words, special=SPECIAL)
    assert chunks[0].tokens[75] == 163
    disabled, _ = tokenize_line([(text, 1.0)], _words, special=SPECIAL, backtrack=0)
    assert disabled[0].tokens[75] == 113


@dataclass(frozen=True)
class _Emb:
    name: str
    vector_count: int


def test_embeddings_become_placeholders_and_are_never_split() -> None:
    emb = _Emb("style", 4)

    def find(tokens: Sequence[int], position: int) -> tuple[_Emb | None, int]:
        return (emb, 2) if tokens[position : position + 2] == [900, 901] else (None, 0)

    chunks, count = tokenize_line(
        [(f"{_text(3)} w900 w901 w20", 1.2)], _words, special=SPECIAL, find_embedding=find
    )
    assert chunks[0].tokens[:9] == [1, 10, 11, 12, 0, 0, 0, 0, 20]
    assert chunks[0].fixes == [(3, emb)]
    assert chunks[0].multipliers[4:8] == [1.2] * 4
    assert count == 8
    chunks, _ = tokenize_line([(f"{_text(73)} w900 w901", 1.0)], _words, special=SPECIAL, find_embedding=find)
    assert len(chunks) == 2  # 73 + 4 > 75: the chunk closes before the embedding
    assert chunks[1].fixes == [(0, emb)]
    assert chunks[0].tokens[74:76] == [2, 2]


def test_comma_backtrack_boundary_is_twenty_by_default() -> None:
    """§3.5: backtrack when ``75 − last_comma_index ≤ 20`` (the default), and only then."""
    at_limit = f"{_text(55)} , {_text(30, 100)}"  # comma at index 55: 75 − 55 = 20
    chunks, _ = tokenize_line([(at_limit, 1.0)], _words, special=SPECIAL)
    assert chunks[0].tokens[56] == 3
    assert chunks[0].tokens[57:76] == [2] * 19
    assert chunks[1].tokens[1:20] == list(range(100, 119))
    past_limit = f"{_text(54)} , {_text(30, 100)}"  # comma at index 54: 75 − 54 = 21, no backtrack
    chunks, _ = tokenize_line([(past_limit, 1.0)], _words, special=SPECIAL)
    assert chunks[0].tokens[55] == 3
    assert chunks[0].tokens[56:76] == list(range(100, 120))


def test_weighted_break_is_a_literal_word_and_bos_eos_keep_weight_one() -> None:
    """§3.2/§3.5: only weight exactly −1 breaks; ``(a BREAK b:1.5)`` gives BREAK at −1.5, encoded as text."""

    def tokenize(texts: list[str]) -> list[list[int]]:
        return [[99 if w == "BREAK" else int(w[1:]) for w in t.split()] for t in texts]

    parsed = [("w10", 1.5), ("BREAK", -1.5), ("w11", 1.5)]
    chunks, count = tokenize_line(parsed, tokenize, special=SPECIAL)
    assert len(chunks) == 1
    assert count == 3
    assert chunks[0].tokens[:5] == [1, 10, 99, 11, 2]
    assert chunks[0].multipliers[:5] == [1.0, 1.5, -1.5, 1.5, 1.0]
    assert chunks[0].multipliers[76] == 1.0
