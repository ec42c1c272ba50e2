"""The one parameter builder, ``GenerationParams.resolved(policy)``: what every door gets from it (limits,
names, sampler options, flattened images, seeds), and that nothing downstream takes unresolved parameters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from latentstudio.api.sdapi import options as opts
from latentstudio.api.sdapi.convert import ServerCatalog, prepare
from latentstudio.api.sdapi.models import Img2ImgRequest, Txt2ImgRequest
from latentstudio.core import FieldError
from latentstudio.jobs import JobKind, JobSpec
from latentstudio.pipeline.images import flatten
from latentstudio.pipeline.params import GenerationParams, Hires, Policy, ResolvedParams
from latentstudio.pipeline.run import ModelIdentity, run


def _transparent(mode: str) -> Image.Image:
    """A 4×2 image: left half opaque red, right half fully transparent (hidden colour green)."""
    rgba = Image.new("RGBA", (4, 2), (0, 255, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 2, 2))
    if mode == "P":  # palette index 1 (green) is the transparent one, as a GIF or palette PNG has it
        palette = Image.new("P", (4, 2), 1)
        palette.putpalette([255, 0, 0, 0, 255, 0])
        palette.paste(0, (0, 0, 2, 2))
        palette.info["transparency"] = 1
        return palette
    return rgba.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_init_images_are_flattened_onto_the_background(mode: str) -> None:
    image = _transparent(mode)
    for background, expected in (("#ffffff", (255, 255, 255)), ("#000080", (0, 0, 128))):
        resolved = GenerationParams(prompt="x", init_image=image).resolved(Policy(background=background))
        assert resolved.init_image is not None
        assert resolved.init_image.mode == "RGB"
        assert resolved.init_image.getpixel((3, 1)) == expected  # not the hidden green
        assert resolved.init_image.getpixel((0, 0)) == flatten(image, background).getpixel((0, 0))


def test_partial_alpha_is_blended_as_a1111_pastes_it() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA")
    canvas = Image.new("RGBA", image.size, "#336699")
    canvas.paste(image, mask=image)  # A1111 images.flatten
    assert flatten(image, "#336699").tobytes() == canvas.convert("RGB").tobytes()


def test_every_door_flattens_alike() -> None:
    """The A1111 door flattens onto ``img2img_background_color``: white by default, as the native API and
    the CLI (which call the same builder with the default policy)."""
    image = _transparent("RGBA")
    stored = opts.defaults()
    request = Img2ImgRequest(init_images=["x"], width=64, height=64, steps=2)
    sdapi = prepare(request, stored, ServerCatalog(), [image]).spec.params.init_image
    plain = GenerationParams(prompt="", init_image=image).resolved().init_image
    assert sdapi is not None
    assert plain is not None
    assert sdapi.tobytes() == plain.tobytes()


def test_the_size_limit_bounds_the_hires_target_too() -> None:
    policy = Policy(max_side=256)
    base = GenerationParams(prompt="x", width=128, height=128)
    assert base.resolved(policy).width == 128
    with pytest.raises(FieldError, match=r"in \[8, 256\]") as info:
        dataclasses.replace(base, width=264).resolved(policy)
    assert info.value.field == "width"
    with pytest.raises(FieldError, match=r"hires target 384x384 must be within \[64, 256\]") as info:
        dataclasses.replace(base, hires=Hires(scale=3.0)).resolved(policy)
    assert info.value.field == "hires.scale"
    assert dataclasses.replace(base, hires=Hires(scale=3.0)).resolved().hires is not None  # 2048 by default
    catalog = ServerCatalog(max_side=256)  # the A1111 door: Settings.max_side through its catalog
    hires = Txt2ImgRequest(width=128, height=128, enable_hr=True, hr_scale=3.0)
    with pytest.raises(FieldError) as info:
        prepare(hires, opts.defaults(), catalog)
    assert info.value.field == "hr_scale"


def test_names_and_sampler_options_are_resolved() -> None:
    params = GenerationParams(
        prompt="x", sampler="k_euler", scheduler="karras", eta=0.5, s_noise=0.9,
        hires=Hires(sampler="DPM++ 2M Exponential", scheduler="Karras"),
    ).resolved()  # fmt: skip
    assert (params.sampler, params.scheduler) == ("Euler", "Karras")
    assert (params.eta, params.s_noise) == (None, 0.9)  # Euler takes s_noise, not eta
    assert params.hires is not None
    assert (params.hires.sampler, params.hires.scheduler) == ("DPM++ 2M", "Exponential")  # the name wins
    ancestral = GenerationParams(prompt="x", sampler="Euler a")
    assert ancestral.resolved().eta is None  # the sampler's own default
    assert ancestral.resolved(Policy(eta_ancestral=0.7, eta_ddim=0.2)).eta == 0.7
    assert GenerationParams(prompt="x", sampler="DDIM").resolved(Policy(eta_ddim=0.2)).eta == 0.2


def test_seeds_are_fixed_once_and_resolving_again_changes_nothing() -> None:
    first = GenerationParams(prompt="x", sampler="DPM++ 2M Karras").resolved()
    assert min(first.seed, first.subseed) >= 0
    again = first.resolved()
    assert isinstance(again, ResolvedParams)
    assert again == first


def test_nothing_downstream_takes_unresolved_parameters() -> None:
    with pytest.raises(TypeError, match="resolved"):
        JobSpec(JobKind.TXT2IMG, GenerationParams(prompt="x"))
    with pytest.raises(TypeError, match="resolved"):
        run(GenerationParams(prompt="x"), None, identity=ModelIdentity("m"))  # type: ignore[arg-type]
