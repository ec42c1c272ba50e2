"""Loading real-layout checkpoints of every family: structure, dtypes, and output parity with the source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from latentstudio.core import Prediction
from latentstudio.models import loader
from latentstudio.models.families import UNET_PREFIX, Family
from latentstudio.models.files import ModelFileError
from latentstudio.models.synthetic import full_spec, single_file_state, write_checkpoint
from latentstudio.models.tokenizer import clip_tokenizer
from tests.conftest import MakeTiny, TinyModel

CPU = torch.device("cpu")
TOL = 1e-5


def _unet_inputs(tiny: TinyModel) -> tuple[torch.Tensor, torch.Tensor, dict[str, object]]:
    g = torch.Generator().manual_seed(0)
    cfg = tiny.spec.unet
    x = torch.randn(2, cfg["in_channels"], 8, 8, generator=g)
    context = torch.randn(2, 77, cfg["cross_attention_dim"], generator=g)
    extra: dict[str, object] = {}
    if cfg.get("addition_embed_type") == "text_time":
        n_ids = 6 if "text_encoder" in tiny.spec.text else 5
        pooled = cfg["projection_class_embeddings_input_dim"] - n_ids * cfg["addition_time_embed_dim"]
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, pooled, generator=g),
            "time_ids": torch.randn(2, n_ids, generator=g) * 100,
        }
    return x, context, extra


def _assert_same_outputs(tiny: TinyModel, components: loader.Components) -> None:
    x, context, extra = _unet_inputs(tiny)
    t = torch.tensor([981, 17])
    with torch.inference_mode():
        expected = tiny.unet(x, t, context, **extra).sample
        got = components.unet(x, t, context, **extra).sample
        assert (expected - got).abs().max().item() <= TOL
        image = torch.rand(1, 3, 16, 16) * 2 - 1
        z_ref = tiny.vae.encode(image).latent_dist.mean
        z = components.vae.encode(image).latent_dist.mean
        assert (z_ref - z).abs().max().item() <= TOL
        assert (tiny.vae.decode(z_ref).sample - components.vae.decode(z_ref).sample).abs().max().item() <= TOL
        ids = torch.randint(0, 49408, (2, 77), generator=torch.Generator().manual_seed(1))
        for name, reference in tiny.text_encoders.items():
            ref = reference(ids, output_hidden_states=True)
            out = components.text_encoders[name](ids, output_hidden_states=True)
            for a, b in zip(ref.hidden_states, out.hidden_states, strict=True):
                assert (a - b).abs().max().item() <= TOL
            if hasattr(ref, "text_embeds"):
                assert (ref.text_embeds - out.text_embeds).abs().max().item() <= TOL


@pytest.mark.parametrize("family", list(Family))
def test_every_family_loads_with_outputs_equal_to_its_source(make_tiny: MakeTiny, family: Family) -> None:
    tiny = make_tiny(family)
    components = loader.load_checkpoint(tiny.path, device=CPU, dtype=torch.float32)
    assert components.info.family is family
    assert set(components.text_encoders) == set(tiny.spec.text)
    assert set(components.tokenizers) == set(tiny.spec.text)
    assert components.unet.config.in_channels == 4
    _assert_same_outputs(tiny, components)


def test_inpainting_checkpoint_has_nine_input_channels(make_tiny: MakeTiny) -> None:
    tiny = make_tiny(Family.SD1, inpainting=True)
    components = loader.load_checkpoint(tiny.path, device=CPU, dtype=torch.float32)
    assert components.info.inpainting
    assert components.unet.config.in_channels == 9
    _assert_same_outputs(tiny, components)


def test_tokenizers_pad_as_the_family_does(make_tiny: MakeTiny) -> None:
    sdxl = loader.load_checkpoint(make_tiny(Family.SDXL).path, device=CPU, dtype=torch.float32)
    clip_l = sdxl.tokenizers["text_encoder"]("a cat", padding="max_length", max_length=77).input_ids
    clip_g = sdxl.tokenizers["text_encoder_2"]("a cat", padding="max_length", max_length=77).input_ids
    assert clip_l[:4] == clip_g[:4] == [49406, 320, 2368, 49407]
    assert clip_l[-1] == 49407
    assert clip_g[-1] == 0  # OpenCLIP pads with "!"


def test_fp16_file_loads_into_fp32_and_fp32_file_into_bf16(make_tiny: MakeTiny) -> None:
    half = make_tiny(Family.SD1, dtype=torch.float16)
    components = loader.load_checkpoint(half.path, device=CPU, dtype=torch.float32)
    assert {p.dtype for p in components.unet.parameters()} == {torch.float32}
    reference = half.state[UNET_PREFIX + "input_blocks.0.0.weight"].half().float()
    assert torch.equal(components.unet.conv_in.weight, reference)
    full = make_tiny(Family.SD1)
    bf16 = loader.load_checkpoint(full.path, device=CPU, dtype=torch.bfloat16)
    for module in (bf16.unet, bf16.vae, *bf16.text_encoders.values()):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in bf16.unet.parameters())
    assert not any(b.is_meta for m in (bf16.unet, *bf16.text_encoders.values()) for b in m.buffers())


def test_alphas_cumprod_comes_from_the_file_or_the_family_default(
    make_tiny: MakeTiny, tmp_path: Path
) -> None:
    tiny = make_tiny(Family.SD1)
    components = loader.load_checkpoint(tiny.path, device=CPU, dtype=torch.float32)
    assert components.alphas_cumprod.shape == (1000,)
    assert torch.allclose(components.alphas_cumprod, tiny.state["alphas_cumprod"].double(), atol=1e-7)
    default = loader.default_alphas_cumprod(Family.SD1)
    # The DDPM scaled-linear schedule, computed independently by diffusers.
    reference = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    ).alphas_cumprod
    assert torch.allclose(default.float(), reference, atol=1e-6)
    custom = {k: v for k, v in tiny.state.items() if k != "alphas_cumprod"}
    custom["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000)
    path = write_checkpoint(tmp_path / "custom.safetensors", custom)
    loaded = loader.load_checkpoint(path, device=CPU, dtype=torch.float32)
    assert torch.allclose(loaded.alphas_cumprod.float(), custom["alphas_cumprod"])


def test_old_sd1_text_encoder_keys_without_text_model_level(make_tiny: MakeTiny, tmp_path: Path) -> None:
    tiny = make_tiny(Family.SD1)
    old = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
           for k, v in tiny.state.items()}  # fmt: skip
    old["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(77)[None].float()
    path = write_checkpoint(tmp_path / "old.safetensors", old)
    _assert_same_outputs(tiny, loader.load_checkpoint(path, device=CPU, dtype=torch.float32))


def test_separate_vae_file_overrides_the_checkpoint_vae(make_tiny: MakeTiny, tmp_path: Path) -> None:
    base, other = make_tiny(Family.SD1, seed=0), make_tiny(Family.SD1, seed=1)
    vae_only = {k.removeprefix("first_stage_model."): v for k, v in other.state.items()
                if k.startswith("first_stage_model.")}  # fmt: skip
    vae_only["loss.discriminator.main.0.weight"] = torch.zeros(1)  # training leftovers some VAE files carry
    vae_path = write_checkpoint(tmp_path / "other.vae.safetensors", vae_only)
    components = loader.load_checkpoint(base.path, device=CPU, dtype=torch.float32, vae_path=vae_path)
    assert components.vae_path == vae_path
    z = torch.randn(1, 4, 4, 4)
    with torch.inference_mode():
        assert torch.allclose(components.vae.decode(z).sample, other.vae.decode(z).sample, atol=TOL)
        assert not torch.allclose(components.vae.decode(z).sample, base.vae.decode(z).sample, atol=1e-3)


def test_unconsumed_unet_keys_are_an_error_not_silently_dropped(make_tiny: MakeTiny, tmp_path: Path) -> None:
    state = dict(make_tiny(Family.SD1).state)
    state[UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn1.extra_thing.weight"] = torch.zeros(2)
    path = write_checkpoint(tmp_path / "extra.safetensors", state)
    with pytest.raises(ModelFileError, match=r"extra\.safetensors: UNet weights do not match"):
        loader.load_checkpoint(path, device=CPU, dtype=torch.float32)


def test_missing_tensor_is_reported_with_the_file_name(make_tiny: MakeTiny, tmp_path: Path) -> None:
    state = dict(make_tiny(Family.SD2).state)
    del state["cond_stage_model.model.transformer.resblocks.1.mlp.c_fc.weight"]
    path = write_checkpoint(tmp_path / "missing.safetensors", state)
    with pytest.raises(
        ModelFileError, match=r"missing\.safetensors: text_encoder weights do not match.*missing"
    ):
        loader.load_checkpoint(path, device=CPU, dtype=torch.float32)


def test_diffusers_pipeline_parity(make_tiny: MakeTiny, tmp_path: Path) -> None:
    """A diffusers pipeline → single file (our export) → our loader gives the pipeline's outputs (≤ 1e-5),
    and the pipeline saved as a diffusers folder loads through the folder path to the same components."""
    tiny = make_tiny(Family.SD1, seed=3)
    pipe = StableDiffusionPipeline(
        vae=tiny.vae,
        text_encoder=tiny.text_encoders["text_encoder"],
        tokenizer=clip_tokenizer(),
        unet=tiny.unet,
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    state = single_file_state(Family.SD1, pipe.unet, pipe.vae, {"text_encoder": pipe.text_encoder})
    single = loader.load_checkpoint(
        write_checkpoint(tmp_path / "from-pipe.safetensors", state), device=CPU, dtype=torch.float32
    )
    _assert_same_outputs(tiny, single)
    pipe.save_pretrained(tmp_path / "folder", safe_serialization=True)
    folder = loader.load_checkpoint(tmp_path / "folder", device=CPU, dtype=torch.float32)
    assert (folder.info.family, folder.info.prediction) == (single.info.family, single.info.prediction)
    assert folder.info.native_size == 64  # a folder declares its own sample size (8 latents)
    _assert_same_outputs(tiny, folder)
    with torch.inference_mode():
        ids = pipe.tokenizer(
            "a red circle", padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        expected = pipe.encode_prompt("a red circle", CPU, 1, False)[0]
        assert (single.text_encoders["text_encoder"](ids)[0] - expected).abs().max() <= TOL


def test_full_size_sd1_key_layout_matches_the_original() -> None:
    """Spot-check our export of the full SD1.5 architecture against well-known original keys and shapes
    (built on the meta device: no memory, no time)."""
    spec = full_spec(Family.SD1)
    with torch.device("meta"):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        unet = UNet2DConditionModel.from_config(spec.unet)
        vae = AutoencoderKL.from_config(spec.vae)
        config = {k: v for k, v in spec.text["text_encoder"].items() if not k.startswith("_")}
        te = CLIPTextModel(CLIPTextConfig(**config))
    shapes = {
        k: tuple(v.shape) for k, v in single_file_state(Family.SD1, unet, vae, {"text_encoder": te}).items()
    }
    known = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.middle_block.1.proj_out.weight": (1280, 1280, 1, 1),
        "model.diffusion_model.middle_block.2.emb_layers.1.weight": (1280, 1280),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm3.bias": (320,),
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    }
    for key, shape in known.items():
        assert shapes.get(key) == shape, key
    unet_keys = [k for k in shapes if k.startswith(UNET_PREFIX)]
    vae_keys = [k for k in shapes if k.startswith("first_stage_model.")]
    text_keys = [k for k in shapes if k.startswith("cond_stage_model.")]
    # Tensor counts of the original v1-5-pruned-emaonly file (position_ids aside).
    assert (len(unet_keys), len(vae_keys), len(text_keys)) == (686, 248, 196)


def test_sidecar_yaml_selects_v_prediction(make_tiny: MakeTiny, tmp_path: Path) -> None:
    tiny = make_tiny(Family.SD2)
    path = tmp_path / "sd21-768.safetensors"
    path.write_bytes(tiny.path.read_bytes())
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    components = loader.load_checkpoint(path, device=CPU, dtype=torch.float32)
    assert components.info.prediction is Prediction.V
    assert components.info.native_size == 768
    assert components.unet.config.upcast_attention
    path.with_suffix(".yaml").write_text("model: [unclosed")
    with pytest.raises(ModelFileError, match=r"sd21-768\.yaml: unreadable model config"):
        loader.load_checkpoint(path, device=CPU, dtype=torch.float32)


def test_architecture_metadata_overrides_head_rules(make_tiny: MakeTiny, tmp_path: Path) -> None:
    tiny = make_tiny(Family.SD1)
    meta = {"latentstudio.architecture": json.dumps({"unet": {"attention_head_dim": 4}})}
    path = write_checkpoint(tmp_path / "meta.safetensors", tiny.state, metadata=meta)
    components = loader.load_checkpoint(path, device=CPU, dtype=torch.float32)
    assert components.unet.config.attention_head_dim == 4
    bad = write_checkpoint(
        tmp_path / "bad.safetensors", tiny.state, metadata={"latentstudio.architecture": "{"}
    )
    with pytest.raises(ModelFileError, match=r"latentstudio\.architecture is not valid JSON"):
        loader.load_checkpoint(bad, device=CPU, dtype=torch.float32)
