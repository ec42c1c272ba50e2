"""ControlNet on the command line: ``latentstudio detect`` and ``generate --control`` over a real models
folder (a tiny SD1 checkpoint and tiny ControlNets in the original cldm layout)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from latentstudio.cli import app
from latentstudio.cli_control import ControlSpec, as_option, parse_control
from latentstudio.control import annotators, hint, preprocessors, synthetic
from latentstudio.control.units import ControlResize
from latentstudio.core import FieldError
from latentstudio.models.families import Family
from latentstudio.pipeline.images import read_infotext
from tests.conftest import MakeTiny
from tests.test_control_hed import random_hed_state


def _picture() -> Image.Image:
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[12:52, 12:52] = (240, 240, 240)
    pixels[24:40, 20:44] = (30, 90, 200)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def workdir(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-control")
    checkpoints = root / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copyfile(make_tiny(Family.SD1).path, checkpoints / "tiny.safetensors")
    controls = root / "models" / "ControlNet"
    controls.mkdir()
    synthetic.tiny_controlnet_file(controls / "control_tiny.safetensors", Family.SD1, seed=2)
    synthetic.tiny_controlnet_file(controls / "control_sd21.safetensors", Family.SD2, seed=4)
    (controls / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (root / "dir:x").mkdir()  # a folder with ':' in its name, as a Windows drive letter puts one in a path
    _picture().save(root / "dir:x" / "edges.png")
    _picture().save(root / "in.png")
    (root / "broken.png").write_bytes(b"not an image")
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 20:50] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.new("L", (32, 16), 255).save(root / "small.png")
    return root


@pytest.fixture
def cwd(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workdir)
    return workdir


def test_detect_writes_the_map_detect_makes(cwd: Path) -> None:
    args = ["detect", "canny", "in.png", "-o", "maps/edges.png", "--res", "128"]
    result = CliRunner().invoke(app, [*args, "--threshold-a", "50", "--threshold-b", "150"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(Path("maps/edges.png"))
    written = np.asarray(Image.open(cwd / "maps" / "edges.png"))
    expected = preprocessors.detect("canny", np.asarray(_picture()), 128, 50, 150)
    assert written.shape == expected.shape
    assert (written == expected).all()
    assert written.any()  # edges were found
    assert [p.name for p in (cwd / "maps").iterdir()] == ["edges.png"]  # no temporary file left
    # an alias and the defaults (-1) work too
    label = CliRunner().invoke(
        app, ["detect", "invert (from white bg & black line)", "in.png", "-o", "i.png"]
    )
    assert label.exit_code == 0, label.stderr
    assert (np.asarray(Image.open(cwd / "i.png")) == 255 - np.asarray(_picture())).all()
    # an inpaint module: the picture, its mask half clear (as /controlnet/detect shows it)
    masked = CliRunner().invoke(
        app, ["detect", "inpaint_only", "in.png", "--mask", "mask.png", "-o", "m.png"]
    )
    assert masked.exit_code == 0, masked.stderr
    shown = np.asarray(Image.open(cwd / "m.png"))
    assert np.array_equal(shown[:, :, :3], np.asarray(_picture()))
    assert np.array_equal(shown[:, :, 3], 255 - np.asarray(Image.open(cwd / "mask.png")) // 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("cany", "in.png"), "error: MODULE: unknown ControlNet module 'cany'; allowed: none, "),
        (("canny", "in.png", "--threshold-a", "999"), "error: --threshold-a: Low Threshold must be in [1"),
        (("canny", "in.png", "--threshold-b", "nan"), "error: --threshold-b: High Threshold must be in"),
        (("canny", "in.png", "--res", "10"), "error: --res: Resolution must be in [64, 2048], got 10"),
        (("shuffle", "in.png", "--seed", "-2"), "error: --seed: a numpy seed is in [0, 2**32), got -2"),
        (("canny", "missing.png"), "error: INPUT: cannot read image 'missing.png'"),
        (("canny", "broken.png"), "error: INPUT: cannot read image 'broken.png'"),
        (("inpaint_only", "in.png", "--mask", "broken.png"), "error: --mask: cannot read image 'broken.png'"),
        (
            ("inpaint_only", "in.png", "--mask", "small.png"),
            "error: --mask: the mask is 32x16, the image 64x64",
        ),
    ],
)
def test_detect_refuses_bad_input_in_one_line(cwd: Path, args: tuple[str, ...], message: str) -> None:
    result = CliRunner().invoke(app, ["detect", *args, "-o", "refused/map.png"])
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1
    assert not (cwd / "refused").exists()


def test_detect_runs_hed_from_the_models_folder(cwd: Path) -> None:
    missing = CliRunner().invoke(
        app, ["detect", "softedge_hed", "in.png", "-o", "hed.png", "--models-dir", "m"]
    )
    assert missing.exit_code == 1
    assert missing.stderr.startswith(
        "error: MODULE: 'softedge_hed' needs annotator weights (ControlNetHED.pth)"
    )
    folder = cwd / "m" / annotators.OWN_FOLDER / "hed"
    folder.mkdir(parents=True)
    torch.save(random_hed_state(), folder / "ControlNetHED.pth")
    result = CliRunner().invoke(
        app, ["detect", "softedge_hed", "in.png", "-o", "hed.png", "--models-dir", "m"]
    )
    assert result.exit_code == 0, result.stderr
    expected = preprocessors.detect("softedge_hed", np.asarray(_picture()), roots=annotators.roots(cwd / "m"))
    assert np.array_equal(np.asarray(Image.open(cwd / "hed.png")), expected)


def test_detect_writes_png_only(cwd: Path) -> None:
    result = CliRunner().invoke(app, ["detect", "canny", "in.png", "-o", "map.jpg"])
    assert result.exit_code == 1
    assert result.stderr == "error: --output: the map is written as PNG: name a .png file, got 'map.jpg'\n"
    assert not (cwd / "map.jpg").exists()


@pytest.mark.parametrize(
    ("value", "spec"),
    [
        ("canny:control_tiny:img.png", ControlSpec("canny", "control_tiny", Path("img.png"), 1.0)),
        ("canny:control_tiny:img.png:0.8", ControlSpec("canny", "control_tiny", Path("img.png"), 0.8)),
        ("canny:m:C:\\x\\edges.png:0.8", ControlSpec("canny", "m", Path("C:\\x\\edges.png"), 0.8)),
        ("canny:m:C:\\x\\edges.png", ControlSpec("canny", "m", Path("C:\\x\\edges.png"), 1.0)),
        ("none:m:a:b.png", ControlSpec("none", "m", Path("a:b.png"), 1.0)),
        ("canny:m:2", ControlSpec("canny", "m", Path("2"), 1.0)),  # a lone IMAGE is never a weight
        ("canny:m:a.png:1:2", ControlSpec("canny", "m", Path("a.png:1"), 2.0)),
    ],
)
def test_control_values_are_parsed_by_the_documented_rule(value: str, spec: ControlSpec) -> None:
    assert parse_control(value) == spec


@pytest.mark.parametrize(
    ("field", "shown"),
    [
        ("control", "--control: m"),
        ("control.0", "--control: unit 1: m"),
        ("control.2.weight", "--control: unit 3 weight: m"),
        ("hires.scale", "--hr-scale: m"),
        ("steps", "steps: m"),
    ],
)
def test_refused_fields_are_named_as_generate_options(field: str, shown: str) -> None:
    assert str(as_option(FieldError(field, "m"), {"hires.scale": "--hr-scale"})) == shown


_COMMON = ("generate", "x", "--steps", "2", "--seed", "5", "--width", "64", "--height", "64",
           "--sampler", "Euler")  # fmt: skip


def test_generate_with_a_control_unit(cwd: Path) -> None:
    plain = CliRunner().invoke(app, list(_COMMON))
    guided = CliRunner().invoke(app, [*_COMMON, "--control", "canny:control_tiny:dir:x/edges.png:1.5"])
    assert guided.exit_code == 0, guided.stderr
    assert plain.exit_code == 0, plain.stderr
    image = Image.open(cwd / guided.stdout.strip())
    text = read_infotext(image)
    assert text is not None
    assert (
        'ControlNet 0: "Module: canny, Model: control_tiny, Weight: 1.5, Resize Mode: Crop and Resize' in text
    )
    plain_image = Image.open(cwd / plain.stdout.strip())
    assert "ControlNet 0" not in (read_infotext(plain_image) or "")
    difference = np.abs(np.asarray(image, np.int16) - np.asarray(plain_image, np.int16))
    assert difference.mean() > 0.5


def test_generate_writes_the_detected_maps_on_request(cwd: Path) -> None:
    """``--save-detected-maps``: after the images, each unit's map under detected_maps/<module>/ (the
    extension's auto-save layout), the same map ``detect`` writes for it at the picture's size."""
    controls = ["--control", "canny:control_tiny:dir:x/edges.png", "--control", "invert:control_tiny:in.png"]
    result = CliRunner().invoke(app, [*_COMMON, *controls, "--save-detected-maps"])
    assert result.exit_code == 0, result.stderr
    image, canny, inverted = (cwd / line for line in result.stdout.split())
    assert canny.parent.parent == image.parent.parent / "detected_maps" / "canny"
    assert inverted.parent.parent.name == "invert"
    assert Image.open(image).size == (64, 64)  # the picture in.png is: the map lands on it unresized
    assert np.array_equal(np.asarray(Image.open(inverted)), 255 - np.asarray(_picture()))
    expected = preprocessors.detect("canny", np.asarray(_picture()), 512)  # canny's defaults
    fitted = hint.fit(expected, ControlResize.CROP_AND_RESIZE, 64, 64)  # the unit's resize mode
    assert np.array_equal(np.asarray(Image.open(canny)), fitted)


_GOOD = "canny:control_tiny:in.png"


@pytest.mark.parametrize(
    ("controls", "message"),
    [
        (["canny:control_tiny"], "--control: expected MODULE:MODEL:IMAGE[:WEIGHT], got 'canny:control_tiny'"),
        (["canny::in.png"], "--control: expected MODULE:MODEL:IMAGE[:WEIGHT], got 'canny::in.png'"),
        ([_GOOD] * 4, "--control: at most 3 ControlNet units, got 4"),
        (["canny:control_tiny:missing.png"], "--control: cannot read image 'missing.png'"),
        (["canny:control_tiny:broken.png:1"], "--control: cannot read image 'broken.png'"),
        (
            ["cany:control_tiny:in.png"],
            "--control: unit 1 module: unknown ControlNet module 'cany'; allowed:",
        ),
        ([_GOOD, "canny:control_tiny:in.png:3"], "--control: unit 2 weight: must be in [0, 2.0], got 3.0"),
        (["canny:nope:in.png"], "--control: unit 1 model: model not found: 'nope'; available: "),
        (["canny:control_sd21:in.png"], "] is a sd2 controlnet; the checkpoint 'tiny.safetensors' is sd1"),
        ([_GOOD, "canny:broken:in.png"], "--control: unit 2 model: "),
    ],
)
def test_generate_refuses_bad_controls_in_one_line(cwd: Path, controls: list[str], message: str) -> None:
    args = [arg for value in controls for arg in ("--control", value)]
    result = CliRunner().invoke(app, [*_COMMON, *args, "--output", "refused"])
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (cwd / "refused").exists()
