"""Every LoRA format merges to ``W + m·ΔW`` on tiny real models, and removing it restores the weights bit for
bit; bad LoRAs are skipped with a warning naming them and the base weights stay untouched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.models.hashes import HashCache
from latentstudio.models.loader import Components
from latentstudio.models.lora import LoraLibrary, LoraNetworks, LoraRequest
from tests.conftest import MakeTiny
from tests.lora_files import LoraBuilder, weights_digest

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0"
TE = "text_model.encoder.layers"


@pytest.fixture(scope="module")
def sd1(make_tiny: MakeTiny) -> Components:
    return loader.load_checkpoint(make_tiny(Family.SD1).path, device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def sdxl(make_tiny: MakeTiny) -> Components:
    return loader.load_checkpoint(
        make_tiny(Family.SDXL).path, device=torch.device("cpu"), dtype=torch.float32
    )


def _kohya(b: LoraBuilder) -> None:
    """kohya LoRA, diffusers-style flat names (SD1 trainers): attention, feed-forward, 1×1 conv, CLIP."""
    for name in ("attn1.to_q", "attn2.to_k", "attn1.to_out.0", "ff.net.0.proj"):
        b.lora(f"lora_unet_{ATTN}.{name}".replace(".", "_"), "unet", f"{ATTN}.{name}")
    b.lora("lora_unet_down_blocks_0_attentions_0_proj_in", "unet", "down_blocks.0.attentions.0.proj_in")
    b.lora(
        "lora_unet_mid_block_resnets_0_time_emb_proj", "unet", "mid_block.resnets.0.time_emb_proj", alpha=None
    )
    b.lora("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "text_encoder", f"{TE}.0.self_attn.q_proj")
    b.lora("lora_te_text_model_encoder_layers_2_mlp_fc1", "text_encoder", f"{TE}.2.mlp.fc1", rank=8)


def _kohya_ldm(b: LoraBuilder) -> None:
    """LDM-style flat names (A1111/SGM module names), LoCon on a resnet conv and the upsampler."""
    b.lora("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q", "unet", f"{ATTN}.attn1.to_q")
    b.lora("lora_unet_middle_block_1_proj_in", "unet", "mid_block.attentions.0.proj_in")
    b.lora(
        "lora_unet_output_blocks_3_1_transformer_blocks_0_attn2_to_v",
        "unet",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
    )
    b.lora("lora_unet_input_blocks_1_0_in_layers_2", "unet", "down_blocks.0.resnets.0.conv1")
    b.lora("lora_unet_output_blocks_2_1_conv", "unet", "up_blocks.0.upsamplers.0.conv")


def _locon(b: LoraBuilder) -> None:
    """LyCORIS LoCon: 3×3 convs (one with a Tucker core) and linear layers."""
    b.lora("lora_unet_down_blocks_0_resnets_0_conv1", "unet", "down_blocks.0.resnets.0.conv1", rank=3)
    b.lora("lora_unet_down_blocks_1_resnets_0_conv2", "unet", "down_blocks.1.resnets.0.conv2", mid=True)
    b.lora("lora_unet_conv_in", "unet", "conv_in", rank=2, alpha=1.0)
    b.lora(f"lora_unet_{ATTN}.attn1.to_v".replace(".", "_"), "unet", f"{ATTN}.attn1.to_v")


def _loha(b: LoraBuilder) -> None:
    b.loha(f"lora_unet_{ATTN}.attn1.to_v".replace(".", "_"), "unet", f"{ATTN}.attn1.to_v")
    b.loha("lora_unet_down_blocks_0_resnets_1_conv1", "unet", "down_blocks.0.resnets.1.conv1")
    b.loha("lora_unet_up_blocks_2_resnets_0_conv2", "unet", "up_blocks.2.resnets.0.conv2", tucker=True)
    b.loha("lora_te_text_model_encoder_layers_1_mlp_fc2", "text_encoder", f"{TE}.1.mlp.fc2")


def _lokr(b: LoraBuilder) -> None:
    b.lokr(f"lora_unet_{ATTN}.attn1.to_k".replace(".", "_"), "unet", f"{ATTN}.attn1.to_k")
    b.lokr("lora_unet_down_blocks_1_resnets_1_conv1", "unet", "down_blocks.1.resnets.1.conv1", rank=None)
    b.lokr("lora_unet_up_blocks_1_resnets_0_conv1", "unet", "up_blocks.1.resnets.0.conv1", split=4)
    b.lokr("lora_te_text_model_encoder_layers_0_self_attn_v_proj", "text_encoder", f"{TE}.0.self_attn.v_proj")


def _dora(b: LoraBuilder) -> None:
    """DoRA both ways: kohya/LyCORIS ``dora_scale [1, in]`` and PEFT ``lora_magnitude_vector [out]``."""
    b.lora(f"lora_unet_{ATTN}.attn1.to_q".replace(".", "_"), "unet", f"{ATTN}.attn1.to_q", dora="in")
    b.lora(f"unet.{ATTN}.attn2.to_q", "unet", f"{ATTN}.attn2.to_q", style="peft", alpha=None, dora="out")
    b.lora(f"text_encoder.{TE}.0.self_attn.k_proj", "text_encoder", f"{TE}.0.self_attn.k_proj", style="peft",
           dora="out")  # fmt: skip


def _peft(b: LoraBuilder) -> None:
    """diffusers/PEFT ``lora_A/lora_B`` and the older diffusers layouts."""
    path = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    b.lora(f"unet.{path}", "unet", path, style="peft", alpha=None)
    b.lora(f"text_encoder.{TE}.1.self_attn.v_proj", "text_encoder", f"{TE}.1.self_attn.v_proj", style="peft")
    b.lora(f"unet.{ATTN}.ff.net.2", "unet", f"{ATTN}.ff.net.2", style="diffusers", alpha=None)
    path = "mid_block.attentions.0.transformer_blocks.0.attn1"
    b.lora(f"unet.{path}.processor.to_out", "unet", f"{path}.to_out.0", style="processor", alpha=None)
    path = "up_blocks.2.attentions.1.proj_out"
    b.lora(f"base_model.model.unet.{path}", "unet", path, style="peft")


def _full(b: LoraBuilder) -> None:
    """Full differences, with biases; LyCORIS norm layers."""
    b.full(f"lora_unet_{ATTN}.attn1.to_out.0".replace(".", "_"), "unet", f"{ATTN}.attn1.to_out.0")
    b.full("lora_unet_down_blocks_0_resnets_0_norm1", "unet", "down_blocks.0.resnets.0.norm1", norm=True)
    b.full(f"lora_unet_{ATTN}.norm2".replace(".", "_"), "unet", f"{ATTN}.norm2", norm=True)
    b.full(
        "lora_te_text_model_encoder_layers_2_layer_norm1", "text_encoder", f"{TE}.2.layer_norm1", norm=True
    )
    b.full("lora_unet_conv_out", "unet", "conv_out")


def _sdxl(b: LoraBuilder) -> None:
    """kohya SDXL: LDM names for the UNet (incl. the label embedding), ``lora_te1_``/``lora_te2_``."""
    b.lora("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "unet",
           "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")  # fmt: skip
    b.lora("lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k", "unet",
           "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k")  # fmt: skip
    b.lora("lora_unet_middle_block_1_transformer_blocks_0_ff_net_2", "unet",
           "mid_block.attentions.0.transformer_blocks.0.ff.net.2")  # fmt: skip
    b.lora("lora_unet_output_blocks_1_1_proj_out", "unet", "up_blocks.0.attentions.1.proj_out")
    b.lora("lora_unet_label_emb_0_0", "unet", "add_embedding.linear_1")
    b.lora("lora_unet_time_embed_2", "unet", "time_embedding.linear_2")
    b.lora(
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "text_encoder", f"{TE}.0.self_attn.q_proj"
    )
    b.lora("lora_te2_text_model_encoder_layers_1_mlp_fc2", "text_encoder_2", f"{TE}.1.mlp.fc2")
    b.lora(
        f"text_encoder_2.{TE}.2.self_attn.out_proj",
        "text_encoder_2",
        f"{TE}.2.self_attn.out_proj",
        style="peft",
    )


FORMATS: dict[str, tuple[Family, Callable[[LoraBuilder], None]]] = {
    "kohya": (Family.SD1, _kohya),
    "kohya-ldm": (Family.SD1, _kohya_ldm),
    "locon": (Family.SD1, _locon),
    "loha": (Family.SD1, _loha),
    "lokr": (Family.SD1, _lokr),
    "dora": (Family.SD1, _dora),
    "peft": (Family.SD1, _peft),
    "full": (Family.SD1, _full),
    "sdxl": (Family.SDXL, _sdxl),
}


def _networks(folder: Path) -> LoraNetworks:
    return LoraNetworks(LoraLibrary([folder], HashCache(folder.parent / "hashes.json")))


def _params(components: Components) -> dict[int, torch.Tensor]:
    modules = [components.unet, *components.text_encoders.values()]
    return {id(p): p.detach().clone() for m in modules for p in m.parameters()}


def _changed(components: Components, before: dict[int, torch.Tensor]) -> set[int]:
    modules = [components.unet, *components.text_encoders.values()]
    return {id(p) for m in modules for p in m.parameters() if not torch.equal(p.detach(), before[id(p)])}


def _check_merged(before: dict[int, torch.Tensor], loras: list[tuple[LoraBuilder, float, float]]) -> None:
    """Every recorded module equals base + Σ m·ΔW over ``(builder, te, unet)`` (to 1e-6); nothing else
    changed."""
    expected: dict[int, torch.Tensor] = {}
    params: dict[int, torch.Tensor] = {}
    for builder, te, unet in loras:
        for (component, path, attr), delta in builder.deltas.items():
            param = getattr(builder.module(component, path), attr)
            strength = te if component != "unet" else unet
            expected[id(param)] = expected.get(id(param), before[id(param)]) + strength * delta
            params[id(param)] = param
    for key, value in expected.items():
        torch.testing.assert_close(params[key].detach(), value, atol=1e-6, rtol=0)
    assert _changed(loras[0][0].components, before) == set(expected)


@pytest.mark.parametrize("name", list(FORMATS))
def test_merge_equals_reference_and_restores_bit_exactly(
    name: str, sd1: Components, sdxl: Components, tmp_path: Path
) -> None:
    family, build = FORMATS[name]
    components = sd1 if family is Family.SD1 else sdxl
    builder = LoraBuilder(components, seed=len(name))
    build(builder)
    builder.save(tmp_path / "Lora" / f"{name}.safetensors")
    networks = _networks(tmp_path / "Lora")
    digest, before = weights_digest(components), _params(components)
    te, unet = 0.6, -1.3  # different strengths per part, one negative
    activation = networks.activate(components, [LoraRequest(name, te, unet)])
    assert activation.warnings == ()
    assert [a.mentioned for a in activation.applied] == [name]
    assert activation.patched == len(builder.deltas)
    _check_merged(before, [(builder, te, unet)])
    networks.deactivate()
    assert weights_digest(components) == digest


def test_several_loras_add_up_and_dyn_keeps_the_first_ranks(sd1: Components, tmp_path: Path) -> None:
    folder = tmp_path / "Lora"
    one, two = LoraBuilder(sd1, seed=1), LoraBuilder(sd1, seed=2)
    _kohya(one)
    _kohya(two)  # the same modules: the two updates add
    one.save(folder / "one.safetensors")
    two.save(folder / "two.safetensors")
    networks = _networks(folder)
    before, digest = _params(sd1), weights_digest(sd1)
    activation = networks.activate(sd1, [LoraRequest("one", 0.5, 0.25), LoraRequest("two", -1.0, 2.0)])
    assert activation.warnings == ()
    _check_merged(before, [(one, 0.5, 0.25), (two, -1.0, 2.0)])
    networks.deactivate()
    assert weights_digest(sd1) == digest
    # dyn=2: only the first two ranks of each plain LoRA, scale still α/r
    activation = networks.activate(sd1, [LoraRequest("one", 1.0, 1.0, dyn=2)])
    path = f"{ATTN}.attn1.to_q"
    key = f"lora_unet_{path}".replace(".", "_")
    up, down = one.state[f"{key}.lora_up.weight"], one.state[f"{key}.lora_down.weight"]
    expected = before[id(sd1.unet.get_submodule(path).weight)] + (2.0 / 4) * up[:, :2] @ down[:2]
    torch.testing.assert_close(sd1.unet.get_submodule(path).weight.detach(), expected, atol=1e-6, rtol=0)
    networks.deactivate()
    assert weights_digest(sd1) == digest


def test_zero_strength_changes_nothing(sd1: Components, tmp_path: Path) -> None:
    builder = LoraBuilder(sd1)
    _kohya(builder)
    builder.save(tmp_path / "Lora" / "x.safetensors")
    networks = _networks(tmp_path / "Lora")
    digest = weights_digest(sd1)
    activation = networks.activate(sd1, [LoraRequest("x", 0.0, 0.0)])
    assert [a.mentioned for a in activation.applied] == ["x"]  # still listed (and hashed), as in A1111
    assert weights_digest(sd1) == digest
    networks.deactivate()


def _bad_files(sd1: Components, sdxl: Components, folder: Path) -> dict[str, str]:
    """Write one unusable LoRA per failure mode; return name → a fragment its warning must contain."""
    xl = LoraBuilder(sdxl)
    _sdxl(xl)
    xl.save(folder / "xl.safetensors")
    shapes = LoraBuilder(sd1)
    key = f"lora_unet_{ATTN}.attn1.to_q".replace(".", "_")
    shapes.state = {
        f"{key}.lora_down.weight": torch.zeros(4, 32),
        f"{key}.lora_up.weight": torch.zeros(64, 4),
    }
    shapes.save(folder / "shapes.safetensors")
    unknown = LoraBuilder(sd1)
    _kohya(unknown)
    unknown.state["lora_unet_no_such_module.lora_down.weight"] = torch.zeros(4, 64)
    unknown.state["lora_unet_no_such_module.lora_up.weight"] = torch.zeros(64, 4)
    unknown.save(folder / "unknown.safetensors")
    foreign = LoraBuilder(sd1)
    foreign.state = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4)}
    foreign.save(folder / "foreign.safetensors")
    nan = LoraBuilder(sd1)
    _kohya(nan)
    next(iter(nan.state.values()))[0, 0] = float("nan")
    nan.save(folder / "nan.safetensors")
    good = LoraBuilder(sd1)
    _kohya(good)
    data = good.save(folder / "corrupt.safetensors").read_bytes()
    (folder / "corrupt.safetensors").write_bytes(data[: len(data) // 2])
    (folder / "empty.safetensors").write_bytes(b"")
    return {
        "xl": "made for sdxl, this model is sd1",
        "shapes": "shape mismatch",
        "unknown": "lora_unet_no_such_module",
        "foreign": "no known LoRA format",
        "nan": "NaN",
        "corrupt": "truncated",
        "empty": "empty",
        "missing": "no LoRA file or alias",
    }


def test_bad_loras_are_skipped_with_a_reason_and_leave_the_model_untouched(
    sd1: Components, sdxl: Components, tmp_path: Path
) -> None:
    folder = tmp_path / "Lora"
    reasons = _bad_files(sd1, sdxl, folder)
    good = LoraBuilder(sd1, seed=9)
    _loha(good)
    good.save(folder / "good.safetensors")
    networks = _networks(folder)
    digest, before = weights_digest(sd1), _params(sd1)
    for name, reason in reasons.items():
        activation = networks.activate(sd1, [LoraRequest(name)])
        assert activation.applied == ()
        assert len(activation.warnings) == 1
        assert activation.warnings[0].startswith(f"LoRA {name!r} skipped: ")
        assert reason in activation.warnings[0]
        assert weights_digest(sd1) == digest
        networks.deactivate()
    # a bad LoRA next to a good one: the good one still applies
    activation = networks.activate(sd1, [LoraRequest("nan"), LoraRequest("good", 0.5, 0.5)])
    assert [a.mentioned for a in activation.applied] == ["good"]
    _check_merged(before, [(good, 0.5, 0.5)])
    networks.deactivate()
    assert weights_digest(sd1) == digest


def test_a_merge_that_overflows_is_skipped(sd1: Components, tmp_path: Path) -> None:
    builder = LoraBuilder(sd1)
    _kohya(builder)
    builder.save(tmp_path / "Lora" / "x.safetensors")
    networks = _networks(tmp_path / "Lora")
    digest = weights_digest(sd1)
    activation = networks.activate(sd1, [LoraRequest("x", 1e39, 1e39)])
    assert activation.applied == ()
    assert activation.warnings == ("LoRA 'x' skipped: merged weights are not finite",)
    assert weights_digest(sd1) == digest
    networks.deactivate()
