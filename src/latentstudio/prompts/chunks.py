"""A1111's 75-token chunking (reference §3.5): BREAK, comma backtracking, embeddings kept whole.

Pure token arithmetic: the caller supplies the weighted text runs (from the attention parser), a tokenizer
without BOS/EOS, and an embedding lookup. Each chunk is ``[BOS] + 75 tokens + [EOS]`` with a multiplier per
token; embeddings become placeholder tokens plus a *fix* (offset, embedding) applied at encoding time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20  # A1111 ``comma_padding_backtrack`` default


class EmbeddingLike(Protocol):
    """What chunking needs from a textual-inversion embedding."""

    @property
    def name(self) -> str: ...

    @property
    def vector_count(self) -> int: ...


# (tokens, position) -> (embedding at that position or None, tokens it spans)
EmbeddingFinder = Callable[[Sequence[int], int], tuple[EmbeddingLike | None, int]]


@dataclass
class Chunk:
    """One 77-token window: ids, per-token emphasis multipliers, and embedding fixes ``(offset, emb)``
    where ``offset`` counts from the first token after BOS."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, EmbeddingLike]] = field(default_factory=list)


@dataclass(frozen=True)
class SpecialTokens:
    """Ids the chunker needs: BOS, EOS (also the pad inside chunks) and the ``,</w>`` token."""

    start: int = 49406
    end: int = 49407
    comma: int = 267


def _no_embeddings(tokens: Sequence[int], position: int) -> tuple[EmbeddingLike | None, int]:
    return None, 0


class _Chunker:
    """The state of one ``tokenize_line`` pass (kept in one object instead of nonlocal closures)."""

    def __init__(self, special: SpecialTokens, backtrack: int) -> None:
        self.special, self.backtrack = special, backtrack
        self.chunks: list[Chunk] = []
        self.chunk = Chunk()
        self.token_count = 0
        self.last_comma = -1

    def close(self, *, is_last: bool = False) -> None:
        """Pad the open chunk to 75 with EOS, wrap it in BOS/EOS and start a new one."""
        chunk = self.chunk
        self.token_count += len(chunk.tokens) if is_last else CHUNK_LENGTH
        padding = CHUNK_LENGTH - len(chunk.tokens)
        chunk.tokens = [self.special.start, *chunk.tokens, *[self.special.end] * padding, self.special.end]
        chunk.multipliers = [1.0, *chunk.multipliers, *[1.0] * padding, 1.0]
        self.chunks.append(chunk)
        self.chunk, self.last_comma = Chunk(), -1

    def make_room(self, token: int) -> None:
        """Before appending ``token``: note commas; when the chunk is full, move the text after a nearby
        comma to a new chunk (comma backtracking) or close it."""
        chunk = self.chunk
        if token == self.special.comma:
            self.last_comma = len(chunk.tokens)
        elif (
            self.backtrack
            and len(chunk.tokens) == CHUNK_LENGTH
            and self.last_comma != -1
            and len(chunk.tokens) - self.last_comma <= self.backtrack
        ):
            cut = self.last_comma + 1
            moved_tokens, moved_weights = chunk.tokens[cut:], chunk.multipliers[cut:]
            del chunk.tokens[cut:], chunk.multipliers[cut:]
            self.close()
            self.chunk.tokens, self.chunk.multipliers = moved_tokens, moved_weights
        if len(self.chunk.tokens) == CHUNK_LENGTH:
            self.close()

    def add_embedding(self, embedding: EmbeddingLike, weight: float) -> None:
        """Placeholders for an embedding's vectors; never split across chunks."""
        if len(self.chunk.tokens) + embedding.vector_count > CHUNK_LENGTH:
            self.close()
        self.chunk.fixes.append((len(self.chunk.tokens), embedding))
        self.chunk.tokens += [0] * embedding.vector_count
        self.chunk.multipliers += [weight] * embedding.vector_count


def tokenize_line(
    parsed: Sequence[tuple[str, float]],
    tokenize: Callable[[list[str]], list[list[int]]],
    *,
    special: SpecialTokens = SpecialTokens(),
    find_embedding: EmbeddingFinder = _no_embeddings,
    backtrack: int = COMMA_BACKTRACK,
) -> tuple[list[Chunk], int]:
    """Chunks of a parsed prompt and its token count (what the UI's ``23/75`` counts).

    ``parsed``: ``(text, weight)`` runs; ``("BREAK", -1.0)`` closes the chunk. ``tokenize`` maps texts to
    ids without BOS/EOS. An empty prompt gives one chunk of padding.
    """
    state = _Chunker(special, backtrack)
    for tokens, (text, weight) in zip(tokenize([text for text, _ in parsed]), parsed, strict=True):
        if text == "BREAK" and weight == -1:
            state.close()
            continue
        position = 0
        while position < len(tokens):
            state.make_room(tokens[position])
            embedding, span = find_embedding(tokens, position)
            if embedding is None:
                state.chunk.tokens.append(tokens[position])
                state.chunk.multipliers.append(weight)
                position += 1
            else:
                state.add_embedding(embedding, weight)
                position += span
    if state.chunk.tokens or not state.chunks:
        state.close(is_last=True)
    return state.chunks, state.token_count


def token_target(token_count: int) -> int:
    """The denominator the UI shows: ``ceil(max(n, 1) / 75) · 75`` (``23/75``, ``80/150``)."""
    return math.ceil(max(token_count, 1) / CHUNK_LENGTH) * CHUNK_LENGTH
