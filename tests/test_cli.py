"""The console commands over a real models folder: generate, png-info, models (fresh processes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from latentstudio.cli import app
from latentstudio.models.families import Family
from tests.conftest import MakeTiny


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "latentstudio.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def workdir(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    target = root / "models" / "Stable-diffusion" / "tiny.safetensors"
    target.parent.mkdir(parents=True)
    shutil.copyfile(make_tiny(Family.SD1).path, target)
    return root


def test_generate_writes_a1111_named_pngs_and_png_info_reads_them_back(workdir: Path) -> None:
    result = _cli(
        "generate", "a red circle, top left", "--negative-prompt", "blurry", "--sampler", "Euler a",
        "--steps", "4", "--seed", "42", "--width", "64", "--height", "64", "--batch-size", "2", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert [p.name[6:] for p in paths] == ["42.png", "43.png"]
    assert all(p.parent.parent == Path("outputs/txt2img-images") for p in paths)
    info = _cli("png-info", str(paths[1]), "--json", cwd=workdir)
    assert info.returncode == 0, info.stderr
    parsed = json.loads(info.stdout)
    assert parsed["Prompt"] == "a red circle, top left"
    assert parsed["Negative prompt"] == "blurry"
    assert (parsed["Seed"], parsed["Sampler"], parsed["Steps"]) == ("43", "Euler a", "4")
    assert parsed["Model"] == "tiny"
    assert len(parsed["Model hash"]) == 10
    raw = _cli("png-info", str(paths[0]), cwd=workdir)
    assert raw.stdout.startswith(
        "a red circle, top left\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a"
    )


def test_generate_img2img_and_same_seed_same_pixels(workdir: Path) -> None:
    from PIL import Image

    Image.new("RGB", (80, 48), (10, 200, 30)).save(workdir / "init.png")
    common = ("generate", "x", "--steps", "3", "--seed", "5", "--width", "64", "--height", "64")
    first = _cli(*common, "--init-image", "init.png", "--denoising-strength", "0.5", cwd=workdir)
    second = _cli(*common, "--init-image", "init.png", "--denoising-strength", "0.5", cwd=workdir)
    assert first.returncode == 0, first.stderr
    a, b = Path(workdir / first.stdout.strip()), Path(workdir / second.stdout.strip())
    assert a.parent.parent.name == "img2img-images"
    assert a != b
    assert Image.open(a).tobytes() == Image.open(b).tobytes()


def test_generate_hires_and_inpainting(workdir: Path) -> None:
    from PIL import Image

    common = ("generate", "x", "--steps", "2", "--seed", "5", "--width", "64", "--height", "64")
    hires = _cli(*common, "--hr-scale", "1.5", "--hr-upscaler", "Lanczos", cwd=workdir)
    assert hires.returncode == 0, hires.stderr
    assert Image.open(workdir / hires.stdout.strip()).size == (96, 96)
    Image.new("RGB", (64, 64), (10, 200, 30)).save(workdir / "init.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    mask.save(workdir / "mask.png")
    inpainted = _cli(
        *common, "--init-image", "init.png", "--mask", "mask.png", "--mask-blur", "0", cwd=workdir
    )
    assert inpainted.returncode == 0, inpainted.stderr
    out = Image.open(workdir / inpainted.stdout.strip()).convert("RGB")
    assert out.getpixel((60, 10)) == (10, 200, 30)  # right half unmasked: unchanged


def test_generate_applies_loras_from_the_models_folder(workdir: Path) -> None:
    import torch

    from latentstudio.models import loader
    from tests.lora_files import LoraBuilder

    model = workdir / "models" / "Stable-diffusion" / "tiny.safetensors"
    builder = LoraBuilder(
        loader.load_checkpoint(model, device=torch.device("cpu"), dtype=torch.float32), seed=3
    )
    for layer in range(3):
        path = f"text_model.encoder.layers.{layer}.mlp.fc2"
        builder.lora("lora_te_" + path.replace(".", "_"), "text_encoder", path, alpha=8.0)
    builder.save(workdir / "models" / "Lora" / "detail.safetensors", {})
    common = ("generate", "x", "--steps", "2", "--seed", "5", "--width", "64", "--height", "64")
    plain = _cli(*common, cwd=workdir)
    with_lora = _cli("generate", "x <lora:detail:1>", *common[2:], cwd=workdir)
    assert with_lora.returncode == 0, with_lora.stderr
    assert "ignored" not in with_lora.stderr
    from PIL import Image

    out = Image.open(workdir / with_lora.stdout.strip())
    assert "Lora hashes: " in out.info["parameters"]
    assert out.tobytes() != Image.open(workdir / plain.stdout.strip()).tobytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--hr-scale", "0.5"), "--hr-scale: must be in [1.0, 8.0], got 0.5"),
        (("--sampler", "Euler z"), "sampler: unknown"),
        (("--scheduler", "Fast"), "scheduler: unknown"),
        (("--width", "100"), "width: 100 is not a multiple of 8"),
        (("--steps", "0"), "steps: must be an integer in [1, 150]"),
        (("--cfg-scale", "nan"), "cfg_scale: must be a finite number"),
        (("--denoising-strength", "2", "--init-image", "missing.png"), "missing.png"),
        (("--rng", "quantum"), "--rng: 'quantum' is not one of cpu, gpu, nv"),
        (("--model", "nope"), "unknown checkpoint 'nope'; available: tiny.safetensors"),
        (("--prompts-file", "missing.txt"), "--prompts-file: missing.txt"),
        (
            ("--prompts-file", "bad-lines.txt"),
            "--prompts-file: line 2: steps: must be an integer in [1, 150]",
        ),
    ],
)
def test_bad_input_is_one_clear_line_before_any_model_work(
    workdir: Path, args: tuple[str, ...], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    (workdir / "bad-lines.txt").write_text("fine\n--steps 0\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["generate", "x", *args, "--output", "bad-outputs"])
    assert result.exit_code == 1
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (workdir / "bad-outputs").exists()


def test_png_info_on_a_file_without_parameters(workdir: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(workdir / "plain.png")
    result = CliRunner().invoke(app, ["png-info", str(workdir / "plain.png")])
    assert result.exit_code == 1
    assert "no generation parameters" in result.stderr
    broken = workdir / "broken.png"
    broken.write_bytes(b"not an image")
    result = CliRunner().invoke(app, ["png-info", str(broken)])
    assert result.exit_code == 1
    assert "cannot read image" in result.stderr


def test_generate_hires_checkpoint_and_color_correction(
    make_tiny: MakeTiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from latentstudio import infotext
    from latentstudio.pipeline.images import read_infotext

    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copyfile(make_tiny(Family.SD1).path, folder / "a.safetensors")
    shutil.copyfile(make_tiny(Family.SD1, seed=1).path, folder / "b.safetensors")
    monkeypatch.chdir(tmp_path)
    common = ["generate", "x", "--steps", "2", "--seed", "5", "--width", "64", "--height", "64"]
    hires = CliRunner().invoke(app, [*common, "--hr-scale", "1.5", "--hr-checkpoint", "b"])
    assert hires.exit_code == 0, hires.stderr
    text = read_infotext(Image.open(tmp_path / hires.stdout.strip()))
    assert text is not None
    assert infotext.parse(text)["Hires checkpoint"].startswith("b [")
    off = CliRunner().invoke(app, [*common, "--hr-checkpoint", "b"])
    assert off.exit_code == 1
    assert "--hr-checkpoint: the hires fix is off" in off.stderr
    Image.new("RGB", (64, 64), (230, 120, 30)).save(tmp_path / "init.png")
    img2img = [*common, "--init-image", "init.png", "--denoising-strength", "0.9"]
    plain = CliRunner().invoke(app, img2img)
    corrected = CliRunner().invoke(app, [*img2img, "--color-correction"])
    assert corrected.exit_code == 0, corrected.stderr
    images = [Image.open(tmp_path / r.stdout.strip()).convert("RGB") for r in (plain, corrected)]
    assert images[0].tobytes() != images[1].tobytes()


def test_generate_prompts_file_runs_every_line_in_one_process(workdir: Path) -> None:
    """A1111's "Prompts from file or textbox" from the command line: a prompt per line, or its options."""
    (workdir / "prompts.txt").write_text(
        'a red circle\n\n--prompt "a blue square" --steps 2 --seed 9\n', encoding="utf-8"
    )
    result = _cli("generate", "on white", "--prompts-file", "prompts.txt", "--steps", "3", "--seed", "5",
                  "--width", "64", "--height", "64", cwd=workdir)  # fmt: skip
    assert result.returncode == 0, result.stderr
    paths = [workdir / line for line in result.stdout.splitlines()]
    assert len(paths) == 2
    from PIL import Image

    from latentstudio import infotext

    first, second = (infotext.parse(Image.open(p).info["parameters"]) for p in paths)
    assert (first["Prompt"], first["Steps"], first["Seed"]) == ("a red circle on white", "3", "5")
    assert (second["Prompt"], second["Steps"], second["Seed"]) == ("a blue square on white", "2", "9")
