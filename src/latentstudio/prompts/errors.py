"""The ground every prompt parser here stands on: :class:`PromptError` and the prompt length limit.

Every parsing function in :mod:`latentstudio.prompts` calls :func:`check_length` first, so a prompt longer
than :data:`MAX_PROMPT_CHARS` is rejected at once, before any work that grows with its length.
"""

from __future__ import annotations

MAX_PROMPT_CHARS = 100_000
"""Longest prompt any function here accepts (A1111 has no limit). 100 000 characters is ~25 000 CLIP tokens,
333 chunks of 75; the server's own limit is lower. Keeps each function's worst case well under a second."""


class PromptError(ValueError):
    """A prompt that cannot be used, with the reason (and the position where there is one)."""


def check_length(prompt: str) -> None:
    """Reject a prompt longer than :data:`MAX_PROMPT_CHARS`."""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptError(f"prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
