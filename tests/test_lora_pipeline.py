"""``<lora:…>`` tags in real jobs on a tiny SD1 model: the image changes, strength 0 changes nothing, the
weights come back bit for bit, the infotext names the hashes, and the conditioning cache tells TE LoRAs
apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.models.hashes import HashCache
from latentstudio.models.loader import Components
from latentstudio.models.lora import LoraLibrary, LoraNetworks
from latentstudio.pipeline.params import GenerationParams
from latentstudio.pipeline.run import GenerationResult, ModelIdentity, run
from latentstudio.prompts.conditioning import ConditioningCache
from tests.conftest import MakeTiny
from tests.lora_files import LoraBuilder, weights_digest

IDENTITY = ModelIdentity("tiny", "0123456789")
ATTN = "down_blocks.0.attentions.0.transformer_blocks.0"


@pytest.fixture(scope="module")
def sd1(make_tiny: MakeTiny) -> Components:
    return loader.load_checkpoint(
        make_tiny(Family.SD1, seed=5).path, device=torch.device("cpu"), dtype=torch.float32
    )


@pytest.fixture(scope="module")
def networks(sd1: Components, tmp_path_factory: pytest.TempPathFactory) -> LoraNetworks:
    """``detail`` (alias ``fine-detail``): a kohya LoRA on attention and the text encoder, strong enough to
    change a 3-step image."""
    folder = tmp_path_factory.mktemp("models") / "Lora"
    builder = LoraBuilder(sd1, seed=3)
    for block in ("down_blocks.0.attentions.0", "down_blocks.1.attentions.1", "up_blocks.2.attentions.0"):
        for name in ("attn1.to_q", "attn2.to_v", "ff.net.2"):
            path = f"{block}.transformer_blocks.0.{name}"
            builder.lora("lora_unet_" + path.replace(".", "_"), "unet", path, alpha=8.0)
    for layer in range(3):
        path = f"text_model.encoder.layers.{layer}.mlp.fc2"
        builder.lora("lora_te_" + path.replace(".", "_"), "text_encoder", path, alpha=8.0)
    builder.save(folder / "detail.safetensors", {"ss_output_name": "fine-detail"})
    return LoraNetworks(LoraLibrary([folder], HashCache(folder.parent / "hashes.json")))


def _run(
    components: Components, prompt: str, networks: LoraNetworks | None, **kwargs: object
) -> GenerationResult:
    params = GenerationParams(prompt=prompt, negative_prompt="blurry", steps=2, seed=11, width=64, height=64)
    return run(params.resolved(), components, identity=IDENTITY, loras=networks, **kwargs)  # type: ignore[arg-type]


def _pixels(result: GenerationResult) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


@pytest.fixture(scope="module")
def cache() -> ConditioningCache:
    return ConditioningCache()


@pytest.fixture(scope="module")
def none(sd1: Components, networks: LoraNetworks, cache: ConditioningCache) -> GenerationResult:
    """The job without LoRAs (its encodings in ``cache``)."""
    return _run(sd1, "a red circle", networks, cache=cache)


def test_lora_changes_the_image_zero_strength_does_not_and_weights_come_back(
    sd1: Components, networks: LoraNetworks, none: GenerationResult
) -> None:
    digest = weights_digest(sd1)
    weight = sd1.unet.get_submodule(f"{ATTN}.attn1.to_q").weight
    base = weight.data_ptr()
    seen: list[int] = []
    one, again = (
        _run(sd1, "a red circle <lora:detail:1>", networks, on_step=lambda _: seen.append(weight.data_ptr()))
        for _ in range(2)
    )
    zero = _run(sd1, "a red circle <lora:detail:0>", networks)
    assert weights_digest(sd1) == digest
    assert weight.data_ptr() == base
    assert np.abs(_pixels(one) - _pixels(none)).max() > 8
    assert np.array_equal(_pixels(again), _pixels(one))
    assert np.array_equal(_pixels(zero), _pixels(none))
    # the second job swapped the first job's merged tensor back in instead of merging again
    assert len(set(seen)) == 1
    assert seen[0] != base
    shorthash = networks.library.shorthash(networks.library.infos()[0])
    assert len(shorthash) == 12
    assert f'Lora hashes: "detail: {shorthash}"' in one.infotexts[0]
    assert "Lora hashes" not in none.infotexts[0]
    assert one.warnings == none.warnings == []


def test_alias_lyco_tag_and_text_encoder_only(
    sd1: Components, networks: LoraNetworks, none: GenerationResult, cache: ConditioningCache
) -> None:
    te_only = _run(sd1, "a red circle <lyco:fine-detail:1:0>", networks, cache=cache)
    again = _run(sd1, "a red circle", networks, cache=cache)
    # the cache is keyed by the text-encoder patches: the TE LoRA's encoding is not the base one
    assert not np.array_equal(_pixels(te_only), _pixels(none))
    assert np.array_equal(_pixels(again), _pixels(none))
    assert 'Lora hashes: "fine-detail: ' in te_only.infotexts[0]


def test_unusable_tags_are_warnings(sd1: Components, networks: LoraNetworks, none: GenerationResult) -> None:
    result = _run(sd1, "a red circle <lora:nope:1> <hypernet:h:1>", networks)
    assert np.array_equal(_pixels(result), _pixels(none))
    assert result.warnings[0] == "<hypernet:h:1> ignored: 'hypernet' networks are not supported"
    assert result.warnings[1].startswith("LoRA 'nope' skipped: no LoRA file or alias of that name in ")
    without = _run(sd1, "a red circle <lora:detail:1>", None)
    assert without.warnings == ["<lora:detail:1> ignored: no LoRA folder for this job"]
    assert np.array_equal(_pixels(without), _pixels(none))
    params = GenerationParams(prompt="x", negative_prompt="<lora:detail:1>", steps=1, width=64, height=64)
    negative = run(params.resolved(), sd1, identity=IDENTITY, loras=networks)
    assert negative.warnings == [
        "<lora:detail:1> in the negative prompt ignored: networks apply from the prompt only"
    ]


def test_weights_come_back_when_a_job_fails(sd1: Components, networks: LoraNetworks) -> None:
    digest = weights_digest(sd1)

    def fail(_: object) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _run(sd1, "a red circle <lora:detail:1>", networks, on_step=fail)
    assert weights_digest(sd1) == digest


def test_lora_folder_in_settings(tmp_path: Path) -> None:
    from latentstudio.config import Settings

    settings = Settings(models_dir=tmp_path / "models")
    assert settings.resolved_lora_dirs() == (tmp_path / "models" / "Lora", tmp_path / "models" / "LyCORIS")
    custom = Settings(models_dir=tmp_path / "models", lora_dir=tmp_path / "loras")
    assert custom.resolved_lora_dirs()[0] == tmp_path / "loras"
