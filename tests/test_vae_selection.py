"""VAE selection as A1111's ``sd_vae`` (Automatic finds a VAE named after the checkpoint file) and the
infotext's ``VAE hash`` / ``VAE`` keys."""

from __future__ import annotations

from pathlib import Path

from latentstudio import infotext
from latentstudio.config import Settings
from latentstudio.models.families import Family
from latentstudio.models.hashes import sha256_file
from latentstudio.models.manager import ModelManager
from latentstudio.models.synthetic import write_checkpoint
from latentstudio.pipeline import infotexts
from latentstudio.pipeline.params import GenerationParams
from latentstudio.pipeline.run import ModelIdentity
from latentstudio.samplers import SAMPLER_INFO
from tests.conftest import MakeTiny


def test_automatic_vae_is_named_after_the_checkpoint_file_and_hashed(
    make_tiny: MakeTiny, models_dir: Path, tmp_path: Path
) -> None:
    tiny = make_tiny(Family.SD1)
    (models_dir / "Stable-diffusion" / "model.v2.safetensors").symlink_to(tiny.path)
    vae_state = {k: v for k, v in tiny.state.items() if k.startswith("first_stage_model.")}
    write_checkpoint(models_dir / "VAE" / "model.vae.safetensors", vae_state)  # "model", not "model.v2"
    manager = ModelManager(Settings(models_dir=models_dir, data_dir=tmp_path / "data", device="cpu"))
    components = manager.load("model.v2")
    assert components.vae_path is None  # A1111 matches the stem without the last extension only
    assert manager.vae_shorthash(components) is None
    near = write_checkpoint(models_dir / "VAE" / "model.v2-ft-mse.safetensors", vae_state)
    manager.refresh()
    components = manager.load("model.v2")
    assert components.vae_path == near
    shorthash = manager.vae_shorthash(components)
    assert shorthash == sha256_file(near)[:10]
    params = GenerationParams(prompt="x", width=64, height=64, seed=1).resolved()
    identity = ModelIdentity("model.v2", "0123456789", near.name, shorthash)
    values = infotexts.parameters(params, identity, 1, 1, "Karras", SAMPLER_INFO[params.sampler])
    line = infotext.format(params.prompt, params.negative_prompt, values)
    assert f"Model: model.v2, VAE hash: {shorthash}, VAE: model.v2-ft-mse.safetensors" in line
