"""Hires fix: A1111's target-size arithmetic, latent upscale modes, truncation, pixel upscalers, infotext keys
and validation (the two-pass generation itself is tested in test_pipeline.py)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from latentstudio.core import FieldError
from latentstudio.pipeline import hires
from latentstudio.pipeline.params import GenerationParams, Hires, target_size
from tests.params_support import flat_params


def _params(**kw: object) -> GenerationParams:
    return flat_params(**{"prompt": "a cat", "enable_hr": True, **kw})


def _plan(params: GenerationParams) -> hires.HiresPlan:
    assert params.hires is not None
    return hires.plan(params, params.hires)


@pytest.mark.parametrize(
    ("size", "kw", "expected"),
    [
        ((512, 512), {"hr_scale": 2.0}, (1024, 1024, 0, 0)),
        ((512, 768), {"hr_scale": 1.5}, (768, 1152, 0, 0)),
        ((512, 768), {"hr_scale": 1.33}, (680, 1021, 0, 0)),  # int() truncation, as A1111
        ((512, 768), {"hr_resize_x": 1024}, (1024, 1536, 0, 0)),  # the other side from the aspect ratio
        ((512, 768), {"hr_resize_y": 1000}, (666, 1000, 0, 0)),
        ((512, 768), {"hr_resize_x": 1024, "hr_resize_y": 1024}, (1024, 1536, 0, 64)),  # cover, then cut
        ((768, 512), {"hr_resize_x": 1024, "hr_resize_y": 1024}, (1536, 1024, 64, 0)),
        ((512, 512), {"hr_resize_x": 640, "hr_resize_y": 1024}, (1024, 1024, 48, 0)),
    ],
)
def test_target_size_as_a1111(
    size: tuple[int, int], kw: dict[str, object], expected: tuple[int, ...]
) -> None:
    fix = _params(**kw).hires
    assert fix is not None
    assert target_size(size[0], size[1], fix) == expected


def test_truncate_cuts_both_sides_and_gives_the_requested_size() -> None:
    params = _params(width=512, height=768, hr_resize_x=1024, hr_resize_y=1024)
    plan = _plan(params)
    latents = torch.arange(128 * 192, dtype=torch.float32).reshape(1, 1, 192, 128)
    cut = hires.truncate(latents, plan)
    assert cut.shape == (1, 1, 128, 128)
    assert torch.equal(cut, latents[:, :, 32:160, :])


@pytest.mark.parametrize("mode", list(hires.LATENT_UPSCALE_MODES))
def test_latent_modes(mode: str) -> None:
    plan = _plan(_params(width=64, height=96, hr_scale=2.0, hr_upscaler=mode))
    latents = torch.randn(2, 4, 12, 8, generator=torch.Generator().manual_seed(0))
    up = hires.upscale_latents(latents, plan)
    interpolation, antialias = hires.LATENT_UPSCALE_MODES[mode]
    expected = torch.nn.functional.interpolate(
        latents, size=(24, 16), mode=interpolation, antialias=antialias
    )
    assert torch.equal(up, expected)


def test_plan_defaults_to_the_first_pass() -> None:
    plan = _plan(_params(sampler="Euler a", steps=25))
    assert (plan.sampler, plan.scheduler, plan.steps, plan.prompt) == ("Euler a", "Automatic", 25, "a cat")
    plan = _plan(_params(hr_sampler="DDIM", hr_second_pass_steps=7, hr_prompt="a dog"))
    assert (plan.sampler, plan.steps, plan.prompt, plan.negative_prompt) == ("DDIM", 7, "a dog", "")


def test_pixel_upscalers() -> None:
    image = Image.new("RGB", (30, 20), (10, 200, 30))
    for name in ("None", "Lanczos", "Nearest"):
        assert hires.resize_pixels(image, name, 64, 40).size == (64, 40)
    gradient = Image.linear_gradient("L").convert("RGB").resize((16, 16))
    nearest = hires.resize_pixels(gradient, "Nearest", 32, 32)
    assert nearest.getpixel((0, 0)) == nearest.getpixel((1, 1))  # each source pixel became a 2×2 block
    with pytest.raises(ValueError, match="could not find upscaler named 'R-ESRGAN 4x\\+'"):
        hires.resize_pixels(image, "R-ESRGAN 4x+", 64, 40)


def test_infotext_keys_in_a1111_order() -> None:
    params = _params(hr_second_pass_steps=10, hr_upscaler="Latent (nearest)", hr_prompt="a dog")
    assert params.hires is not None
    keys = hires.infotext_keys(params, params.hires, _plan(params), "Karras", "Karras")
    shown = {k: v for k, v in keys.items() if v is not None}
    assert list(shown) == ["Hires prompt", "Hires upscale", "Hires steps", "Hires upscaler"]
    assert shown == {
        "Hires prompt": "a dog",
        "Hires upscale": 2.0,
        "Hires steps": 10,
        "Hires upscaler": "Latent (nearest)",
    }
    resized = _params(hr_resize_x=1024)
    assert (
        hires.infotext_keys(resized, Hires(resize_x=1024), _plan(resized), "Karras", "Exponential")[
            "Hires resize"
        ]
        == "1024x0"
    )


@pytest.mark.parametrize(
    ("kw", "field", "message"),
    [
        ({"hr_scale": 0.5}, "hires.scale", "in \\[1.0, 8.0\\]"),
        ({"hr_scale": 8.0}, "hires.scale", "hires target 4096x4096"),
        ({"hr_resize_x": 4096}, "hires.resize_x", "in \\[0, 2048\\]"),
        ({"hr_second_pass_steps": 151}, "hires.steps", "in \\[0, 150\\]"),
        ({"hr_sampler": "Euler b"}, "hires.sampler", "Euler a"),
        ({"hr_scheduler": "Fancy"}, "hires.scheduler", "Karras"),
        ({"hr_prompt": "(a:1.2.3)"}, "hires.prompt", "invalid emphasis weight"),
        ({"hr_denoising_strength": 1.5}, "hires.denoising_strength", "in \\[0.0, 1.0\\]"),
        ({"init_image": Image.new("RGB", (8, 8))}, "hires", "txt2img option"),
    ],
)
def test_bad_hires_fields_name_the_field(kw: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(FieldError, match=message) as info:
        _params(**kw).resolved()
    assert info.value.field == field
