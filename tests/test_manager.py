"""The model manager: lazy loading, the RAM cache of N checkpoints, VAE selection, offline loading."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

from latentstudio.config import OFFLINE_ENV, Settings
from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.models.files import ModelFileError
from latentstudio.models.hashes import sha256_file
from latentstudio.models.manager import ModelManager, ModelNotFoundError
from latentstudio.models.synthetic import write_checkpoint
from tests.conftest import MakeTiny


def _manager(models_dir: Path, keep: int = 2) -> ModelManager:
    data = models_dir.parent / "data"
    settings = Settings(
        models_dir=models_dir, data_dir=data, device="cpu", checkpoints_in_ram=keep, builtin_model=False
    )
    return ModelManager(settings)


def _install(
    make_tiny: MakeTiny, models_dir: Path, name: str, family: Family = Family.SD1, seed: int = 0
) -> Path:
    target = models_dir / "Stable-diffusion" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(make_tiny(family, seed=seed).path, target)
    return target


def test_loads_on_first_use_and_keeps_the_last_n(make_tiny: MakeTiny, models_dir: Path) -> None:
    a = _install(make_tiny, models_dir, "a.safetensors", seed=0)
    b = _install(make_tiny, models_dir, "b.safetensors", seed=1)
    c = _install(make_tiny, models_dir, "sub/c.safetensors", Family.SD2)
    manager = _manager(models_dir, keep=2)
    assert manager.loaded() == []
    first = manager.load("a")
    assert manager.load("a.safetensors").unet is first.unet  # warm: same objects, nothing reloaded
    manager.load("b")
    assert manager.loaded() == [a, b]
    manager.load("a")  # touch: b becomes least recently used
    third = manager.load("sub/c.safetensors")
    assert third.info.family is Family.SD2
    assert manager.loaded() == [a, c]
    assert manager.load("a").unet is first.unet
    manager.unload()
    assert manager.loaded() == []


def test_default_is_the_first_checkpoint_and_errors_list_names(make_tiny: MakeTiny, models_dir: Path) -> None:
    manager = _manager(models_dir)
    with pytest.raises(ModelNotFoundError, match="no checkpoints in"):
        manager.load()
    _install(make_tiny, models_dir, "model10.safetensors")
    _install(make_tiny, models_dir, "model2.safetensors", seed=1)
    manager.refresh()
    assert manager.load().path.name == "model2.safetensors"  # natural sort
    expected = r"unknown checkpoint 'nope'; available: model2\.safetensors, model10"
    with pytest.raises(ModelNotFoundError, match=expected):
        manager.load("nope")


def test_titles_and_hash_lookup_as_a1111(make_tiny: MakeTiny, models_dir: Path) -> None:
    path = _install(make_tiny, models_dir, "x.safetensors")
    manager = _manager(models_dir)
    info = manager.find("x")
    described = manager.describe(info)
    assert described.sha256 == sha256_file(path)
    assert described.title == f"x.safetensors [{described.sha256[:10]}]"
    assert described.family == "sd1"
    assert manager.find(described.sha256[:10]) == info
    assert manager.find(described.title) == info


def test_failed_load_leaves_nothing_cached(make_tiny: MakeTiny, models_dir: Path) -> None:
    good = _install(make_tiny, models_dir, "good.safetensors")
    bad = models_dir / "Stable-diffusion" / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[:5000])
    manager = _manager(models_dir)
    with pytest.raises(ModelFileError, match=r"bad\.safetensors: truncated"):
        manager.load("bad")
    assert manager.loaded() == []
    assert manager.load("good").path == good


def test_vae_selection_automatic_named_and_none(make_tiny: MakeTiny, models_dir: Path) -> None:
    _install(make_tiny, models_dir, "base.safetensors", seed=0)
    other = make_tiny(Family.SD1, seed=1)
    vae_state = {k: v for k, v in other.state.items() if k.startswith("first_stage_model.")}
    write_checkpoint(models_dir / "VAE" / "nice.safetensors", vae_state)
    manager = _manager(models_dir)
    own = manager.load("base", vae="None")
    named = manager.load("base", vae="nice.safetensors")
    assert named.unet is own.unet  # switching the VAE never reloads the checkpoint
    assert named.vae_path == models_dir / "VAE" / "nice.safetensors"
    assert torch.equal(named.vae.decoder.conv_out.weight, other.vae.decoder.conv_out.weight)
    assert manager.load("base").vae is own.vae  # Automatic, and no VAE named like the checkpoint
    write_checkpoint(models_dir / "VAE" / "base.vae.safetensors", vae_state)
    manager.refresh()
    assert manager.load("base").vae_path == models_dir / "VAE" / "base.vae.safetensors"
    with pytest.raises(ModelNotFoundError, match=r"unknown VAE 'x'; allowed: Automatic, None, base.vae"):
        manager.load("base", vae="x")


def test_loading_opens_no_socket(
    make_tiny: MakeTiny, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading a single file and a diffusers folder never touches the network, and the manager turns the
    Hugging Face libraries offline."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    _install(make_tiny, models_dir, "net.safetensors")
    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for key in OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    manager = _manager(models_dir)
    assert all(os.environ[key] == value for key, value in OFFLINE_ENV.items())
    components = manager.load("net")
    assert components.tokenizers["text_encoder"]("a cat").input_ids == [49406, 320, 2368, 49407]


def test_diffusers_folder_in_the_models_dir(make_tiny: MakeTiny, models_dir: Path) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from latentstudio.models.tokenizer import clip_tokenizer

    tiny = make_tiny(Family.SD1)
    pipe = StableDiffusionPipeline(
        vae=tiny.vae, text_encoder=tiny.text_encoders["text_encoder"], tokenizer=clip_tokenizer(),
        unet=tiny.unet, scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(models_dir / "Stable-diffusion" / "folder-model")
    manager = _manager(models_dir)
    assert [i.name for i in manager.checkpoints()] == ["folder-model"]
    components = manager.load("folder-model")
    assert isinstance(components, loader.Components)
    assert torch.equal(components.unet.conv_in.weight, tiny.unet.conv_in.weight)
    assert manager.describe(manager.find("folder-model")).family == "sd1"
