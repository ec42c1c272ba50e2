"""A1111's token counter (``latentstudio.prompts.counter``): longest scheduled text, tags and comments out."""

from __future__ import annotations

import pytest

from latentstudio.prompts.counter import count_tokens


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        ("", 20, (0, 75)),
        ("a cat", 20, (2, 75)),
        ("a red circle, (big:1.2)", 20, (5, 75)),  # emphasis brackets and weights are not tokens
        ("[cat:a very big dog:5]", 20, (4, 75)),  # the longest text of the edit schedule
        ("[cat|a very big dog]", 20, (4, 75)),  # alternation: every option is a text
        ("a cat AND a very big dog", 20, (4, 75)),  # the longest AND part
        ("<lora:detail:0.8> a cat <hypernet:x:1>", 20, (2, 75)),  # network tags are removed
        ("# a comment line\na cat", 20, (2, 75)),  # comments are removed
        ("a BREAK b", 20, (76, 150)),  # BREAK pads the first chunk to 75
        ("a, " * 40, 20, (80, 150)),  # 80 tokens; the comma at 76 closes the chunk, nothing to move
        ("(x:1.2.3)", 20, (9, 75)),  # a prompt the job refuses still counts, as plain text: ( x : 1 . 2 . 3 )
    ],
)
def test_counts_like_a1111(prompt: str, steps: int, expected: tuple[int, int]) -> None:
    assert count_tokens(prompt, steps) == expected
