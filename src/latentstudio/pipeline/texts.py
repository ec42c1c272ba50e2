"""The text side of a job: its prompts' LoRA tags, and their encodings (through the job's cache) as the
step schedules of one sampling pass, with the embeddings and texts used recorded for the infotext.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch

from latentstudio.core import Conditioning
from latentstudio.models.embedding_files import Embedding
from latentstudio.models.embeddings import EmbeddingDatabase, ti_hashes
from latentstudio.models.loader import Components
from latentstudio.models.lora import LoraRequest
from latentstudio.pipeline.params import GenerationParams
from latentstudio.prompts.chunks import EmbeddingFinder
from latentstudio.prompts.conditioning import ConditioningCache, Emphasis, TextOptions, encode_prompts
from latentstudio.prompts.editing import schedules
from latentstudio.prompts.networks import extract_networks, lora_tags
from latentstudio.prompts.parser import split_and, strip_comments
from latentstudio.samplers import SAMPLER_INFO
from latentstudio.samplers.wrappers import ScheduledConditioning


@dataclass
class Texts:
    """The job's text encoding state: where embeddings and encodings come from, what was used."""

    embeddings: EmbeddingDatabase | None
    cache: ConditioningCache
    networks: Hashable  # the text-encoder LoRA patches in force (part of every cache key)
    used: list[Embedding] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


def total_steps(sampler: str, steps: int) -> int:
    """A1111 schedules prompts over model calls: twice the steps for second-order samplers."""
    return steps * (2 if SAMPLER_INFO[sampler].second_order else 1)


def empty_context(components: Components, params: GenerationParams, size: tuple[int, int]) -> torch.Tensor:
    """The empty prompt's context ``[1, 77, D]`` (A1111 "Pad conds" pads with it)."""
    return encode_prompts(components, [""], text_options(params, size)).context


def extra_info(
    params: GenerationParams, used: Sequence[Embedding], texts: Sequence[str]
) -> dict[str, object]:
    """The infotext keys that depend on the texts: old timelines, TI hashes, a non-default emphasis mode
    (A1111 names it only when a prompt has brackets it could apply to)."""
    emphasis = params.emphasis != "Original" and any(c in t for t in texts for c in "([")
    return {
        "Old prompt editing timelines": params.old_prompt_editing or None,
        "TI hashes": ti_hashes(used) or None,
        "Emphasis": params.emphasis if emphasis else None,
    }


def conditionings(  # noqa: PLR0917 - one pass's text inputs
    components: Components,
    params: GenerationParams,
    prompts: tuple[str, str],
    steps: tuple[int, int | None],
    size: tuple[int, int],
    text: Texts,
) -> tuple[list[tuple[ScheduledConditioning, float]], ScheduledConditioning]:
    """Positive AND-parts and the negative prompt of one pass as step schedules, each distinct text encoded
    once (through the job's cache; the texts and embeddings used are recorded in ``text``). ``steps`` is
    ``(total steps, hires total steps or None)`` for :func:`schedules`; ``size`` is ``(height, width)``.

    A1111 order: ``#`` comments, extra-network tags removed, AND split, prompt-editing schedules.
    """
    prompt, _ = extract_networks(strip_comments(prompts[0]))
    negative, _ = extract_networks(strip_comments(prompts[1]))
    options = text_options(params, size)

    def schedule(part_text: str, aesthetic: float) -> ScheduledConditioning:
        text_options = dataclasses.replace(options, aesthetic_score=aesthetic)
        entries = []
        for end, part in schedules(part_text, steps[0], steps[1], old_scheduling=params.old_prompt_editing):
            encode = partial(_encode_recording, components, part, text_options, text.embeddings)
            conditioning, found = text.cache.get_or_encode(
                components, part, text_options, text.embeddings, encode, text.networks
            )
            text.used.extend(e for e in found if e not in text.used)
            entries.append((end, conditioning))
            text.texts.append(part)
        return ScheduledConditioning(tuple(entries))

    conds = [(schedule(part, 6.0), weight) for part, weight in split_and(prompt)]
    return conds, schedule(negative, 2.5)


def network_requests(params: GenerationParams, *, have_loras: bool) -> tuple[list[LoraRequest], list[str]]:
    """The prompt's ``<lora:…>``/``<lyco:…>`` tags, and a warning for each tag that is not applied: other
    kinds, LoRAs when the job has no LoRA source, and any tag in the negative prompt (A1111 reads networks
    from the prompt only). Hypernetwork tags are :mod:`latentstudio.pipeline.hypernets`' to warn about."""
    _, networks = extract_networks(strip_comments(params.prompt))
    _, negative = extract_networks(strip_comments(params.negative_prompt))
    warnings: list[str] = []
    for kind, entries in networks.items():
        is_lora = kind in ("lora", "lyco")
        if (is_lora and have_loras) or kind == "hypernet":
            continue
        reason = "no LoRA folder for this job" if is_lora else f"{kind!r} networks are not supported"
        warnings.extend(f"<{kind}:{':'.join(args)}> ignored: {reason}" for args in entries)
    for kind, entries in negative.items():
        reason = "networks apply from the prompt only"
        warnings.extend(f"<{kind}:{':'.join(a)}> in the negative prompt ignored: {reason}" for a in entries)
    tags = lora_tags(networks) if have_loras else []
    return [LoraRequest(t.name, t.te_multiplier, t.unet_multiplier, t.dyn_dim) for t in tags], warnings


def text_options(params: GenerationParams, size: tuple[int, int]) -> TextOptions:
    """Encoder options of a pass; ``size`` ``(height, width)`` is SDXL's size conditioning."""
    return TextOptions(clip_skip=params.clip_skip, emphasis=Emphasis(params.emphasis), size=size)


def _encode_recording(
    components: Components, text: str, options: TextOptions, database: EmbeddingDatabase | None
) -> tuple[Conditioning, tuple[Embedding, ...]]:
    """Encode ``text`` with the database's embeddings, noting each one found (for ``TI hashes``)."""
    used: list[Embedding] = []

    def find(tokens: Sequence[int], offset: int) -> tuple[Embedding | None, int]:
        embedding, span = database.find_at(tokens, offset) if database is not None else (None, 0)
        if embedding is not None and embedding not in used:
            used.append(embedding)
        return embedding, span

    def finder(_name: str) -> EmbeddingFinder:
        return find  # the CLIP vocabulary is shared: one lookup serves every encoder

    return encode_prompts(components, [text], options, finder), tuple(used)
