"""``train controlnet`` / ``train t2i-adapter`` on a tiny real SD1 checkpoint: the loss falls, the files are
in the original layouts (cldm, Tencent) with their metadata, they load through the inference path with the
trained weights and change generation; conditions from a folder or from a preprocessor (cached); 2-process
DDP equals 1 process with the same global batch; a killed job resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from latentstudio.cli import app
from latentstudio.control.layouts import to_diffusers
from latentstudio.control.networks import inspect_control_file, load_control_network
from latentstudio.control.units import ControlUnit
from latentstudio.models.families import Family
from latentstudio.models.files import ModelFileError
from latentstudio.models.hashes import legacy_hash
from latentstudio.models.loader import load_checkpoint
from latentstudio.pipeline.params import GenerationParams
from latentstudio.pipeline.run import ModelIdentity, run
from latentstudio.train import shapes
from latentstudio.train.config import ControlConfig
from latentstudio.train.control import ControlTask, adapter_to_tencent
from latentstudio.train.control_data import DataError
from latentstudio.train.loop import MicroBatch, train
from tests.conftest import MakeTiny
from tests.test_train_ddp import _kill_job, kill_after_checkpoint

STEPS, CHECKPOINT_EVERY = 8, 2
TINY = {"resolution": 64, "batch_size": 2, "lr": 2e-3, "threads": 1, "steps": STEPS, "warmup": 1,
        "checkpoint_every": CHECKPOINT_EVERY, "sample_every": 0, "log_every": 1, "caption_dropout": 0.25,
        "processor_res": 64}  # fmt: skip


def _folder(root: Path, count: int = 6) -> Path:
    """``count`` captioned shapes pictures, a third of them in a ``2_extra`` subfolder (2 repeats)."""
    (root / "2_extra").mkdir(parents=True)
    for i in range(count):
        sample = shapes.sample(5, i, 64)
        where = root / "2_extra" if i % 3 == 2 else root
        Image.fromarray(sample.image).save(where / f"{i}.png")
        (where / f"{i}.txt").write_text(sample.caption, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def base(make_tiny: MakeTiny) -> Path:
    return make_tiny(Family.SD1, seed=3).path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("control-data") / "shapes")


def _config(out: Path, base: Path, data: Path, kind: str = "controlnet", **changes: object) -> ControlConfig:
    settings = {**TINY, "preprocessor": "canny", **changes}
    return ControlConfig(output_dir=str(out), network=kind, base=str(base), data=str(data),  # type: ignore[arg-type]
                         **settings)  # type: ignore[arg-type]  # fmt: skip


def _held_loss(task: ControlTask) -> float:
    """The loss on the first 4 batches with fixed noise (what training changes, without its step noise)."""
    with torch.no_grad():
        return sum(
            float(task.loss(task.modules, MicroBatch(0, 2 * i, 2, torch.Generator().manual_seed(i))))
            for i in range(4)
        )


@pytest.fixture(scope="module", params=["controlnet", "t2i-adapter"])
def trained(
    request: pytest.FixtureRequest, base: Path, data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ControlTask, list[float], Path]:
    lr = 2e-3 if request.param == "controlnet" else 1e-2  # an adapter starts random: far from the base
    config = _config(tmp_path_factory.mktemp(request.param), base, data, request.param, steps=24, lr=lr)
    task = ControlTask(config)
    before = _held_loss(task)
    result = train(task, config)
    return (
        task,
        [before, _held_loss(task), *result.losses],
        result.output_dir / "final" / "shapes.safetensors",
    )


def test_the_loss_falls(trained: tuple[ControlTask, list[float], Path]) -> None:
    _, (before, after, *losses), _ = trained
    assert len(losses) == 24
    assert after < 0.9 * before


def test_the_file_is_in_the_original_layout_with_its_metadata(
    trained: tuple[ControlTask, list[float], Path], base: Path
) -> None:
    task, _, file = trained
    info = inspect_control_file(file)
    assert info.family is Family.SD1
    with safe_open(str(file), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        assert {f.get_tensor(k).dtype for k in keys} == {torch.float16}
    if task.config.network == "controlnet":
        assert info.layout == "cldm"
        assert all(k.startswith("control_model.") for k in keys)
        assert {"control_model.input_hint_block.0.weight", "control_model.zero_convs.0.0.weight",
                "control_model.middle_block_out.0.weight"} <= keys  # fmt: skip
        assert json.loads(meta["latentstudio.architecture"])["controlnet"]["norm_num_groups"] == 32
    else:
        assert info.layout == "tencent-full"
        assert {
            "conv_in.weight",
            "body.0.block1.weight",
            "body.1.block2.weight",
            "body.2.in_conv.weight",
        } <= keys
    assert meta["latentstudio.base_model_hash"] == legacy_hash(base)
    assert meta["latentstudio.preprocessor"] == "canny"
    assert meta["latentstudio.steps"] == "24"
    assert json.loads(meta["latentstudio.train_config"])["network"] == task.config.network


def test_the_file_loads_with_the_trained_weights(trained: tuple[ControlTask, list[float], Path]) -> None:
    task, _, file = trained
    network = load_control_network(file, device=torch.device("cpu"), dtype=torch.float32)
    loaded = network.module.state_dict()
    trained_state = task.modules["network"].state_dict()
    assert loaded.keys() == trained_state.keys()
    for key, value in trained_state.items():
        torch.testing.assert_close(loaded[key], value.half().float(), rtol=0, atol=0, msg=key)


def test_adapter_keys_round_trip_through_the_loaders_renaming() -> None:
    state = {
        f"adapter.body.{i}.resnets.{j}.block1.weight": torch.zeros(1) for i in range(3) for j in range(2)
    }
    state |= {"adapter.conv_in.weight": torch.zeros(1), "adapter.body.1.in_conv.weight": torch.zeros(1)}
    tencent = adapter_to_tencent(state)
    assert {"body.3.block1.weight", "body.2.in_conv.weight"} <= tencent.keys()
    assert to_diffusers(Path("x"), "tencent-full", tencent).keys() == state.keys()


def test_the_trained_file_changes_the_image(
    trained: tuple[ControlTask, list[float], Path], base: Path, data: Path
) -> None:
    _, _, file = trained
    components = load_checkpoint(base, device=torch.device("cpu"), dtype=torch.float32)
    network = load_control_network(file, device=torch.device("cpu"), dtype=torch.float32,
                                   base_unet=components.unet)  # fmt: skip
    picture = Image.open(data / "0.png").convert("RGB")

    def generate(weight: float | None) -> np.ndarray:
        units = () if weight is None else (ControlUnit(module="canny", model=file.stem, image=picture,
                                                         weight=weight, processor_res=64),)  # fmt: skip
        params = GenerationParams(prompt="a red circle", steps=4, seed=1, width=64, height=64, control=units)
        result = run(params.resolved(), components, identity=ModelIdentity("tiny"),
                     controls=[network] if units else [])  # fmt: skip
        return np.asarray(result.images[0], dtype=np.int16)

    plain, off, on = generate(None), generate(0.0), generate(1.0)
    assert np.array_equal(plain, off)
    assert np.abs(on - plain).mean() > 1.0


def test_preprocessed_conditions_are_computed_once_and_cached(base: Path, data: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "run", base, data)
    first = ControlTask(config).source.data(0, 2)
    cache = tmp_path / "run" / "conditions" / "canny-64-None-None"
    files = sorted(cache.glob("*.png"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    again = ControlTask(config).source.data(0, 2)
    assert [f.stat().st_mtime_ns for f in sorted(cache.glob("*.png"))] == stamps  # read back, not rewritten
    torch.testing.assert_close(again.hints, first.hints)
    assert set(first.hints.unique().tolist()) <= {0.0, 1.0}  # canny's map, fitted as the inference path does
    assert first.hints.shape == (2, 3, 64, 64)


def test_conditions_from_a_folder_and_a_missing_one(base: Path, data: Path, tmp_path: Path) -> None:
    conditions = tmp_path / "conditions"
    for picture in sorted(data.rglob("*.png")):
        target = conditions / picture.relative_to(data).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - np.asarray(Image.open(picture))).save(target, quality=100)
    config = _config(tmp_path / "run", base, data, preprocessor="", conditioning_data=str(conditions))
    batch = ControlTask(config).source.data(0, 2)
    assert batch.hints.shape == (2, 3, 64, 64)
    assert 0.3 < float(batch.hints.mean()) < 0.9  # the inverted pictures, in [0, 1]
    (conditions / "0.jpg").unlink()
    with pytest.raises(DataError, match=r"0\.png: no condition image"):
        ControlTask(config)


def test_bad_settings_name_the_field(base: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of conditioning_data"):
        ControlTask(_config(tmp_path, base, data, preprocessor=""))
    with pytest.raises(ValueError, match="network"):
        ControlTask(_config(tmp_path, base, data, kind="lora"))
    with pytest.raises(ValueError, match="module"):
        ControlTask(_config(tmp_path, base, data, preprocessor="no_such_module"))


# -- DDP and a killed job, through the CLI ---------------------------------------------------------------


def _launch(folder: Path, base: Path, data: Path, processes: int, grad_accum: int) -> subprocess.Popen[bytes]:
    """``latentstudio train controlnet --config`` by ``torchrun`` (``processes`` > 1) or alone, in a session
    of its own so that the whole job can be killed."""
    config = folder.parent / f"{folder.name}.json"
    _config(folder, base, data, grad_accum=grad_accum, ema_decay=0.9).save(config)
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    command += ["-m", "latentstudio.cli", "train", "controlnet", "--config", str(config), "--base", str(base),
                "--data", str(data)]  # fmt: skip
    env = {**os.environ, "HF_HOME": str(folder.parent / "hf-home")}
    with (folder.parent / f"{folder.name}.out").open("ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _finish(process: subprocess.Popen[bytes], folder: Path) -> None:
    try:
        code = process.wait(timeout=500)
    except BaseException:
        _kill_job(process)
        raise
    assert code == 0, (folder.parent / f"{folder.name}.out").read_text()[-4000:]


def _losses(folder: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def single(base: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("single") / "run"
    _finish(_launch(folder, base, data, processes=1, grad_accum=2), folder)
    return folder


def test_two_processes_match_one_process_with_the_same_global_batch(
    single: Path, base: Path, data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "run"
    _finish(_launch(folder, base, data, processes=2, grad_accum=1), folder)
    one, two = _losses(single), _losses(folder)
    assert sorted(two) == list(range(1, STEPS + 1))
    torch.testing.assert_close(torch.tensor([two[s] for s in sorted(two)], dtype=torch.float64),
                               torch.tensor([one[s] for s in sorted(one)], dtype=torch.float64),
                               rtol=1e-5, atol=0.0)  # fmt: skip
    expected = load_file(str(single / "final" / "shapes.safetensors"))
    got = load_file(str(folder / "final" / "shapes.safetensors"))
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key].float(), value.float(), rtol=2e-3, atol=2e-4, msg=key)


def test_a_killed_job_resumes_exactly(single: Path, base: Path, data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    kill_after_checkpoint(_launch(folder, base, data, processes=1, grad_accum=2), folder, CHECKPOINT_EVERY, 1)
    assert not (folder / "final").exists(), "the job ended before it was killed"
    done = max(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))
    assert done < STEPS
    _finish(_launch(folder, base, data, processes=1, grad_accum=2), folder)
    assert _losses(folder) == _losses(single)
    expected = load_file(str(single / "final" / "shapes.safetensors"))
    got = load_file(str(folder / "final" / "shapes.safetensors"))
    assert all(torch.equal(got[key], value) for key, value in expected.items())


@pytest.mark.parametrize("kind", ["controlnet", "t2i-adapter"])
@pytest.mark.parametrize("family", [Family.SD2, Family.SDXL])
def test_sd2_and_sdxl_bases(
    family: Family, kind: str, make_tiny: MakeTiny, data: Path, tmp_path: Path
) -> None:
    """Two steps on a tiny SD2 / SDXL checkpoint (SDXL: pooled text and size/crop ids): the file is of the
    base's family and loads with the trained weights."""
    base = make_tiny(family).path
    config = _config(tmp_path, base, data, kind, steps=2, checkpoint_every=10)
    task = ControlTask(config)
    result = train(task, config)
    file = result.output_dir / "final" / "shapes.safetensors"
    assert inspect_control_file(file).family is family
    loaded = load_control_network(file, device=torch.device("cpu"), dtype=torch.float32,
                                  base_unet=task.components.unet).module.state_dict()  # fmt: skip
    for key, value in task.modules["network"].state_dict().items():
        torch.testing.assert_close(loaded[key], value.half().float(), rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def one_step(base: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ControlNet file after one step (its ``latentstudio.architecture`` metadata is what matters)."""
    config = _config(tmp_path_factory.mktemp("one-step"), base, data, steps=1)
    return train(ControlTask(config), config).output_dir / "final" / "shapes.safetensors"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [({"norm_num_groups": 0}, "norm_num_groups"), ({"act_fn": "os.system"}, "act_fn"),
     ({"block_out_channels": [4096] * 8}, "block_out_channels")],
)  # fmt: skip
def test_hostile_architecture_metadata_is_one_line_naming_the_file(
    one_step: Path, tmp_path: Path, fields: dict[str, object], problem: str
) -> None:
    file = one_step
    with safe_open(str(file), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118 - safe_open
    meta["latentstudio.architecture"] = json.dumps({"controlnet": fields})
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(ModelFileError, match=problem) as caught:
        inspect_control_file(bad)
    assert str(bad) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_samples_show_each_condition_beside_its_picture(
    trained: tuple[ControlTask, list[float], Path], tmp_path: Path
) -> None:
    task, _, _ = trained
    task.samples(task.modules, tmp_path / "samples.png")
    with Image.open(tmp_path / "samples.png") as grid:
        assert grid.size == (128, 64 * 2)  # batch 2: two rows of condition | picture
        pixels = np.asarray(grid.convert("RGB"), dtype=np.int16)
    assert set(np.unique(pixels[:, :64])) <= {0, 255}  # canny maps
    assert pixels[:, 64:].std() > 1.0  # generated pictures


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision needs a GPU")
def test_fp16_mixed_precision_on_a_gpu(base: Path, data: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, base, data, steps=2, mixed_precision="fp16")
    task = ControlTask(config)
    result = train(task, config)
    assert all(np.isfinite(result.losses))
    assert task.components.unet.dtype == torch.float16
    assert next(task.modules.parameters()).dtype == torch.float32  # the trained network stays fp32


def test_the_cli_trains_from_flags_and_names_bad_ones(base: Path, data: Path, tmp_path: Path) -> None:
    common = ["--base", str(base), "--data", str(data), "--output-dir", str(tmp_path / "run"),
              "--resolution", "64", "--batch-size", "2", "--steps", "1", "--sample-every", "0"]  # fmt: skip
    done = CliRunner().invoke(app, ["train", "t2i-adapter", *common, "--preprocessor", "canny",
                                    "--processor-res", "64", "--hint-channels", "1"])  # fmt: skip
    assert done.exit_code == 0, done.output
    file = Path(json.loads(done.stdout.strip().splitlines()[-1])["output"])
    assert inspect_control_file(file).hint_channels == 1
    bad = CliRunner().invoke(app, ["train", "controlnet", *common, "--preprocessor", "no_such"])
    assert bad.exit_code == 1
    assert "--preprocessor" in bad.output
    both = CliRunner().invoke(app, ["train", "controlnet", *common])
    assert both.exit_code == 1
    assert "exactly one of conditioning_data" in both.output
