"""Text → conditioning tensors for each family (SD1 CLIP-L, SD2 OpenCLIP-H, SDXL CLIP-L + bigG).

Layer choice per family (A1111 / sgm semantics):
- SD1: the last layer after the final LayerNorm; CLIP skip N takes ``hidden_states[-N]`` then the final LN.
- SD2: the penultimate layer of OpenCLIP-H, then the final LN (a diffusers SD2 folder already dropped the
  last layer, so its last layer is the same one).
- SDXL: penultimate layer of both encoders without LN, concatenated (768 + 1280 = 2048); the pooled output
  is bigG's projected final state; size/crop/target-size conditioning as ``time_ids``.

Prompts are tokenized to one 77-token window here; the full A1111 prompt language (75-token chunks,
emphasis, BREAK, embeddings) builds on :func:`encode_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch

from latentstudio.models.families import Family
from latentstudio.models.loader import Components
from latentstudio.samplers.wrappers import Conditioning

MAX_LENGTH = 77


def tokenize(components: Components, name: str, texts: Sequence[str]) -> torch.Tensor:
    """Token ids ``[B, 77]`` (BOS … EOS, padded as the family's tokenizer pads, truncated at 77)."""
    tokenizer = components.tokenizers[name]
    encoded = tokenizer(list(texts), padding="max_length", max_length=MAX_LENGTH, truncation=True)
    return torch.tensor(encoded["input_ids"], dtype=torch.long)


def _penultimate_is_last(components: Components, name: str) -> bool:
    """A diffusers SD2 folder ships OpenCLIP-H without its last layer (23 of 24)."""
    layers: int = components.text_encoders[name].config.num_hidden_layers
    return components.info.family is Family.SD2 and layers == 23


def encode_tokens(
    components: Components, name: str, ids: torch.Tensor, clip_skip: int = 1
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states ``[B, T, D]`` (and pooled ``[B, P]`` for projection models) of one encoder."""
    encoder = components.text_encoders[name]
    family = components.info.family
    out = encoder(ids.to(components.device), output_hidden_states=True)
    hidden = out.hidden_states
    pooled = getattr(out, "text_embeds", None)
    text_model = getattr(encoder, "text_model", encoder)  # transformers 5: CLIPTextModel has no wrapper
    final_norm = cast(Callable[[torch.Tensor], torch.Tensor], text_model.final_layer_norm)
    if family in (Family.SDXL, Family.SDXL_REFINER):
        return hidden[-1 - clip_skip], pooled
    if family is Family.SD2:
        index = -clip_skip if _penultimate_is_last(components, name) else -1 - clip_skip
        return final_norm(hidden[index]), pooled
    if clip_skip <= 1:
        return out.last_hidden_state, pooled
    return final_norm(hidden[-clip_skip]), pooled


def sdxl_time_ids(
    original_size: tuple[int, int], crop: tuple[int, int], target_size: tuple[int, int]
) -> torch.Tensor:
    """SDXL base micro-conditioning ``[1, 6]``: (h, w) original, (top, left) crop, (h, w) target."""
    return torch.tensor([[*original_size, *crop, *target_size]], dtype=torch.float32)


def encode_prompts(
    components: Components,
    texts: Sequence[str],
    *,
    clip_skip: int = 1,
    size: tuple[int, int] | None = None,
    aesthetic_score: float = 6.0,
) -> Conditioning:
    """Conditioning of a batch of prompts: ``context [B, 77, D]`` (+ SDXL pooled and time ids).

    ``size``: (height, width) of the image, for SDXL's size conditioning (original = target, no crop).
    ``aesthetic_score``: the SDXL refiner's extra id (sgm defaults: 6.0 positive, 2.5 negative).
    """
    with torch.inference_mode():
        names = list(components.text_encoders)
        states, pooled = [], None
        for name in names:
            hidden, pool = encode_tokens(components, name, tokenize(components, name, texts), clip_skip)
            states.append(hidden)
            pooled = pool if pool is not None else pooled
        context = torch.cat(states, dim=-1).to(components.dtype)
        if components.info.family not in (Family.SDXL, Family.SDXL_REFINER):
            return Conditioning(context)
        height, width = size or (components.info.native_size, components.info.native_size)
        if components.info.family is Family.SDXL_REFINER:
            time_ids = torch.tensor([[height, width, 0, 0, aesthetic_score]], dtype=torch.float32)
        else:
            time_ids = sdxl_time_ids((height, width), (0, 0), (height, width))
        if pooled is None:
            raise ValueError(f"{components.path}: SDXL conditioning needs the pooled text embedding")
        extra = {"text_embeds": pooled, "time_ids": time_ids.expand(len(texts), -1)}
        return Conditioning(context, {k: v.to(components.device, components.dtype) for k, v in extra.items()})
