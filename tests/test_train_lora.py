"""``train lora`` on a tiny real SD1 checkpoint: the loss falls, the file is kohya's (keys A1111 reads, fp16,
``ss_*`` metadata, the addnet hash), it loads through our LoRA loader and changes generation at strength 1
but not at 0, resume is exact; the folder scan, buckets and batch order on their own."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from latentstudio.cli import app
from latentstudio.models.families import Family
from latentstudio.models.hashes import HashCache, addnet_hash
from latentstudio.models.loader import Components, load_checkpoint
from latentstudio.models.lora import LoraLibrary, LoraNetworks, LoraRequest
from latentstudio.models.lora.keys import ModuleIndex
from latentstudio.models.lora.library import family_of, rank_of
from latentstudio.pipeline.params import GenerationParams
from latentstudio.pipeline.run import ModelIdentity, run
from latentstudio.train import shapes
from latentstudio.train.loop import TrainResult, train
from latentstudio.train.lora import LoraConfig, LoraTask
from latentstudio.train.lora_data import (
    BatchOrder,
    DataError,
    bucket_sizes,
    fit,
    nearest_bucket,
    scan_folder,
)
from tests.conftest import MakeTiny

TINY = {"resolution": 64, "bucket_step": 32, "rank": 4, "alpha": 4.0, "batch_size": 2, "lr": 1e-2,
        "threads": 1, "checkpoint_every": 1000, "sample_every": 0, "log_every": 5}  # fmt: skip
# A1111's convert_diffusers_name_to_compvis patterns (extensions-builtin/Lora/networks.py), SD1 names
A1111_SD1 = re.compile(
    r"lora_unet_(down_blocks_\d+|up_blocks_\d+|mid_block)_attentions_\d+_.+"
    r"|lora_te_text_model_encoder_layers_\d+_(self_attn_(q|k|v|out)_proj|mlp_fc[12])"
)
KOHYA_KEY = re.compile(r"(lora_[a-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|alpha)")


def _picture(path: Path, size: tuple[int, int], seed: int) -> str:
    """A shapes picture stretched to ``size`` at ``path``; returns its caption."""
    sample = shapes.sample(seed, 0, 96)
    Image.fromarray(sample.image).resize(size).save(path)
    return sample.caption


def _folder(root: Path) -> Path:
    """``10_zorb/`` (3 captioned pictures, one wide, one tall) and 1 captioned picture at the top level."""
    (root / "10_zorb").mkdir(parents=True)
    for i, size in enumerate([(64, 64), (96, 32), (32, 96)]):
        caption = _picture(root / "10_zorb" / f"{i}.png", size, i)
        (root / "10_zorb" / f"{i}.txt").write_text(f"zorb, {caption}\n", encoding="utf-8")
    caption = _picture(root / "extra.jpg", (64, 64), 7)
    (root / "extra.txt").write_text(caption, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("lora-data") / "zorb")


@pytest.fixture(scope="module")
def base(make_tiny: MakeTiny) -> Path:
    return make_tiny(Family.SD1, seed=2).path


@pytest.fixture(scope="module")
def trained(base: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[LoraTask, TrainResult]:
    """20 steps with text-encoder LoRA and one sample grid at the end."""
    config = LoraConfig(output_dir=str(tmp_path_factory.mktemp("lora-run")), base=str(base), data=str(data),
                        steps=20, train_text_encoder=True, sample_steps=2, **{**TINY, "sample_every": 20})  # type: ignore[arg-type]  # fmt: skip
    task = LoraTask(config)
    return task, train(task, config)


def _components(path: Path) -> Components:
    return load_checkpoint(path, device=torch.device("cpu"), dtype=torch.float32)


def test_buckets_are_kohyas() -> None:
    """kohya's buckets at 512 (step 64, sides 256…1024), an image goes to the nearest aspect ratio and is
    resized to cover its bucket and centre-cropped."""
    buckets = bucket_sizes(512, 64, 256, 1024)
    for size in [(512, 512), (576, 448), (448, 576), (640, 384), (768, 320), (1024, 256), (256, 1024)]:
        assert size in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)
    assert nearest_bucket((1920, 1080), buckets) == (640, 384)
    assert nearest_bucket((1080, 1920), buckets) == (384, 640)
    assert nearest_bucket((300, 300), buckets) == (512, 512)
    assert nearest_bucket((1000, 800), buckets) == (576, 448)
    tiny = bucket_sizes(64, 8, 32, 128)  # tiny models: a finer step
    assert (32, 128) in tiny
    assert (72, 56) in tiny
    assert all(w % 8 == 0 and h % 8 == 0 for w, h in tiny)
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 140:160] = 255  # a white stripe in the middle of a 3:1 picture
    fitted, crop = fit(Image.fromarray(image), (128, 64))
    assert fitted.size == (128, 64)
    assert crop == (0, 32)  # resized to 192×64, 32 px cut on each side
    column = np.asarray(fitted)[32, :, 0]
    assert column[64] == 255
    assert column[0] == column[-1] == 0


def test_folder_scan_repeats_captions_and_errors(data: Path, tmp_path: Path) -> None:
    dataset = scan_folder(data)
    assert [(p.path.name, p.folder, p.repeats) for p in dataset.pictures] == [
        ("extra.jpg", "zorb", 1), ("0.png", "10_zorb", 10), ("1.png", "10_zorb", 10), ("2.png", "10_zorb", 10)
    ]  # fmt: skip
    assert dataset.pictures[2].size == (96, 32)
    assert dataset.num_train_images == 31
    assert dataset.dataset_dirs() == {"zorb": {"n_repeats": 1, "img_count": 1},
                                      "10_zorb": {"n_repeats": 10, "img_count": 3}}  # fmt: skip
    assert dataset.tag_frequency()["10_zorb"]["zorb"] == 3
    assert dataset.warnings == ()

    root = tmp_path / "set"
    (root / "4_cat").mkdir(parents=True)
    (root / "misc").mkdir()
    _picture(root / "4_cat" / "a.png", (64, 64), 1)
    scanned = scan_folder(root)
    assert scanned.pictures[0].caption == "cat"  # kohya's class token for an image without caption
    assert any("without a .txt caption" in w for w in scanned.warnings)
    assert any("misc" in w and "ignored" in w for w in scanned.warnings)
    (root / "4_cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png: unreadable image"):
        scan_folder(root)
    with pytest.raises(DataError, match="no such folder"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        scan_folder(tmp_path / "empty")


def test_batch_order_is_one_bucket_per_batch_and_a_function_of_the_index() -> None:
    buckets = [(64, 64), (64, 64), (96, 32), (64, 64), (96, 32)]
    order = BatchOrder(buckets, [2, 1, 1, 3, 2], batch_size=2, seed=5)
    assert order.per_epoch == 3 + 2  # 6 square entries, 3 wide ones
    epoch = [order.batch(k) for k in range(order.per_epoch)]
    assert all(len({buckets[i] for i in batch}) == 1 for batch in epoch)
    assert Counter(i for batch in epoch for i in batch) == {0: 2, 1: 1, 2: 1, 3: 3, 4: 2}
    again = BatchOrder(buckets, [2, 1, 1, 3, 2], batch_size=2, seed=5)
    assert [again.batch(k) for k in reversed(range(8))] == [order.batch(k) for k in reversed(range(8))]
    next_epoch = [order.batch(order.per_epoch + k) for k in range(order.per_epoch)]
    assert next_epoch != epoch


def test_training_lowers_the_loss_and_writes_samples(trained: tuple[LoraTask, TrainResult]) -> None:
    task, result = trained
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.8 * first, (first, last)
    assert task.buckets == [(64, 64), (64, 64), (96, 32), (32, 96)]
    grid = Image.open(result.output_dir / "samples" / "step-000020.png")
    assert grid.size == (64 * 2, 64)  # one image per sample prompt (the first two distinct captions)
    assert task.network.enabled
    saved = LoraConfig.load(result.output_dir / "config.json")
    assert saved == task.config


def test_the_file_is_kohya_format(trained: tuple[LoraTask, TrainResult], base: Path) -> None:
    task, result = trained
    path = result.output_dir / "final" / "zorb.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    modules: dict[str, set[str]] = {}
    for key, tensor in tensors.items():
        match = KOHYA_KEY.fullmatch(key)
        assert match, key
        modules.setdefault(match.group(1), set()).add(match.group(2))
        assert tensor.dtype == torch.float16
    assert all(parts == {"lora_down.weight", "lora_up.weight", "alpha"} for parts in modules.values())
    assert [n for n in modules if not A1111_SD1.fullmatch(n)] == []
    assert any(n.startswith("lora_te_") for n in modules)
    assert any(n.endswith("_proj_in") for n in modules)  # SD1's 1×1 conv projections too
    proj_in = next(n for n in modules if n.endswith("_proj_in"))
    assert tensors[proj_in + ".lora_down.weight"].shape[0] == 4
    assert tensors[proj_in + ".lora_down.weight"].ndim == 4  # [r, in, 1, 1] as kohya
    assert float(tensors[proj_in + ".alpha"]) == 4.0
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "4.0")
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_sd_model_name"] == base.name
    assert meta["ss_output_name"] == "zorb"
    assert meta["ss_resolution"] == "(64, 64)"
    assert meta["ss_num_train_images"] == "31"
    assert (meta["ss_steps"], meta["ss_num_batches_per_epoch"]) == ("20", str(task.order.per_epoch))
    assert json.loads(meta["ss_tag_frequency"])["10_zorb"]["zorb"] == 3
    assert float(meta["ss_training_started_at"]) > 1.6e9
    assert meta["sshs_model_hash"] == addnet_hash(path)
    shapes_ = {k: tuple(v.shape) for k, v in tensors.items()}
    assert family_of(shapes_, meta) is Family.SD1
    assert rank_of(shapes_, meta) == 4


def test_it_loads_and_changes_generation_at_1_not_at_0(
    trained: tuple[LoraTask, TrainResult], base: Path
) -> None:
    task, result = trained
    components = _components(base)
    index = ModuleIndex(components)
    for name in task.modules:  # every kohya name resolves to the module the adapter trained on
        target = index.find(name)
        assert target is not None, name
    library = LoraLibrary([result.output_dir / "final"], HashCache(result.output_dir / "hashes.json"))
    networks = LoraNetworks(library)
    activation = networks.activate(components, [LoraRequest("zorb")])
    assert activation.warnings == ()
    assert activation.patched == len(task.modules)
    networks.deactivate()

    def image(prompt: str) -> np.ndarray:
        params = GenerationParams(prompt=prompt, steps=3, seed=3, width=64, height=64).resolved()
        out = run(params, components, identity=ModelIdentity("tiny"), loras=networks)
        assert out.warnings == []
        return np.asarray(out.images[0]).astype(np.int16)

    plain = image("zorb, a red circle")
    assert np.abs(image("zorb, a red circle <lora:zorb:1>") - plain).max() > 8
    assert np.array_equal(image("zorb, a red circle <lora:zorb:0>"), plain)


def test_resume_is_exact(base: Path, data: Path, tmp_path: Path) -> None:
    def config(folder: str) -> LoraConfig:
        return LoraConfig(output_dir=str(tmp_path / folder), base=str(base), data=str(data), steps=6,
                          **{**TINY, "checkpoint_every": 3})  # type: ignore[arg-type]  # fmt: skip

    straight = train(LoraTask(config("a")), config("a"))
    first = train(LoraTask(config("b")), config("b"), stop_at=3)
    assert not (tmp_path / "b" / "final").exists()
    second = train(LoraTask(config("b")), config("b"))
    assert (first.first_step, second.first_step) == (0, 3)
    assert first.losses + second.losses == straight.losses
    a = _safetensors(tmp_path / "a" / "checkpoint-6" / "modules.safetensors")
    b = _safetensors(tmp_path / "b" / "checkpoint-6" / "modules.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_sdxl_trains_both_text_encoders_with_kohya_names(
    make_tiny: MakeTiny, data: Path, tmp_path: Path
) -> None:
    base = make_tiny(Family.SDXL).path
    config = LoraConfig(output_dir=str(tmp_path), base=str(base), data=str(data), steps=2,
                        train_text_encoder=True, **TINY)  # type: ignore[arg-type]  # fmt: skip
    task = LoraTask(config)
    train(task, config)
    path = tmp_path / "final" / "zorb.safetensors"
    with safe_open(str(path), "pt") as f:
        names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in f.keys()}  # noqa: SIM118
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert {n.split("_text_model")[0] for n in names if n.startswith("lora_te")} == {"lora_te1", "lora_te2"}
    assert all(n.startswith(("lora_te1_", "lora_te2_", "lora_unet_input_blocks_", "lora_unet_middle_block_",
                             "lora_unet_output_blocks_")) for n in names)  # fmt: skip
    components = _components(base)
    networks = LoraNetworks(LoraLibrary([tmp_path / "final"], HashCache(tmp_path / "hashes.json")))
    activation = networks.activate(components, [LoraRequest("zorb")])
    assert activation.warnings == ()
    assert activation.patched == len(names)


def test_cli_trains_and_refuses_clearly(base: Path, data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["train", "lora", "--base", str(base), "--data", str(tmp_path / "nope")])
    assert missing.exit_code == 1
    assert "no such folder" in missing.output
    args = ["train", "lora", "--base", str(base), "--data", str(data), "--output-dir", str(tmp_path / "run"),
            "--steps", "2", "--rank", "2", "--alpha", "1", "--resolution", "64", "--bucket-step", "32",
            "--output-name", "tiny-zorb", "--sample-every", "0"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "final" / "tiny-zorb.safetensors").is_file()
    wrong = runner.invoke(app, [*args[:-2], "--bucket-step", "12"])
    assert wrong.exit_code == 1
    assert "bucket_step" in wrong.output
