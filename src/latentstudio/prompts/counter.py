"""A1111's prompt token counter (the ``23/75`` beside the prompt box), without loading a model.

As A1111's ``update_token_counter``: comments and network tags removed, the ``AND`` parts and every
prompt-editing / alternation text over ``steps`` tokenized, and the longest one counted; chunks of 75
with comma backtracking and ``BREAK``. SD1, SD2 and SDXL share the CLIP BPE vocabulary, so the shared
tokenizer counts for every family. Embedding names count as their words (a loaded model would count their
vectors instead).
"""

from __future__ import annotations

from typing import cast

from latentstudio.models.tokenizer import clip_tokenizer
from latentstudio.prompts.attention import parse_attention
from latentstudio.prompts.chunks import SpecialTokens, token_target, tokenize_line
from latentstudio.prompts.editing import schedules
from latentstudio.prompts.errors import PromptError
from latentstudio.prompts.networks import extract_networks
from latentstudio.prompts.parser import split_and, strip_comments


def count_tokens(prompt: str, steps: int = 20) -> tuple[int, int]:
    """``(tokens, bound)`` for the longest text ``prompt`` conditions on: ``(23, 75)``, ``(80, 150)``.

    Never raises on odd prompts: an unparsable schedule counts the prompt as written (as A1111), and a
    prompt the job would refuse counts as plain words.
    """
    tokenizer = clip_tokenizer()
    special = SpecialTokens(
        int(tokenizer.bos_token_id),
        int(tokenizer.eos_token_id),
        cast(int, tokenizer.convert_tokens_to_ids(",</w>")),
    )

    def tokenize(texts: list[str]) -> list[list[int]]:
        ids: list[list[int]] = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)[
            "input_ids"
        ]
        return ids

    def parsed(text: str) -> list[tuple[str, float]]:
        try:
            return parse_attention(text)
        except PromptError:  # a bad weight such as (x:1.2.3): the job refuses it; count the words anyway
            return [(text, 1.0)]

    text, _ = extract_networks(strip_comments(prompt))
    texts: list[str] = []
    for part, _weight in split_and(text):
        try:
            texts += [t for _, t in schedules(part, max(1, steps))]
        except PromptError:
            texts.append(part)
    counts = [tokenize_line(parsed(t), tokenize, special=special)[1] for t in dict.fromkeys(texts)]
    count = max(counts, default=0)
    return count, token_target(count)
