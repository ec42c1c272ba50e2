"""Conditioning on tiny SD1/SD2/SDXL encoders: chunk shapes, emphasis modes, embeddings, OpenCLIP padding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch

from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.prompts.conditioning import Emphasis, TextOptions, encode_prompts, prompt_chunks
from tests.conftest import MakeTiny

CPU = torch.device("cpu")
LONG = ", ".join(f"word{i}" for i in range(60))  # well over 75 tokens


@pytest.fixture(scope="module")
def models(make_tiny: MakeTiny) -> dict[Family, loader.Components]:
    families = (Family.SD1, Family.SD2, Family.SDXL)
    return {f: loader.load_checkpoint(make_tiny(f).path, device=CPU, dtype=torch.float32) for f in families}


@pytest.mark.parametrize(("family", "width"), [(Family.SD1, 64), (Family.SD2, 64), (Family.SDXL, 128)])
def test_shapes_grow_by_77_per_chunk(
    models: dict[Family, loader.Components], family: Family, width: int
) -> None:
    components = models[family]
    short = encode_prompts(components, ["a red circle"])
    assert short.context.shape == (1, 77, width)
    long = encode_prompts(components, [LONG, "short"])
    chunks, count = prompt_chunks(components, next(iter(components.text_encoders)), LONG)
    assert count > 75
    assert long.context.shape == (2, 77 * len(chunks), width)
    if family is Family.SDXL:
        assert long.extra["text_embeds"].shape == (2, 32)
        assert long.extra["time_ids"].tolist()[0] == [1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]


def test_short_prompt_equals_the_plain_encoder_output(models: dict[Family, loader.Components]) -> None:
    components = models[Family.SD1]
    ids = components.tokenizers["text_encoder"](
        "a red circle", padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.inference_mode():
        expected = components.text_encoders["text_encoder"](ids).last_hidden_state
    assert torch.allclose(encode_prompts(components, ["a red circle"]).context, expected, atol=1e-6)


def test_emphasis_modes(models: dict[Family, loader.Components]) -> None:
    components = models[Family.SD1]

    def encode(text: str, emphasis: Emphasis) -> torch.Tensor:
        return encode_prompts(components, [text], TextOptions(emphasis=emphasis)).context[0]

    weighted = "a (red:1.5) circle"
    ignore = encode(weighted, Emphasis.IGNORE)
    assert torch.allclose(ignore, encode("a red circle", Emphasis.ORIGINAL), atol=1e-6)
    no_norm = encode(weighted, Emphasis.NO_NORM)
    red = 2  # BOS, "a", "red"
    assert torch.allclose(no_norm[red], ignore[red] * 1.5, atol=1e-6)
    assert torch.allclose(no_norm[red + 1], ignore[red + 1], atol=1e-6)
    original = encode(weighted, Emphasis.ORIGINAL)
    assert torch.allclose(original.mean(), ignore.mean(), atol=1e-6)  # Original restores the mean
    assert not torch.allclose(original, ignore)
    literal = encode(weighted, Emphasis.NONE)  # brackets are text: different tokens
    assert not torch.allclose(literal, ignore)


def test_openclip_pads_with_exclamation_after_eos(models: dict[Family, loader.Components]) -> None:
    components = models[Family.SD2]
    chunk = prompt_chunks(components, "text_encoder", "a cat")[0][0]
    assert chunk.tokens[:4] == [49406, 320, 2368, 49407]
    seen: list[torch.Tensor] = []
    encoder = components.text_encoders["text_encoder"]
    embedding = getattr(encoder, "text_model", encoder).embeddings.token_embedding
    handle = embedding.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    try:
        encode_prompts(components, ["a cat"])
    finally:
        handle.remove()
    assert seen[0][0, :4].tolist() == [49406, 320, 2368, 49407]
    assert set(seen[0][0, 4:].tolist()) == {0}  # "!"


@dataclass(frozen=True)
class _Embedding:
    name: str
    vector_count: int
    vectors: dict[str, torch.Tensor]


def test_embedding_vectors_replace_exactly_their_positions(models: dict[Family, loader.Components]) -> None:
    components = models[Family.SD1]
    tokenizer = components.tokenizers["text_encoder"]
    name_ids = tokenizer("mystyle", add_special_tokens=False).input_ids
    emb = _Embedding(
        "mystyle", 2, {"text_encoder": torch.randn(2, 64, generator=torch.Generator().manual_seed(0))}
    )

    def find(tokens: Sequence[int], position: int) -> tuple[_Embedding | None, int]:
        span = len(name_ids)
        return (emb, span) if list(tokens[position : position + span]) == name_ids else (None, 0)

    inputs: list[torch.Tensor] = []
    encoder = components.text_encoders["text_encoder"]
    embeddings = getattr(encoder, "text_model", encoder).embeddings  # token + position embedding
    handle = embeddings.register_forward_hook(lambda _m, _i, out: inputs.append(out.clone()))
    try:
        with_emb = encode_prompts(components, ["a mystyle cat"], find_embedding=lambda _n: find).context[0]
    finally:
        handle.remove()
    positions = embeddings.position_embedding.weight
    vectors = inputs[0][0] - positions
    assert torch.allclose(vectors[2:4], emb.vectors["text_encoder"], atol=1e-6)  # after BOS and "a"
    plain_ids = [49406, 320, 0, 0, 2368, 49407]
    reference = embeddings.token_embedding(torch.tensor([plain_ids]))[0]
    assert torch.allclose(vectors[[0, 1, 4, 5]], reference[[0, 1, 4, 5]], atol=1e-6)  # the rest unchanged
    without = encode_prompts(components, ["a mystyle cat"]).context[0]
    assert torch.allclose(with_emb[:2], without[:2], atol=1e-6)  # causal attention: earlier tokens unchanged
    assert not torch.allclose(with_emb[2:4], without[2:4])


def _hidden(components: loader.Components, name: str, text: str) -> tuple[torch.Tensor, ...]:
    """All hidden states of one encoder for a short prompt, tokenized the plain transformers way."""
    tokenizer = components.tokenizers[name]
    ids = tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
    if tokenizer.pad_token_id != tokenizer.eos_token_id:  # OpenCLIP pads with "!" after the EOS
        first_eos = int((ids[0] == tokenizer.eos_token_id).nonzero()[0])
        ids[0, first_eos + 1 :] = tokenizer.pad_token_id
    with torch.inference_mode():
        out = components.text_encoders[name](ids, output_hidden_states=True)
    return (*out.hidden_states, getattr(out, "text_embeds", None))


def test_clip_skip_takes_the_normed_hidden_state_on_sd1(models: dict[Family, loader.Components]) -> None:
    components = models[Family.SD1]
    *hidden, _ = _hidden(components, "text_encoder", "a red circle")
    norm = components.text_encoders["text_encoder"].final_layer_norm
    for skip in (2, 3):
        got = encode_prompts(components, ["a red circle"], TextOptions(clip_skip=skip)).context
        with torch.inference_mode():
            assert torch.allclose(got, norm(hidden[-skip]), atol=1e-6)
    assert not torch.allclose(got, encode_prompts(components, ["a red circle"]).context, atol=1e-3)


def test_sd2_and_sdxl_take_the_penultimate_layer_and_ignore_clip_skip(
    models: dict[Family, loader.Components],
) -> None:
    sd2 = models[Family.SD2]
    *hidden, _ = _hidden(sd2, "text_encoder", "a red circle")
    with torch.inference_mode():
        expected = sd2.text_encoders["text_encoder"].final_layer_norm(hidden[-2])
    for skip in (1, 2):
        assert torch.allclose(
            encode_prompts(sd2, ["a red circle"], TextOptions(clip_skip=skip)).context, expected
        )

    sdxl = models[Family.SDXL]
    *hidden_l, _ = _hidden(sdxl, "text_encoder", "a red circle")
    *hidden_g, pooled = _hidden(sdxl, "text_encoder_2", "a red circle")
    for skip in (1, 2):
        got = encode_prompts(sdxl, ["a red circle"], TextOptions(clip_skip=skip))
        assert torch.allclose(got.context, torch.cat([hidden_l[-2], hidden_g[-2]], dim=-1), atol=1e-6)
        assert torch.allclose(got.extra["text_embeds"], pooled, atol=1e-6)
        assert got.context.shape[-1] == hidden_l[-2].shape[-1] + hidden_g[-2].shape[-1]
