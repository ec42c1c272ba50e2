"""A1111 extras: upscale by / to (crop), two upscalers blended, postprocessing infotext, batch, errors, the
size known beforehand, and the checks an extras job passes before it is queued."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from latentstudio.core import FieldError
from latentstudio.jobs import ExtrasSpec
from latentstudio.jobs.extras import check_extras
from latentstudio.postprocess.extras import (
    ExtrasOptions,
    html_info,
    output_size,
    run_extras,
    run_extras_batch,
)
from latentstudio.postprocess.faces import FaceRestorerError, FaceRestorers, discover_face_restorers
from latentstudio.postprocess.upscalers import UpscalerNotFoundError, UpscalerRegistry
from tests.esrgan_files import random_esrgan_state

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions: see conftest.one_thread


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "ESRGAN").mkdir()
    save_file(random_esrgan_state(seed=3), tmp_path / "ESRGAN" / "4x-Tiny.safetensors")
    return tmp_path


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8).numpy(), "RGB")


def _run(image: Image.Image, root: Path, **options: object) -> tuple[Image.Image, str]:
    result = run_extras(
        image, ExtrasOptions(**options), upscalers=UpscalerRegistry(root), faces=FaceRestorers(root)
    )
    return result.image, result.postprocessing


def test_scale_by_writes_a1111_infotext(root: Path) -> None:
    image, info = _run(_image(40, 24), root, upscaler_1="Lanczos", upscaling_resize=2)
    assert image.size == (80, 48)
    assert info == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
    assert html_info(info) == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos</p>"
    image, info = _run(_image(20, 12), root, upscaler_1="4x-Tiny", upscaling_resize=3)
    assert image.size == (56, 32)  # int(60)//8·8 × int(36)//8·8: one ×4 model pass, then Lanczos down
    assert info == "Postprocess upscale by: 3.0, Postprocess upscaler: 4x-Tiny"


def test_scale_to_with_and_without_crop(root: Path) -> None:
    source = _image(40, 40)
    image, info = _run(source, root, resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=60,
                       upscaler_1="Lanczos")  # fmt: skip
    assert image.size == (100, 60)
    assert (
        info == "Postprocess upscale to: 100x60, Postprocess crop to: 100x60, Postprocess upscaler: Lanczos"
    )
    assert image.getpixel((1, 30)) == (0, 0, 0)  # cover scale 2.5 gives 96×96: black side bands, as A1111
    image, info = _run(source, root, resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=60,
                       upscaling_crop=False, upscaler_1="Lanczos")  # fmt: skip
    assert image.size == (96, 96)
    assert info == "Postprocess upscale to: 100x60, Postprocess upscaler: Lanczos"


def test_two_upscalers_are_blended(root: Path) -> None:
    source = _image(16, 16)
    first, _ = _run(source, root, upscaler_1="Lanczos")
    second, _ = _run(source, root, upscaler_1="4x-Tiny")
    blended, info = _run(
        source, root, upscaler_1="Lanczos", upscaler_2="4x-Tiny", extras_upscaler_2_visibility=0.25
    )
    assert blended.tobytes() == Image.blend(first, second, 0.25).tobytes()
    assert info == (
        "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos, Postprocess upscaler 2: 4x-Tiny"
    )
    unchanged, info = _run(source, root)  # upscaler_1 "None": nothing to do
    assert unchanged.tobytes() == source.tobytes()
    assert info == ""


def test_batch_keeps_parameters(root: Path) -> None:
    with_info = _image(8, 8)
    with_info.info["parameters"] = "a cat\nSteps: 20, Seed: 1"
    results = run_extras_batch(
        [with_info, _image(8, 16).convert("RGBA")],
        ExtrasOptions(upscaler_1="Nearest", upscaling_resize=4),
        upscalers=UpscalerRegistry(root),
        faces=FaceRestorers(root),
    )
    assert [r.image.size for r in results] == [(32, 32), (32, 64)]
    assert [r.parameters for r in results] == ["a cat\nSteps: 20, Seed: 1", None]
    assert results[1].image.mode == "RGB"


def test_errors_name_what_is_missing(root: Path) -> None:
    with pytest.raises(UpscalerNotFoundError, match="could not find upscaler named 'ESRGAN_4x'"):
        _run(_image(8, 8), root, upscaler_1="ESRGAN_4x")
    with pytest.raises(
        FaceRestorerError, match=r"GFPGAN needs its weights.*GFPGAN \(nothing is downloaded\)"
    ):
        _run(_image(8, 8), root, gfpgan_visibility=0.5)
    (root / "GFPGAN").mkdir()
    save_file(random_esrgan_state(), root / "GFPGAN" / "GFPGANv1.4.safetensors")
    with pytest.raises(FaceRestorerError, match="holds a ESRGAN model, not GFPGAN"):
        _run(_image(8, 8), root, gfpgan_visibility=0.5)
    with pytest.raises(ValueError, match=r"resize_mode must be 0 \(scale by\) or 1"):
        ExtrasOptions(resize_mode=2)
    names = [(i.name, Path(i.cmd_dir).name, i.model_path is not None) for i in discover_face_restorers(root)]
    assert names == [("CodeFormer", "Codeformer", False), ("GFPGAN", "GFPGAN", True)]


@pytest.mark.slow
def test_gfpgan_restores_with_user_weights(root: Path) -> None:
    """Full-size GFPGANv1Clean architecture with random weights (≈ 80 M parameters): the loading, the
    [-1, 1] call convention and the visibility blend run end to end."""
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in GFPGAN().state_dict().items()}
    (root / "GFPGAN").mkdir()
    save_file(state, root / "GFPGAN" / "GFPGANv1.4.safetensors")
    source = _image(64, 48)
    image, info = _run(source, root, gfpgan_visibility=0.4)
    assert image.size == (64, 48)
    assert info == "GFPGAN visibility: 0.4"
    assert image.tobytes() != source.tobytes()


@pytest.mark.parametrize(
    ("options", "size", "info"),
    [
        ({"upscaler_1": "Lanczos"}, (128, 96), "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"),
        ({"upscaler_1": "Nearest", "upscaling_resize": 1.5}, (96, 72), "Postprocess upscaler: Nearest"),
        ({"upscaler_1": "Lanczos", "upscaling_resize": 1.1}, (64, 48), "upscale by: 1.1"),  # floor to 8
        ({"upscaler_1": "4x-Tiny", "upscaling_resize": 1.3}, (80, 56), "Postprocess upscaler: 4x-Tiny"),
        (
            {"upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 100, "upscaling_resize_h": 100},
            (100, 100),
            "Postprocess upscale to: 100x100, Postprocess crop to: 100x100",
        ),
        (
            {"upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 100, "upscaling_resize_h": 60},
            (100, 60),
            "Postprocess upscale to: 100x60, Postprocess crop to: 100x60",
        ),
        (
            {
                "upscaler_1": "Lanczos",
                "resize_mode": 1,
                "upscaling_resize_w": 100,
                "upscaling_resize_h": 60,
                "upscaling_crop": False,
            },
            (96, 72),  # cover scale 1.5625: 100×75, floored to multiples of 8
            "Postprocess upscale to: 100x60, Postprocess upscaler: Lanczos",
        ),
        ({"upscaler_1": "None", "upscaling_resize": 4}, (64, 48), ""),
        (
            {"upscaler_1": "Lanczos", "upscaler_2": "Nearest", "extras_upscaler_2_visibility": 0.5},
            (128, 96),
            "Postprocess upscaler: Lanczos, Postprocess upscaler 2: Nearest",
        ),
    ],
)
def test_output_size_is_the_size_run_extras_gives(
    root: Path, options: dict[str, object], size: tuple[int, int], info: str
) -> None:
    source = _image(64, 48)
    source.info["parameters"] = "a cat\nSteps: 1, Sampler: Euler, Seed: 1"
    result = run_extras(
        source, ExtrasOptions(**options), upscalers=UpscalerRegistry(root), faces=FaceRestorers(root)
    )
    assert result.image.size == size == output_size(source.size, ExtrasOptions(**options))
    assert info in result.postprocessing
    assert result.parameters == source.info["parameters"]


def test_face_restorers_are_usable_only_with_weights(root: Path) -> None:
    faces = FaceRestorers(root)
    assert faces.usable() == ()
    (root / "GFPGAN").mkdir()
    save_file(random_esrgan_state(), root / "GFPGAN" / "GFPGANv1.4.safetensors")
    (root / "Codeformer").mkdir()
    save_file(random_esrgan_state(), root / "Codeformer" / "codeformer.safetensors")
    extra_arches = importlib.util.find_spec("spandrel_extra_arches") is not None
    names = [info.name for info in faces.usable()]
    assert names == (["CodeFormer", "GFPGAN"] if extra_arches else ["GFPGAN"])
    assert faces.check("GFPGAN").model_path == str(root / "GFPGAN" / "GFPGANv1.4.safetensors")
    with pytest.raises(FaceRestorerError, match="unknown face restorer 'RestoreFormer'"):
        faces.check("RestoreFormer")


def _spec(*images: Image.Image, **options: object) -> ExtrasSpec:
    return ExtrasSpec(ExtrasOptions(**options), images or (_image(64, 64),))


def _refused(root: Path, spec: ExtrasSpec, max_pixels: int = 40_000_000) -> FieldError:
    with pytest.raises(FieldError) as e:
        check_extras(spec, upscalers=UpscalerRegistry(root), faces=FaceRestorers(root), max_pixels=max_pixels)
    return e.value


def test_submission_checks_name_the_field_and_the_allowed_values(root: Path) -> None:
    error = _refused(root, _spec(upscaler_1="R-ESRGAN 4x+"))
    assert error.field == "upscaler_1"
    assert "available: None, Lanczos, Nearest, 4x-Tiny" in str(error)
    assert _refused(root, _spec(upscaler_2="../../x.pth")).field == "upscaler_2"
    error = _refused(root, _spec(gfpgan_visibility=0.5))
    assert (error.field, "GFPGAN needs its weights" in str(error)) == ("gfpgan_visibility", True)
    assert _refused(root, _spec(codeformer_visibility=0.1)).field == "codeformer_visibility"
    big = _refused(root, _spec(upscaler_1="Lanczos", upscaling_resize=8), max_pixels=1000)
    assert (big.field, "512×512, more than 1000 pixels" in str(big)) == ("upscaling_resize", True)
    wide = _spec(upscaler_1="Lanczos", resize_mode=1, upscaling_resize_w=2000, upscaling_resize_h=8)
    assert _refused(root, wide, max_pixels=10_000).field == "upscaling_resize_w"
    empty = _refused(root, _spec(_image(64, 4), upscaler_1="Lanczos", upscaling_resize=1.5))
    assert "image 1 (64×4) would be upscaled to nothing (96×0)" in str(empty)
    with pytest.raises(FieldError, match="at least one image"):
        ExtrasSpec(ExtrasOptions(), ())
    # accepted: no upscaling at any size, a model file added after the first scan, GFPGAN with weights
    # (a file's architecture is known only when the worker loads it: tests/test_extras_jobs.py)
    registry, faces = UpscalerRegistry(root), FaceRestorers(root)
    check_extras(_spec(upscaling_resize=8), upscalers=registry, faces=faces, max_pixels=64 * 64)
    save_file(random_esrgan_state(scale=2), root / "ESRGAN" / "2x-New.safetensors")
    (root / "GFPGAN").mkdir()
    save_file(random_esrgan_state(), root / "GFPGAN" / "GFPGANv1.4.safetensors")
    accepted = _spec(upscaler_1="2x-New", gfpgan_visibility=0.5)
    check_extras(accepted, upscalers=registry, faces=faces, max_pixels=10**6)
