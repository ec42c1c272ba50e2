"""Short training runs of each mode on tiny configs: the loss falls, outputs load back through the
loader and the generation pipeline, resume is exact; the objectives share the sampler's parameterisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentstudio.core import Prediction
from latentstudio.models.files import ModelFileError
from latentstudio.models.loader import load_checkpoint
from latentstudio.samplers.schedules import model_sigmas_from_alphas, scaled_linear_alphas_cumprod
from latentstudio.samplers.wrappers import scalings
from latentstudio.train import architecture
from latentstudio.train.config import ModelConfig, VaeConfig
from latentstudio.train.eval_shapes import generate
from latentstudio.train.loop import MicroBatch, train
from latentstudio.train.objectives import noise_batch
from latentstudio.train.tasks import ModelTask, VaeTask

TINY_VAE = {"resolution": 32, "channels": (8, 8, 8, 8), "norm_groups": 4, "batch_size": 4, "threads": 1,
            "checkpoint_every": 1000, "sample_every": 0, "log_every": 5, "warmup": 2}  # fmt: skip
TINY_MODEL = {"resolution": 32, "unet_channels": (16, 32), "unet_attention": (True, False), "norm_groups": 4,
              "heads": 2, "text_width": 16, "text_layers": 1, "text_heads": 2, "batch_size": 8, "threads": 1,
              "checkpoint_every": 1000, "sample_every": 0, "log_every": 5, "warmup": 2}  # fmt: skip


def _held_out_loss(task: ModelTask) -> float:
    """The loss on fixed held-out batches and noise (the training losses are too noisy to compare)."""
    with torch.no_grad():
        batches = [MicroBatch(0, 10_000 + 64 * i, 64, torch.Generator().manual_seed(i)) for i in range(4)]
        losses = [task.loss(task.modules, batch) for batch in batches]
    return float(sum(losses)) / len(losses)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = VaeConfig(output_dir=str(tmp_path_factory.mktemp("vae")), steps=30, **TINY_VAE)  # type: ignore[arg-type]
    result = train(VaeTask(config), config)
    assert sum(result.losses[-5:]) < sum(result.losses[:5])
    assert VaeConfig.load(result.output_dir / "config.json") == config
    return result.output_dir / "final"


def test_vae_mode_exports_weights_and_a_latent_scale(tiny_vae: Path) -> None:
    config = json.loads((tiny_vae / "vae_config.json").read_text())
    assert config["block_out_channels"] == [8, 8, 8, 8]
    assert config["scaling_factor"] > 0
    assert "decoder.conv_out.weight" in load_file(str(tiny_vae / "vae.safetensors"))


@pytest.mark.parametrize("objective", ["epsilon", "v_prediction"])
def test_model_mode_learns_and_loads_back_through_the_pipeline(
    tiny_vae: Path, tmp_path: Path, objective: str
) -> None:
    config = ModelConfig(output_dir=str(tmp_path), vae=str(tiny_vae), steps=20, objective=objective,  # type: ignore[arg-type]
                         ema_decay=0.9, lr=3e-3, **TINY_MODEL)  # type: ignore[arg-type]  # fmt: skip
    task = ModelTask(config)
    before = _held_out_loss(task)
    train(task, config)
    assert _held_out_loss(task) < 0.9 * before
    components = load_checkpoint(tmp_path / "final" / "model.safetensors", device=torch.device("cpu"),
                                 dtype=torch.float32)  # fmt: skip
    expected = Prediction.V if objective == "v_prediction" else Prediction.EPSILON
    assert components.info.prediction is expected
    assert components.info.native_size == 32
    image = generate(components, "a red circle on a blue background", 1, steps=4)
    assert image.shape == (32, 32, 3)
    assert (tmp_path / "log.jsonl").read_text().count("\n") == 4  # every 5 steps


def test_resume_is_exact(tiny_vae: Path, tmp_path: Path) -> None:
    def config(folder: str) -> ModelConfig:
        return ModelConfig(output_dir=str(tmp_path / folder), vae=str(tiny_vae), steps=6, ema_decay=0.9,
                           **TINY_MODEL)  # type: ignore[arg-type]  # fmt: skip

    straight = train(ModelTask(config("a")), config("a"))
    first = train(ModelTask(config("b")), config("b"), stop_at=3)
    assert not (tmp_path / "b" / "final").exists()
    second = train(ModelTask(config("b")), config("b"))
    assert (first.first_step, second.first_step) == (0, 3)
    assert first.losses + second.losses == straight.losses
    for name in ("modules.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "a" / "checkpoint-6" / name))
        b = load_file(str(tmp_path / "b" / "checkpoint-6" / name))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_data_workers_change_nothing_but_speed(tiny_vae: Path, tmp_path: Path) -> None:
    """The next micro-batches' pictures and token ids are made ahead in worker processes (for a GPU);
    the data is a pure function of the sample indices, so 2 workers train bit for bit what none do,
    grad_accum's micro-batches in the same order."""

    def run(folder: str, workers: int) -> dict[str, torch.Tensor]:
        config = ModelConfig(output_dir=str(tmp_path / folder), vae=str(tiny_vae), steps=3, grad_accum=2,
                             ema_decay=0.9, data_workers=workers, **TINY_MODEL)  # type: ignore[arg-type]  # fmt: skip
        train(ModelTask(config), config)
        return load_file(str(tmp_path / folder / "checkpoint-3" / "ema.safetensors"))

    inline, ahead = run("inline", 0), run("ahead", 2)
    assert inline.keys() == ahead.keys()
    assert all(torch.equal(inline[k], ahead[k]) for k in inline)


@pytest.mark.skipif(torch.accelerator.is_available(), reason="the CPU rule")
def test_mixed_precision_falls_back_to_fp32_on_a_cpu(tiny_vae: Path, tmp_path: Path) -> None:
    """Issue 8: never bf16 on a CPU (up to ~40x slower here): a bf16 config trains in fp32, with a warning,
    exactly what "no" trains; the config keeps what was asked."""

    def run(folder: str, precision: str) -> dict[str, torch.Tensor]:
        config = ModelConfig(output_dir=str(tmp_path / folder), vae=str(tiny_vae), steps=2, ema_decay=0.9,
                             mixed_precision=precision, **TINY_MODEL)  # type: ignore[arg-type]  # fmt: skip
        train(ModelTask(config), config)
        return load_file(str(tmp_path / folder / "checkpoint-2" / "modules.safetensors"))

    plain = run("no", "no")
    with pytest.warns(UserWarning, match="mixed_precision 'bf16' ignored without a GPU"):
        asked = run("bf16", "bf16")
    assert all(v.dtype == torch.float32 and torch.equal(v, asked[k]) for k, v in plain.items())
    assert ModelConfig.load(tmp_path / "bf16" / "config.json").mixed_precision == "bf16"


@pytest.mark.parametrize("prediction", [Prediction.EPSILON, Prediction.V])
def test_targets_invert_the_sampler_denoiser(prediction: Prediction) -> None:
    """D(x_σ) = c_skip·x_σ + c_out·target must give back the clean latent: the loss trains exactly the
    output the sampler's :class:`~latentstudio.samplers.wrappers.Denoiser` expects."""
    sigmas = model_sigmas_from_alphas(scaled_linear_alphas_cumprod())
    latents = torch.randn(6, 4, 8, 8)
    batch = noise_batch(latents, sigmas, prediction, torch.Generator().manual_seed(0), min_snr_gamma=5.0)
    sigma = sigmas[batch.t].float()
    c_skip, c_out, c_in = (s[:, None, None, None] for s in scalings(sigma, prediction))
    x_sigma = batch.x_in / c_in
    torch.testing.assert_close(c_skip * x_sigma + c_out * batch.target, latents, rtol=1e-4, atol=1e-4)
    assert bool((batch.weight <= 1.0).all())
    assert bool((batch.weight > 0).all())


def test_the_architecture_metadata_builds_what_shapes_cannot_tell(tmp_path: Path) -> None:
    """Group norm width and text-encoder heads are not in any tensor shape: the loader takes them from the
    file's ``latentstudio.architecture`` metadata; without it the same tensors are refused."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from latentstudio.models.synthetic import write_checkpoint

    model = ModelConfig(**TINY_MODEL)  # type: ignore[arg-type]
    vae = AutoencoderKL.from_config(architecture.vae_architecture(VaeConfig(**TINY_VAE)))  # type: ignore[arg-type]
    unet = UNet2DConditionModel.from_config(architecture.unet_architecture(model, 4, 4))
    text = architecture.build_text_encoder(architecture.text_architecture(model))
    path = architecture.export_sd1(tmp_path / "m.safetensors", unet, vae, text, dtype=torch.float32)
    loaded = load_checkpoint(path, device=torch.device("cpu"), dtype=torch.float32)
    assert loaded.unet.config.norm_num_groups == 4
    assert loaded.vae.config.norm_num_groups == 4
    assert loaded.text_encoders["text_encoder"].config.num_attention_heads == 2
    for key, value in unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[key], value)
    bare = write_checkpoint(tmp_path / "bare.safetensors", load_file(str(path)))
    with pytest.raises((ModelFileError, ValueError)):  # GroupNorm(32) on 8 channels
        load_checkpoint(bare, device=torch.device("cpu"), dtype=torch.float32)


def test_learning_rate_schedule_and_config_round_trip(tmp_path: Path) -> None:
    config = ModelConfig(lr=1e-3, warmup=10, lr_steps=((100, 3e-4), (50, 5e-4)))
    assert config.lr_at(0) == pytest.approx(1e-4)
    assert [config.lr_at(s) for s in (20, 50, 99, 100, 500)] == [1e-3, 5e-4, 5e-4, 3e-4, 3e-4]
    config.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == config
    with pytest.raises(ValueError, match="a ModelConfig config"):
        VaeConfig.load(tmp_path / "config.json")


def test_train_model_needs_a_vae_or_a_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from latentstudio.cli import app

    result = CliRunner().invoke(app, ["train", "model", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "--vae: required without --config" in result.stderr
    assert not (tmp_path / "run").exists()
