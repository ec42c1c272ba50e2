"""Text → conditioning tensors for each family (SD1 CLIP-L, SD2 OpenCLIP-H, SDXL CLIP-L + bigG).

A1111 semantics (reference §3.5): the prompt is parsed for emphasis, cut into 75-token chunks (BREAK,
comma backtracking, embeddings kept whole), each chunk encoded separately as ``[BOS] + 75 + [EOS]`` and the
results concatenated along the token axis: ``[B, 77·k, D]``. Emphasis multiplies each token's hidden state.

Layer choice per family:
- SD1: the last layer after the final LayerNorm; CLIP skip N takes ``hidden_states[-N]`` then the final LN.
- SD2: the penultimate layer of OpenCLIP-H, then the final LN (a diffusers SD2 folder already dropped the
  last layer, so its last layer is the same one). OpenCLIP pads with "!" after the first EOS.
- SDXL: penultimate layer of both encoders without LN, concatenated (768 + 1280 = 2048); the pooled output
  is bigG's projected final state of the first chunk; size/crop/target-size conditioning as ``time_ids``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import torch

from latentstudio.core import Conditioning
from latentstudio.models.families import Family
from latentstudio.models.loader import Components
from latentstudio.prompts.attention import parse_attention
from latentstudio.prompts.chunks import Chunk, EmbeddingFinder, SpecialTokens, token_target, tokenize_line


class Emphasis(StrEnum):
    """A1111's emphasis modes (``emphasis`` option)."""

    ORIGINAL = "Original"  # multiply, then restore the mean of the chunk's hidden states
    NO_NORM = "No norm"  # multiply only
    IGNORE = "Ignore"  # parse the brackets but do not weight
    NONE = "None"  # no parsing: brackets are literal text


@dataclass(frozen=True)
class TextOptions:
    """Everything besides the text that changes its encoding (and so belongs in a cache key)."""

    clip_skip: int = 1
    emphasis: Emphasis = Emphasis.ORIGINAL
    size: tuple[int, int] | None = None  # SDXL: (height, width)
    aesthetic_score: float = 6.0  # SDXL refiner


Encoded = tuple[Conditioning, tuple[Any, ...]]  # a text's conditioning and the embeddings it used


class ConditioningCache:
    """An LRU of encoded prompts shared across jobs (A1111's persistent cond cache).

    Keys hold everything that changes an encoding: checkpoint (the Components object), encoder options,
    the embedding database, the text-encoder LoRA patches and the text. Only the worker that owns the
    models uses it (one thread).
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._items: OrderedDict[tuple[Hashable, ...], Encoded] = OrderedDict()

    def get_or_encode(  # noqa: PLR0917 - every part of the key
        self,
        components: Components,
        text: str,
        options: TextOptions,
        database: Hashable,
        encode: Callable[[], Encoded],
        networks: Hashable = (),
    ) -> Encoded:
        """The cached encoding of ``text`` (conditioning + embeddings it used), ``encode()`` on a miss.

        ``networks`` identifies the LoRA patches in force on the text encoders (they change the encoding).
        """
        key = (id(components), components.path, text, options, id(database), networks)
        found = self._items.get(key)
        if found is None:
            found = encode()
            self._items[key] = found
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        return found


def token_count(components: Components, text: str, emphasis: Emphasis = Emphasis.ORIGINAL) -> tuple[int, int]:
    """The UI's token counter for the first text encoder: ``(23, 75)`` → "23/75"."""
    name = next(iter(components.tokenizers))
    _, count = prompt_chunks(components, name, text, emphasis)
    return count, token_target(count)


def _special(components: Components, name: str) -> SpecialTokens:
    tokenizer = components.tokenizers[name]
    comma = cast(int, tokenizer.convert_tokens_to_ids(",</w>"))
    return SpecialTokens(int(tokenizer.bos_token_id), int(tokenizer.eos_token_id), comma)


def prompt_chunks(
    components: Components,
    name: str,
    text: str,
    emphasis: Emphasis = Emphasis.ORIGINAL,
    find_embedding: EmbeddingFinder | None = None,
) -> tuple[list[Chunk], int]:
    """The chunks of ``text`` for encoder ``name`` and its token count (for the ``23/75`` counter)."""
    tokenizer = components.tokenizers[name]
    parsed = [(text, 1.0)] if emphasis is Emphasis.NONE else parse_attention(text)

    def tokenize(texts: list[str]) -> list[list[int]]:
        ids: list[list[int]] = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
        return ids

    kwargs: dict[str, Any] = {} if find_embedding is None else {"find_embedding": find_embedding}
    return tokenize_line(parsed, tokenize, special=_special(components, name), **kwargs)


@contextmanager
def _embedding_fixes(
    encoder: torch.nn.Module, fixes: Sequence[Sequence[tuple[int, Any]]], name: str
) -> Iterator[None]:
    """Replace token embeddings at the fixes' positions (after BOS) with the embedding's vectors.

    ``fixes[b]``: ``(offset, embedding)`` for row b; ``embedding.vectors[name]`` is ``[n, D]``.
    """
    if not any(fixes):
        yield
        return
    text_model: Any = getattr(encoder, "text_model", encoder)
    token_embedding = cast(torch.nn.Module, text_model.embeddings.token_embedding)

    def hook(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row, row_fixes in enumerate(fixes):
            for offset, embedding in row_fixes:
                vectors = embedding.vectors[name].to(output.device, output.dtype)
                output[row, offset + 1 : offset + 1 + vectors.shape[0]] = vectors
        return output

    handle = token_embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _encode_chunk_batch(
    components: Components, name: str, chunks: Sequence[Chunk], options: TextOptions
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk per prompt → hidden ``[B, 77, D]`` (emphasis applied) and pooled ``[B, P]`` or None."""
    encoder = components.text_encoders[name]
    ids = torch.tensor([c.tokens for c in chunks], dtype=torch.long)
    pad = components.tokenizers[name].pad_token_id
    if pad is not None and pad != ids[0, -1]:  # OpenCLIP: "!" after the first EOS of each chunk
        eos = int(components.tokenizers[name].eos_token_id)
        for row in ids:
            first = int((row == eos).nonzero()[0])
            row[first + 1 :] = int(pad)
    with _embedding_fixes(encoder, [c.fixes for c in chunks], name):
        hidden, pooled = encode_tokens(components, name, ids, options.clip_skip)
    if options.emphasis in (Emphasis.ORIGINAL, Emphasis.NO_NORM):
        weights = torch.tensor([c.multipliers for c in chunks], dtype=hidden.dtype, device=hidden.device)
        original_mean = hidden.mean()
        hidden = hidden * weights[..., None]
        if options.emphasis is Emphasis.ORIGINAL:
            hidden = hidden * (original_mean / hidden.mean())
    return hidden, pooled


def _penultimate_is_last(components: Components, name: str) -> bool:
    """A diffusers SD2 folder ships OpenCLIP-H without its last layer (23 of 24)."""
    layers: int = components.text_encoders[name].config.num_hidden_layers
    return components.info.family is Family.SD2 and layers == 23


def encode_tokens(
    components: Components, name: str, ids: torch.Tensor, clip_skip: int = 1
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states ``[B, T, D]`` (and pooled ``[B, P]`` for projection models) of one encoder.

    ``clip_skip`` (A1111's ``CLIP_stop_at_last_layers``) applies to SD1 only, as in A1111: SD2 always takes
    OpenCLIP's penultimate layer (then ``ln_final``), and SDXL the penultimate layer of both encoders
    without a final norm (A1111 ignores the setting there unless ``sdxl_clip_l_skip`` is on).
    """
    encoder = components.text_encoders[name]
    family = components.info.family
    out = encoder(ids.to(components.device), output_hidden_states=True)
    hidden = out.hidden_states
    pooled = getattr(out, "text_embeds", None)
    text_model = getattr(encoder, "text_model", encoder)  # transformers 5: CLIPTextModel has no wrapper
    final_norm = cast(Callable[[torch.Tensor], torch.Tensor], text_model.final_layer_norm)
    if family in (Family.SDXL, Family.SDXL_REFINER):
        return hidden[-2], pooled
    if family is Family.SD2:
        return final_norm(hidden[-1 if _penultimate_is_last(components, name) else -2]), pooled
    if clip_skip <= 1:
        return out.last_hidden_state, pooled
    return final_norm(hidden[-clip_skip]), pooled


def _encode_encoder(
    components: Components,
    name: str,
    texts: Sequence[str],
    options: TextOptions,
    finder: EmbeddingFinder | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All chunks of all prompts through one encoder: ``[B, 77·k, D]`` (k = the most chunks of any prompt;
    shorter prompts get empty chunks, as A1111) and the first chunk's pooled output."""
    per_prompt = [prompt_chunks(components, name, t, options.emphasis, finder)[0] for t in texts]
    empty = prompt_chunks(components, name, "", options.emphasis)[0][0]
    count = max(len(c) for c in per_prompt)
    hidden_parts, pooled = [], None
    for i in range(count):
        batch = [chunks[i] if i < len(chunks) else empty for chunks in per_prompt]
        hidden, pool = _encode_chunk_batch(components, name, batch, options)
        hidden_parts.append(hidden)
        pooled = pool if i == 0 else pooled
    return torch.cat(hidden_parts, dim=1), pooled


def sdxl_time_ids(
    original_size: tuple[int, int], crop: tuple[int, int], target_size: tuple[int, int]
) -> torch.Tensor:
    """SDXL base micro-conditioning ``[1, 6]``: (h, w) original, (top, left) crop, (h, w) target."""
    return torch.tensor([[*original_size, *crop, *target_size]], dtype=torch.float32)


def encode_prompts(
    components: Components,
    texts: Sequence[str],
    options: TextOptions = TextOptions(),
    find_embedding: Callable[[str], EmbeddingFinder | None] | None = None,
) -> Conditioning:
    """Conditioning of a batch of prompts: ``context [B, 77·k, D]`` (+ SDXL pooled and time ids).

    ``find_embedding(encoder_name)`` gives the textual-inversion lookup for that encoder's tokens.
    """
    with torch.inference_mode():
        states, pooled = [], None
        for name in components.text_encoders:
            finder = None if find_embedding is None else find_embedding(name)
            hidden, pool = _encode_encoder(components, name, texts, options, finder)
            states.append(hidden)
            pooled = pool if pool is not None else pooled
        context = torch.cat(states, dim=-1).to(components.dtype)
        if components.info.family not in (Family.SDXL, Family.SDXL_REFINER):
            return Conditioning(context)
        if pooled is None:
            raise ValueError(f"{components.path}: SDXL conditioning needs the pooled text embedding")
        return Conditioning(context, _sdxl_extra(components, pooled, len(texts), options))


def _sdxl_extra(
    components: Components, pooled: torch.Tensor, batch: int, options: TextOptions
) -> dict[str, Any]:
    height, width = options.size or (components.info.native_size, components.info.native_size)
    if components.info.family is Family.SDXL_REFINER:
        time_ids = torch.tensor([[height, width, 0, 0, options.aesthetic_score]], dtype=torch.float32)
    else:
        time_ids = sdxl_time_ids((height, width), (0, 0), (height, width))
    extra = {"text_embeds": pooled, "time_ids": time_ids.expand(batch, -1)}
    return {k: v.to(components.device, components.dtype) for k, v in extra.items()}
