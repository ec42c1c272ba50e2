"""The pure A1111 layer: request defaults, sampler names, options and overrides, styles, refusals, echo."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from latentstudio.api.sdapi import options as opts
from latentstudio.api.sdapi.convert import (
    CheckpointRef,
    ServerCatalog,
    echo,
    prepare,
)
from latentstudio.api.sdapi.models import Img2ImgRequest, Txt2ImgRequest
from latentstudio.core import FieldError
from latentstudio.jobs import JobKind
from latentstudio.pipeline.images import flatten
from latentstudio.prompts.styles import Style
from latentstudio.samplers.noise import RngSource

# reference/a1111-compat.md §1.4 / §1.5: A1111's API defaults
TXT2IMG_DEFAULTS: dict[str, Any] = {
    "prompt": "", "negative_prompt": "", "styles": None, "seed": -1, "subseed": -1, "subseed_strength": 0,
    "seed_resize_from_h": -1, "seed_resize_from_w": -1, "sampler_name": None, "scheduler": None,
    "batch_size": 1, "n_iter": 1, "steps": 50, "cfg_scale": 7.0, "width": 512, "height": 512,
    "restore_faces": None, "tiling": None, "do_not_save_samples": False, "do_not_save_grid": False,
    "eta": None, "denoising_strength": 0.75, "s_min_uncond": None, "s_churn": None, "s_tmax": None,
    "s_tmin": None, "s_noise": None, "override_settings": None, "override_settings_restore_afterwards": True,
    "refiner_checkpoint": None, "refiner_switch_at": None, "disable_extra_networks": False,
    "firstpass_image": None, "comments": None, "enable_hr": False, "firstphase_width": 0,
    "firstphase_height": 0, "hr_scale": 2.0, "hr_upscaler": None, "hr_second_pass_steps": 0,
    "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None,
    "hr_scheduler": None, "hr_prompt": "", "hr_negative_prompt": "", "force_task_id": None,
    "sampler_index": "Euler", "script_name": None, "script_args": [], "send_images": True,
    "save_images": False, "alwayson_scripts": {}, "infotext": None,
}  # fmt: skip
IMG2IMG_EXTRA_DEFAULTS: dict[str, Any] = {
    "init_images": None, "resize_mode": 0, "denoising_strength": 0.75, "image_cfg_scale": None, "mask": None,
    "mask_blur_x": 4, "mask_blur_y": 4, "mask_blur": None, "mask_round": True, "inpainting_fill": 0,
    "inpaint_full_res": True, "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0,
    "initial_noise_multiplier": None, "latent_mask": None, "include_init_images": False,
}  # fmt: skip
HR_FIELDS = {k for k in TXT2IMG_DEFAULTS if k.startswith(("hr_", "firstphase")) or k == "enable_hr"}

CATALOG = ServerCatalog(
    checkpoints=(
        CheckpointRef("a.safetensors", "a.safetensors [0123456789]", ("a.safetensors", "a", "0123456789")),
        CheckpointRef("sub/b.safetensors", "sub/b.safetensors", ("sub/b.safetensors", "b", "sub_b")),
    ),
    vaes=("good.vae.safetensors",),
    styles={
        "wrap": Style("wrap", "masterpiece, {prompt}, 4k", "ugly"),
        "tail": Style("tail", "oil painting", ""),
    },
)
STORED = opts.defaults()
FAST = {"width": 64, "height": 64, "steps": 3}


def _txt(**fields: Any) -> Txt2ImgRequest:
    return Txt2ImgRequest(**{**FAST, **fields})


def _field(exc: pytest.ExceptionInfo[FieldError]) -> str:
    return exc.value.field


def test_txt2img_defaults_are_a1111s() -> None:
    assert Txt2ImgRequest().model_dump() == TXT2IMG_DEFAULTS


def test_img2img_defaults_are_a1111s() -> None:
    expected = {k: v for k, v in TXT2IMG_DEFAULTS.items() if k not in HR_FIELDS}
    assert Img2ImgRequest().model_dump() == {**expected, **IMG2IMG_EXTRA_DEFAULTS}


def test_default_job_is_euler_50_steps_cfg_7_at_512() -> None:
    spec = prepare(Txt2ImgRequest(prompt="a cat"), STORED, CATALOG).spec
    params = spec.params
    assert (params.sampler, params.scheduler, params.steps, params.cfg_scale) == (
        "Euler",
        "Automatic",
        50,
        7.0,
    )
    assert (params.width, params.height, params.clip_skip, params.rng) == (512, 512, 1, RngSource.GPU)
    assert params.seed >= 0
    assert params.subseed >= 0
    assert (spec.kind, spec.checkpoint, spec.vae, spec.source) == (
        JobKind.TXT2IMG,
        None,
        "Automatic",
        "sdapi",
    )


@pytest.mark.parametrize(
    ("name", "index", "scheduler", "expected"),
    [
        (None, "Euler", None, ("Euler", "Automatic")),
        (None, "Euler a", None, ("Euler a", "Automatic")),
        ("DPM++ 2M", "Euler", None, ("DPM++ 2M", "Automatic")),
        ("DPM++ 2M Karras", "Euler", None, ("DPM++ 2M", "Automatic")),  # its own default → Automatic
        ("DPM++ 2M Exponential", "Euler", "Karras", ("DPM++ 2M", "Exponential")),  # the name wins
        ("Euler a Karras", "Euler", None, ("Euler a", "Karras")),
        ("Euler", "Euler", "karras", ("Euler", "Karras")),
        ("Euler", "Euler", "SGMUniform", ("Euler", "SGM Uniform")),
        ("k_euler_a", "Euler", None, ("Euler a", "Automatic")),
        ("k_dpmpp_2m_sde", "Euler", "exponential", ("DPM++ 2M SDE", "Automatic")),
        ("", "DDIM", None, ("DDIM", "Automatic")),
        ("UniPC", "Euler", "Automatic", ("UniPC", "Automatic")),
    ],
)
def test_sampler_resolution(
    name: str | None, index: str, scheduler: str | None, expected: tuple[str, str]
) -> None:
    params = prepare(
        _txt(sampler_name=name, sampler_index=index, scheduler=scheduler), STORED, CATALOG
    ).spec.params
    assert (params.sampler, params.scheduler) == expected


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"sampler_name": "Euler b"}, "sampler_name"),
        ({"sampler_index": "nope"}, "sampler_index"),
        ({"scheduler": "Karras2"}, "scheduler"),
        ({"sampler_name": "../../etc/passwd"}, "sampler_name"),
    ],
)
def test_unknown_sampler_or_scheduler_is_refused(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(FieldError) as e:
        prepare(_txt(**fields), STORED, CATALOG)
    assert _field(e) == field
    assert "valid" in str(e.value)


def test_styles_are_applied_in_order() -> None:
    params = prepare(_txt(prompt="a cat", styles=["wrap", "tail"]), STORED, CATALOG).spec.params
    assert params.prompt == "masterpiece, a cat, 4k, oil painting"
    assert params.negative_prompt == "ugly"
    with pytest.raises(FieldError) as e:
        prepare(_txt(styles=["missing"]), STORED, CATALOG)
    assert _field(e) == "styles"


def test_override_settings_become_parameters() -> None:
    overrides = {
        "CLIP_stop_at_last_layers": 2, "randn_source": "NV", "eta_noise_seed_delta": 31337,
        "sd_model_checkpoint": "0123456789", "sd_vae": "good.vae.safetensors", "emphasis": "No norm",
        "use_old_scheduling": True, "pad_cond_uncond": True, "eta_ancestral": 0.5, "s_noise": 0.9,
    }  # fmt: skip
    # DPM2 a takes eta and s_noise (A1111 passes no s_noise to Euler a: it is not in sampler_extra_params)
    spec = prepare(_txt(sampler_name="DPM2 a", override_settings=overrides), STORED, CATALOG).spec
    p = spec.params
    assert (p.clip_skip, p.rng, p.eta_noise_seed_delta, p.emphasis) == (2, RngSource.NV, 31337, "No norm")
    assert (p.old_prompt_editing, p.pad_conds, p.eta, p.s_noise) == (True, True, 0.5, 0.9)
    assert (spec.checkpoint, spec.vae) == ("a.safetensors", "good.vae.safetensors")


def test_stored_options_are_the_defaults_for_jobs() -> None:
    stored = {**STORED, "CLIP_stop_at_last_layers": 3, "sd_model_checkpoint": "sub/b.safetensors"}
    spec = prepare(_txt(), stored, CATALOG).spec
    assert (spec.params.clip_skip, spec.checkpoint) == (3, "sub/b.safetensors")
    spec = prepare(_txt(override_settings={"CLIP_stop_at_last_layers": 1}), stored, CATALOG).spec
    assert spec.params.clip_skip == 1


def test_overrides_persist_only_without_restore() -> None:
    overrides = {"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "b"}
    assert prepare(_txt(override_settings=overrides), STORED, CATALOG).persist == {}
    kept = prepare(
        _txt(override_settings=overrides, override_settings_restore_afterwards=False), STORED, CATALOG
    ).persist
    assert kept == {"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "sub/b.safetensors"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"sd_model_checkpoint": "missing"}, "override_settings.sd_model_checkpoint"),
        ({"sd_model_checkpoint": "../../../etc/passwd"}, "override_settings.sd_model_checkpoint"),
        ({"sd_model_checkpoint": "a.safe"}, "override_settings.sd_model_checkpoint"),  # no substring match
        ({"sd_vae": "../VAE/x.pt"}, "override_settings.sd_vae"),
        ({"CLIP_stop_at_last_layers": 13}, "override_settings.CLIP_stop_at_last_layers"),
        ({"CLIP_stop_at_last_layers": 1.5}, "override_settings.CLIP_stop_at_last_layers"),
        ({"CLIP_stop_at_last_layers": "2"}, "override_settings.CLIP_stop_at_last_layers"),
        ({"randn_source": "TPU"}, "override_settings.randn_source"),
        ({"eta_ancestral": float("nan")}, "override_settings.eta_ancestral"),
        ({"use_old_karras_scheduler_sigmas": True}, "override_settings.use_old_karras_scheduler_sigmas"),
        ({"s_churn": -1.0}, "override_settings.s_churn"),
        ({"no_such_option": 1}, "override_settings.no_such_option"),
    ],
)
def test_bad_overrides_name_the_key(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(FieldError) as e:
        prepare(_txt(override_settings=overrides), STORED, CATALOG)
    assert _field(e) == field


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"enable_hr": True, "hr_checkpoint_name": "nope"}, "hr_checkpoint_name"),
        ({"enable_hr": True, "hr_scale": 8.0, "width": 512, "height": 512}, "hr_scale"),
        ({"restore_faces": True}, "restore_faces"),
        ({"script_name": "sd upscale"}, "script_name"),
        ({"alwayson_scripts": {"adetailer": {"args": []}}}, "alwayson_scripts.adetailer"),
        ({"refiner_checkpoint": "a"}, "refiner_checkpoint"),
        ({"s_churn": -1.0, "sampler_name": "Euler"}, "s_churn"),
        ({"width": 100}, "width"),
        ({"disable_extra_networks": True, "prompt": "a <lora:x:1>"}, "disable_extra_networks"),
    ],
)
def test_unsupported_txt2img_fields_are_refused(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(FieldError) as e:
        prepare(_txt(**fields), STORED, CATALOG)
    assert _field(e) == field


def test_fields_without_effect_are_accepted() -> None:
    fields = {
        "s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 3.0, "force_task_id": "task(x)", "comments": {"a": 1},
        "do_not_save_samples": True, "hr_upscaler": "Latent", "hr_scale": 4.0, "script_args": [1, 2],
        "refiner_checkpoint": "None", "sampler_name": "Euler a", "denoising_strength": 0.0,
        "disable_extra_networks": True, "firstpass_image": "AAAA",  # without enable_hr: ignored (A1111)
    }  # fmt: skip
    params = prepare(_txt(**fields), STORED, CATALOG).spec.params  # Euler a takes no churn: ignored
    assert params.sampler == "Euler a"
    assert (params.s_churn, params.s_tmin, params.s_tmax) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("sampler", "eta", "options", "expected"),
    [
        ("Euler", 0.3, {}, None),  # no eta parameter: A1111 ignores it (and writes no "Eta")
        ("Euler a", 0.0, {}, 0.0),
        ("Euler a", None, {}, 1.0),
        ("Euler a", None, {"eta_ancestral": 0.7}, 0.7),
        ("DDIM", None, {}, 0.0),
        ("DDIM", None, {"eta_ddim": 0.5, "eta_ancestral": 0.1}, 0.5),
        ("DDIM", 0.2, {"eta_ddim": 0.5}, 0.2),
    ],
)
def test_eta_follows_the_sampler(
    sampler: str, eta: float | None, options: dict[str, Any], expected: float | None
) -> None:
    req = _txt(sampler_name=sampler, eta=eta, override_settings=options)
    assert prepare(req, STORED, CATALOG).spec.params.eta == expected


def test_seed_resize_needs_both_sides() -> None:
    params = prepare(_txt(seed_resize_from_w=32, seed_resize_from_h=-1), STORED, CATALOG).spec.params
    assert (params.seed_resize_from_w, params.seed_resize_from_h) == (0, 0)
    params = prepare(_txt(seed_resize_from_w=32, seed_resize_from_h=48), STORED, CATALOG).spec.params
    assert (params.seed_resize_from_w, params.seed_resize_from_h) == (32, 48)


def test_hires_checkpoint_by_alias_and_use_same() -> None:
    hires = {"enable_hr": True, "hr_scale": 1.5}
    params = prepare(_txt(**hires, hr_checkpoint_name="0123456789"), STORED, CATALOG).spec.params
    assert params.hires is not None
    assert params.hires.checkpoint == "a.safetensors"  # the checkpoint's name, as jobs name checkpoints
    for same in (None, "", "Use same checkpoint"):
        spec = prepare(_txt(**hires, hr_checkpoint_name=same), STORED, CATALOG).spec
        assert spec.params.hires is not None
        assert spec.params.hires.checkpoint is None
    # without the hires fix A1111 never looks at it
    assert prepare(_txt(hr_checkpoint_name="nope"), STORED, CATALOG).spec.params.hires is None


def test_color_correction_option_reaches_img2img_only() -> None:
    init = [Image.new("RGB", (64, 64))]
    on = {"img2img_color_correction": True}
    req = Img2ImgRequest(init_images=["x"], **FAST)
    assert prepare(req, STORED, CATALOG, init).spec.params.color_correction is False
    assert prepare(req, {**STORED, **on}, CATALOG, init).spec.params.color_correction is True
    overridden = Img2ImgRequest(init_images=["x"], override_settings=on, **FAST)
    assert prepare(overridden, STORED, CATALOG, init).spec.params.color_correction is True
    assert prepare(_txt(override_settings=on), STORED, CATALOG).spec.params.color_correction is False


def test_img2img_conversion_flattens_rgba_on_the_background_colour() -> None:
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    req = Img2ImgRequest(init_images=["x"], denoising_strength=0.5, resize_mode=1, **FAST)
    spec = prepare(req, {**STORED, "img2img_background_color": "#000080"}, CATALOG, [rgba]).spec
    assert spec.kind is JobKind.IMG2IMG
    assert spec.params.init_image is not None
    assert spec.params.init_image.getpixel((0, 0)) == (0, 0, 128)
    assert spec.params.denoising_strength == 0.5
    assert int(spec.params.resize_mode) == 1
    assert flatten(Image.new("RGB", (2, 2), "red"), "#ffffff").getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"mask": "AAAA"}, "mask"),
        ({"initial_noise_multiplier": -0.5}, "initial_noise_multiplier"),
        ({"init_images": ["a", "b"]}, "init_images"),
    ],
)
def test_unsupported_img2img_fields_are_refused(fields: dict[str, Any], field: str) -> None:
    req = Img2ImgRequest(**{"init_images": ["x"], **FAST, **fields})
    with pytest.raises(FieldError) as e:
        prepare(req, STORED, CATALOG, [Image.new("RGB", (64, 64))])
    assert _field(e) == field


def test_echo_keeps_seed_minus_one_and_hides_init_images() -> None:
    assert echo(_txt(prompt="x"))["seed"] == -1
    parameters = echo(Img2ImgRequest(init_images=["abc"], mask=None))
    assert parameters["init_images"] is None
    assert "include_init_images" not in parameters
    assert echo(Img2ImgRequest(init_images=["abc"], include_init_images=True))["init_images"] == ["abc"]


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"width": 4096}, "width"),
        ({"steps": 151}, "steps"),
        ({"steps": 0}, "steps"),
        ({"cfg_scale": float("nan")}, "cfg_scale"),
        ({"cfg_scale": float("inf")}, "cfg_scale"),
        ({"batch_size": 8, "n_iter": 9}, None),
        ({"prompt": "x" * 20_001}, "prompt"),
        ({"prompt": "\ud800"}, "prompt"),
        ({"steps": "many"}, "steps"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"seed": 2**40}, "seed"),
    ],
)
def test_request_limits(fields: dict[str, Any], loc: str | None) -> None:
    with pytest.raises(ValidationError) as e:
        Txt2ImgRequest(**fields)
    if loc is not None:
        assert e.value.errors()[0]["loc"][0] == loc


def test_nulls_mean_the_defaults() -> None:
    names = ("steps", "alwayson_scripts", "script_args", "sampler_index", "seed", "send_images")
    nulls = dict.fromkeys(names)
    req = Txt2ImgRequest.model_validate({**nulls, "styles": None, "eta": None})
    assert (req.steps, req.alwayson_scripts, req.script_args, req.sampler_index) == (50, {}, [], "Euler")
    assert (req.seed, req.send_images, req.styles, req.eta) == (-1, True, None, None)
