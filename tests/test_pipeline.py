"""txt2img / img2img on a tiny SD1-layout checkpoint: parity with diffusers, determinism, seeds, infotext."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from latentstudio import infotext
from latentstudio.core import FieldError
from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.pipeline.params import GenerationParams, ResizeMode
from latentstudio.pipeline.run import (
    GenerationResult,
    ModelIdentity,
    NaNLatentError,
    StepInfo,
    latent_preview,
    run,
)
from latentstudio.samplers import SAMPLERS
from latentstudio.samplers.noise import ImageRNG
from latentstudio.samplers.wrappers import StepControl
from tests.conftest import MakeTiny
from tests.params_support import flat_params, flat_replace

IDENTITY = ModelIdentity("tiny", "0123456789")
SCALED_LINEAR = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@pytest.fixture(scope="module")
def sd1(make_tiny: MakeTiny) -> loader.Components:
    return loader.load_checkpoint(
        make_tiny(Family.SD1, seed=5).path, device=torch.device("cpu"), dtype=torch.float32
    )


def _params(**kwargs: object) -> GenerationParams:
    base: dict[str, object] = {"prompt": "a red circle", "negative_prompt": "blurry", "steps": 6, "seed": 11,
                               "width": 64, "height": 64}  # fmt: skip
    return flat_params(**{**base, **kwargs}).resolved()


def _pixels(result: GenerationResult) -> list[np.ndarray]:
    return [np.asarray(image).astype(np.int16) for image in result.images]


DIFFUSERS_EQUIVALENTS: dict[tuple[str, str], Callable[[], SchedulerMixin]] = {
    ("Euler", "Karras"): lambda: EulerDiscreteScheduler(**SCALED_LINEAR, use_karras_sigmas=True),
    ("DPM++ 2M", "Karras"): lambda: DPMSolverMultistepScheduler(
        **SCALED_LINEAR, use_karras_sigmas=True, algorithm_type="dpmsolver++", final_sigmas_type="zero"
    ),
    # A1111's DDIM: timesteps 1, 1+1000//n, …; the last step lands on ᾱ_0 (not 1); no x0 clipping.
    ("DDIM", "Automatic"): lambda: DDIMScheduler(
        **SCALED_LINEAR, steps_offset=1, set_alpha_to_one=False, clip_sample=False, timestep_spacing="leading"
    ),
}


@pytest.mark.parametrize(("sampler", "schedule"), list(DIFFUSERS_EQUIVALENTS))
def test_txt2img_equals_diffusers_pipeline(sd1: loader.Components, sampler: str, schedule: str) -> None:
    """Same weights, prompt, seed and sampler as diffusers' StableDiffusionPipeline: max |Δpixel| ≤ 2/255."""
    params = _params(sampler=sampler, scheduler=schedule, steps=10, cfg_scale=6.5, seed=123)
    ours = _pixels(run(params, sd1, identity=IDENTITY))[0]
    pipe = StableDiffusionPipeline(
        vae=sd1.vae, text_encoder=sd1.text_encoders["text_encoder"], tokenizer=sd1.tokenizers["text_encoder"],
        unet=sd1.unet, scheduler=DIFFUSERS_EQUIVALENTS[(sampler, schedule)](), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    noise = ImageRNG((4, 8, 8), [123]).first()  # A1111's CPU noise for seed 123, handed to diffusers
    reference = pipe(
        "a red circle", negative_prompt="blurry", num_inference_steps=10, guidance_scale=6.5,
        height=64, width=64, latents=noise,
    ).images[0]  # fmt: skip
    assert np.abs(ours - np.asarray(reference).astype(np.int16)).max() <= 2


def test_same_request_twice_gives_identical_pixels(sd1: loader.Components) -> None:
    params = _params(sampler="DPM++ SDE", steps=4)
    assert all(np.array_equal(a, b) for a, b in zip(*map(_pixels, (run(params, sd1, identity=IDENTITY),
                                                                       run(params, sd1, identity=IDENTITY))),
                                                      strict=True))  # fmt: skip


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "DDIM"])
def test_batch_of_four_equals_four_single_runs(sd1: loader.Components, sampler: str) -> None:
    options = {"eta": 1.0} if sampler == "DDIM" else {}
    batch = run(_params(sampler=sampler, batch_size=4, seed=100, **options), sd1, identity=IDENTITY)
    assert batch.seeds == [100, 101, 102, 103]
    for i, expected in enumerate(_pixels(batch)):
        single = run(_params(sampler=sampler, seed=100 + i, **options), sd1, identity=IDENTITY)
        assert np.abs(_pixels(single)[0] - expected).max() <= 1  # batched matmuls may round differently


def test_n_iter_continues_the_seeds_and_every_image_has_its_infotext(sd1: loader.Components) -> None:
    result = run(_params(sampler="Euler", batch_size=2, n_iter=2, seed=7), sd1, identity=IDENTITY)
    assert result.seeds == [7, 8, 9, 10]
    assert len(result.images) == len(result.infotexts) == 4
    for seed, text in zip(result.seeds, result.infotexts, strict=True):
        parsed = infotext.parse(text)
        assert parsed["Seed"] == str(seed)
        assert parsed["Prompt"] == "a red circle"
        assert parsed["Negative prompt"] == "blurry"
        assert (parsed["Steps"], parsed["Sampler"], parsed["Schedule type"]) == ("6", "Euler", "Automatic")
        assert (parsed["Size-1"], parsed["Size-2"], parsed["CFG scale"]) == ("64", "64", "7.0")
        assert (parsed["Model"], parsed["Model hash"], parsed["RNG"]) == ("tiny", "0123456789", "CPU")


def test_infotext_records_resolved_schedule_and_variation(sd1: loader.Components) -> None:
    result = run(_params(sampler="DPM++ 2M", subseed=5, subseed_strength=0.3), sd1, identity=IDENTITY)
    parsed = infotext.parse(result.infotexts[0])
    assert parsed["Schedule type"] == "Karras"  # A1111 writes what Automatic resolved to
    assert (parsed["Variation seed"], parsed["Variation seed strength"]) == ("5", "0.3")
    combined = _params(sampler="DPM++ 2M Karras")  # A1111: the sampler's own schedule is "Automatic"
    assert (combined.sampler, combined.scheduler) == ("DPM++ 2M", "Automatic")
    other = _params(sampler="DPM++ 2M Exponential", scheduler="Karras")  # a schedule in the name wins
    assert (other.sampler, other.scheduler) == ("DPM++ 2M", "Exponential")


def test_variation_and_seed_resize_change_the_image(sd1: loader.Components) -> None:
    plain = _pixels(run(_params(sampler="Euler"), sd1, identity=IDENTITY))[0]
    varied = _pixels(run(_params(sampler="Euler", subseed=3, subseed_strength=0.5), sd1, identity=IDENTITY))[
        0
    ]
    resized = _pixels(
        run(_params(sampler="Euler", seed_resize_from_w=32, seed_resize_from_h=32), sd1, identity=IDENTITY)
    )[0]
    assert not np.array_equal(plain, varied)
    assert not np.array_equal(plain, resized)


@pytest.mark.parametrize(("strength", "expected_steps"), [(0.75, 16), (0.0, 1), (0.5, 11), (1.0, 20)])
def test_img2img_runs_a1111_step_count(sd1: loader.Components, strength: float, expected_steps: int) -> None:
    """``t_enc = int(min(strength, 0.999)·steps)``; ``t_enc + 1`` steps run (20 at 0.75 → 16)."""
    init = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    steps: list[StepInfo] = []
    params = _params(sampler="Euler", steps=20, init_image=init, denoising_strength=strength)
    result = run(params, sd1, identity=IDENTITY, on_step=steps.append)
    assert len(steps) == expected_steps
    assert infotext.parse(result.infotexts[0])["Denoising strength"] == str(strength)


def test_img2img_output_follows_the_init_image(sd1: loader.Components) -> None:
    red, blue = Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))
    params = _params(sampler="Euler", steps=10, init_image=red, denoising_strength=0.3)
    from_red = _pixels(run(params, sd1, identity=IDENTITY))[0]
    from_blue = _pixels(run(dataclasses.replace(params, init_image=blue), sd1, identity=IDENTITY))[0]
    assert not np.array_equal(from_red, from_blue)  # (a random tiny VAE does not keep colours themselves)
    txt2img = _pixels(run(dataclasses.replace(params, init_image=None), sd1, identity=IDENTITY))[0]
    assert not np.array_equal(from_red, txt2img)


@pytest.mark.parametrize("mode", list(ResizeMode))
def test_img2img_resize_modes_give_the_requested_size(sd1: loader.Components, mode: ResizeMode) -> None:
    init = Image.new("RGB", (96, 48), (200, 30, 30))
    result = run(_params(sampler="Euler", steps=2, init_image=init, resize_mode=mode), sd1, identity=IDENTITY)
    assert result.images[0].size == (64, 64)


def test_interrupt_returns_the_last_latent_and_stops(sd1: loader.Components) -> None:
    seen: list[StepInfo] = []
    control = StepControl(should_stop=lambda: len(seen) >= 3)
    result = run(_params(sampler="Euler", steps=10, n_iter=3), sd1, identity=IDENTITY, on_step=seen.append,
                 control=control)  # fmt: skip
    assert result.interrupted
    assert len(seen) == 3
    assert len(result.images) == 1  # the interrupted batch is still decoded; later iterations never start


def test_skip_ends_only_the_current_batch(sd1: loader.Components) -> None:
    seen: list[StepInfo] = []
    requests = [2]  # skip once, when the first batch reaches step 2

    def should_skip() -> bool:
        if requests and len(seen) == requests[0]:
            requests.pop()
            return True
        return False

    control = StepControl(should_skip=should_skip)
    result = run(_params(sampler="Euler", steps=5, n_iter=2), sd1, identity=IDENTITY, on_step=seen.append,
                 control=control)  # fmt: skip
    assert not result.interrupted
    assert len(result.images) == 2
    assert [s.batch for s in seen] == [0, 0, 1, 1, 1, 1, 1]


def test_step_callback_latents_give_cheap_previews(sd1: loader.Components) -> None:
    seen: list[StepInfo] = []
    run(_params(sampler="Euler", steps=3), sd1, identity=IDENTITY, on_step=seen.append)
    assert [(s.step, s.total) for s in seen] == [(1, 3), (2, 3), (3, 3)]
    preview = latent_preview(seen[-1].latent, Family.SD1)
    assert preview.size == (8, 8)  # latent resolution: cheap enough for every step
    assert preview.mode == "RGB"


def test_every_sampler_produces_an_image(sd1: loader.Components) -> None:
    for name in SAMPLERS:
        result = run(_params(sampler=name, steps=3), sd1, identity=IDENTITY)
        assert result.images[0].size == (64, 64), name
        assert np.asarray(result.images[0]).std() > 0, name


def test_nan_latents_are_reported_not_saved(sd1: loader.Components, monkeypatch: pytest.MonkeyPatch) -> None:
    original = sd1.unet.forward

    def broken(*args: object, **kwargs: object) -> object:
        out = original(*args, **kwargs)
        out[0].fill_(float("nan"))
        return out

    monkeypatch.setattr(sd1.unet, "forward", broken)
    with pytest.raises(NaNLatentError, match="NaN"):
        run(_params(sampler="Euler"), sd1, identity=IDENTITY)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("width", 65, "not a multiple of 8"),
        ("height", 4096, "in \\[8, 2048\\]"),
        ("steps", 0, "in \\[1, 150\\]"),
        ("cfg_scale", float("nan"), "finite"),
        ("cfg_scale", float("inf"), "finite"),
        ("denoising_strength", 1.5, "in \\[0.0, 1.0\\]"),
        ("sampler", "Euler b", "Euler a"),
        ("scheduler", "Fancy", "Karras"),
        ("batch_size", 0, "batch_size"),
        ("seed", 2**40, "seed"),
        ("prompt", "a (b:1.2.3)", "invalid emphasis weight '1.2.3'"),
        ("prompt", "a <lora:x:abc>", "'abc' is not a valid float"),
        ("prompt", "x " * 50_001, "the limit is 100000"),
        ("negative_prompt", "a\ud800b", "lone surrogate at position 1"),
        ("emphasis", "Strong", "allowed: Original, No norm, Ignore, None"),
    ],
)
def test_bad_parameters_name_the_field_and_the_allowed_values(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(FieldError, match=message) as info:
        GenerationParams(**{"prompt": "x", field: value}).resolved()  # type: ignore[arg-type]
    assert info.value.field == field


def test_prompt_editing_switches_conditioning_during_sampling(sd1: loader.Components) -> None:
    def image(prompt: str) -> np.ndarray:
        return _pixels(run(_params(prompt=prompt, sampler="Euler", steps=6), sd1, identity=IDENTITY))[0]

    edited = image("a [red:blue:3] circle")
    assert not np.array_equal(edited, image("a red circle"))
    assert not np.array_equal(edited, image("a blue circle"))
    after_the_last_step = image("a [red:blue:10] circle")
    assert np.array_equal(after_the_last_step, image("a red circle"))


def test_and_parts_comments_and_unknown_networks(sd1: loader.Components) -> None:
    plain = run(_params(prompt="a red circle", sampler="Euler"), sd1, identity=IDENTITY)
    composed = run(
        _params(prompt="a red circle AND a blue square:0.5", sampler="Euler"), sd1, identity=IDENTITY
    )
    assert not np.array_equal(_pixels(plain)[0], _pixels(composed)[0])
    commented = run(_params(prompt="a red circle # not this", sampler="Euler"), sd1, identity=IDENTITY)
    assert np.abs(_pixels(commented)[0] - _pixels(plain)[0]).max() <= 1  # "a red circle \n" tokenizes alike
    tagged = run(_params(prompt="a red circle <lora:detail:0.6>", sampler="Euler"), sd1, identity=IDENTITY)
    assert tagged.warnings == ["<lora:detail:0.6> ignored: no LoRA folder for this job"]
    assert np.array_equal(_pixels(tagged)[0], _pixels(plain)[0])


def test_textual_inversion_changes_the_image_and_records_its_hash(sd1: loader.Components) -> None:
    from pathlib import Path

    from latentstudio.models.embedding_files import Embedding
    from latentstudio.models.embeddings import EmbeddingDatabase

    vectors = {"text_encoder": torch.randn(2, 64, generator=torch.Generator().manual_seed(1))}
    embedding = Embedding("shinystyle", vectors, Path("shinystyle.pt"), hash="0123456789ab")
    database = EmbeddingDatabase.from_embeddings([embedding], {"text_encoder": 64})
    params = _params(prompt="a shinystyle circle", sampler="Euler")
    with_ti = run(params, sd1, identity=IDENTITY, embeddings=database)
    without = run(params, sd1, identity=IDENTITY)
    assert not np.array_equal(_pixels(with_ti)[0], _pixels(without)[0])
    assert infotext.parse(with_ti.infotexts[0])["TI hashes"] == "shinystyle: 0123456789ab"
    assert "TI hashes" not in infotext.parse(without.infotexts[0])


def test_text_options_reach_the_image_and_the_infotext(sd1: loader.Components) -> None:
    def generate(**kw: object) -> tuple[np.ndarray, str]:
        result = run(_params(sampler="Euler", **kw), sd1, identity=IDENTITY)
        return _pixels(result)[0], result.infotexts[0].splitlines()[-1]  # the parameter line

    base, line = generate(prompt="a (red:1.6) circle")
    for key in ("Emphasis:", "Pad conds:", "Old prompt editing timelines:"):
        assert key not in line
    no_norm, line = generate(prompt="a (red:1.6) circle", emphasis="No norm")
    assert not np.array_equal(no_norm, base)
    assert "Emphasis: No norm" in line
    _, line = generate(prompt="a red circle", emphasis="No norm")  # no brackets: A1111 omits the key
    assert "Emphasis:" not in line

    long = ", ".join(["a red circle"] * 30)  # two chunks against a one-chunk negative prompt
    unpadded, line = generate(prompt=long)
    assert "Pad conds:" not in line
    padded, line = generate(prompt=long, pad_conds=True)
    assert "Pad conds: True" in line
    assert not np.array_equal(padded, unpadded)
    _, line = generate(prompt="a [red:blue:0.5] circle", old_prompt_editing=True)
    assert "Old prompt editing timelines: True" in line


def test_second_order_samplers_schedule_edits_over_twice_the_steps(sd1: loader.Components) -> None:
    def image(prompt: str) -> np.ndarray:
        return _pixels(run(_params(prompt=prompt, sampler="Heun", steps=4), sd1, identity=IDENTITY))[0]

    # A1111 schedules over total_steps = 2 × 4 model calls: step 4 is halfway, so the switch happens
    plain = image("a red circle")
    assert not np.array_equal(image("a [red:blue:4] circle"), plain)
    assert np.array_equal(image("a [red:blue:8] circle"), plain)


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest-exact)", "Lanczos"])
def test_hires_fix_two_passes(sd1: loader.Components, upscaler: str) -> None:
    steps_seen: list[tuple[int, int]] = []
    params = _params(
        sampler="Euler", steps=4, enable_hr=True, hr_scale=2.0, hr_upscaler=upscaler, hr_second_pass_steps=3,
        denoising_strength=0.6,
    )  # fmt: skip
    result = run(params, sd1, identity=IDENTITY, on_step=lambda s: steps_seen.append((s.step, s.total)))
    assert result.images[0].size == (128, 128)
    # progress covers both passes: 4 first-pass steps, then exactly the 3 hires steps (A1111's hires pass
    # passes its steps to setup_img2img_steps, which then runs them all at any denoising strength)
    assert steps_seen == [(i, 7) for i in range(1, 8)]
    parsed = infotext.parse(result.infotexts[0])
    assert (parsed["Size-1"], parsed["Size-2"]) == ("64", "64")  # A1111 records the first-pass size
    assert (parsed["Hires upscale"], parsed["Hires steps"], parsed["Hires upscaler"]) == (
        "2.0",
        "3",
        upscaler,
    )
    assert parsed["Denoising strength"] == "0.6"
    plain = run(flat_replace(params, enable_hr=False), sd1, identity=IDENTITY)
    assert plain.images[0].size == (64, 64)
    again = run(params, sd1, identity=IDENTITY)
    assert np.array_equal(_pixels(again)[0], _pixels(result)[0])


def test_hires_fix_resize_with_truncation_and_hires_prompt(sd1: loader.Components) -> None:
    params = _params(
        sampler="Euler", steps=3, width=64, height=96, enable_hr=True, hr_resize_x=128, hr_resize_y=128,
        hr_prompt="a blue square",
    )  # fmt: skip
    result = run(params, sd1, identity=IDENTITY)
    assert result.images[0].size == (128, 128)  # cover-fit to 128×192, then 64 rows cut
    parsed = infotext.parse(result.infotexts[0])
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == ("128", "128")
    assert parsed["Hires prompt"] == "a blue square"
    same_prompt = run(flat_replace(params, hr_prompt=""), sd1, identity=IDENTITY)
    assert not np.array_equal(_pixels(same_prompt)[0], _pixels(result)[0])


def _inpaint_inputs() -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(3)
    init = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    mask = Image.new("L", (128, 96), 0)
    mask.paste(255, (40, 30, 72, 62))
    return init, mask


@pytest.mark.parametrize(
    ("fill", "label"), [(0, "fill"), (1, None), (2, "latent noise"), (3, "latent nothing")]
)
def test_inpainting_whole_picture_keeps_unmasked_pixels(
    sd1: loader.Components, fill: int, label: str | None
) -> None:
    init, mask = _inpaint_inputs()
    params = _params(sampler="Euler", steps=4, width=128, height=96, init_image=init, mask=mask,
                     mask_blur=0, inpainting_fill=fill, denoising_strength=0.9)  # fmt: skip
    result = run(params, sd1, identity=IDENTITY)
    out, before = np.asarray(result.images[0]), np.asarray(init)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], before[outside])
    assert np.abs(out[~outside].astype(int) - before[~outside]).mean() > 10  # the masked area was repainted
    parsed = infotext.parse(result.infotexts[0])
    assert parsed["Mask blur"] == "0"
    line = result.infotexts[0].splitlines()[-1]
    assert ("Masked content: " in line) == (label is not None)
    assert label is None or line.endswith(f"Masked content: {label}")


def test_inpainting_blur_only_reaches_its_radius_and_invert_swaps_the_areas(sd1: loader.Components) -> None:
    init, mask = _inpaint_inputs()
    params = _params(sampler="Euler", steps=3, width=128, height=96, init_image=init, mask=mask, mask_blur=4)
    out, before = np.asarray(run(params, sd1, identity=IDENTITY).images[0]), np.asarray(init)
    far = np.ones((96, 128), dtype=bool)
    far[30 - 11 : 62 + 11, 40 - 11 : 72 + 11] = False  # radius of a σ=4 kernel: int(2.5·4 + 0.5) = 10
    assert np.array_equal(out[far], before[far])
    inverted = run(flat_replace(params, inpainting_mask_invert=True), sd1, identity=IDENTITY)
    inside = np.zeros((96, 128), dtype=bool)
    inside[30 + 11 : 62 - 11, 40 + 11 : 72 - 11] = True
    assert np.array_equal(np.asarray(inverted.images[0])[inside], before[inside])
    assert infotext.parse(inverted.infotexts[0])["Mask mode"] == "Inpaint not masked"


def test_inpainting_only_masked_processes_the_expanded_crop(sd1: loader.Components) -> None:
    init, mask = _inpaint_inputs()
    shapes: list[tuple[int, ...]] = []
    params = _params(sampler="Euler", steps=3, width=64, height=64, init_image=init, mask=mask, mask_blur=0,
                     inpaint_full_res=True, inpaint_full_res_padding=8)  # fmt: skip
    result = run(params, sd1, identity=IDENTITY, on_step=lambda s: shapes.append(tuple(s.latent.shape)))
    assert result.images[0].size == (128, 96)  # pasted back into the full picture
    assert set(shapes) == {(1, 4, 8, 8)}  # the 48×48 crop (32 + 2·8) processed at 64×64
    outside = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(result.images[0])[outside], np.asarray(init)[outside])
    parsed = infotext.parse(result.infotexts[0])
    assert (parsed["Inpaint area"], parsed["Masked area padding"]) == ("Only masked", "8")
    blank = run(flat_replace(params, mask=Image.new("L", (128, 96))), sd1, identity=IDENTITY)
    assert blank.warnings == [
        'Unable to perform "Only masked" because the mask is blank; switched to img2img.'
    ]


def test_inpainting_checkpoint_gets_mask_and_masked_image(make_tiny: MakeTiny) -> None:
    path = make_tiny(Family.SD1, inpainting=True).path
    model = loader.load_checkpoint(path, device=torch.device("cpu"), dtype=torch.float32)
    assert model.unet.config.in_channels == 9
    init, mask = _inpaint_inputs()
    txt = run(_params(sampler="Euler", steps=3), model, identity=IDENTITY)
    assert txt.images[0].size == (64, 64)
    params = _params(sampler="Euler", steps=3, width=128, height=96, init_image=init, mask=mask, mask_blur=0)
    result = run(params, model, identity=IDENTITY)
    assert np.array_equal(
        np.asarray(result.images[0])[np.asarray(mask) == 0], np.asarray(init)[np.asarray(mask) == 0]
    )
    assert infotext.parse(result.infotexts[0])["Conditional mask weight"] == "1.0"
    weaker = run(dataclasses.replace(params, inpainting_mask_weight=0.0), model, identity=IDENTITY)
    assert not np.array_equal(np.asarray(weaker.images[0]), np.asarray(result.images[0]))


def test_outpainting_grows_the_canvas_and_keeps_the_original(sd1: loader.Components) -> None:
    from latentstudio.pipeline.inpaint import outpaint_canvas

    init, _ = _inpaint_inputs()
    canvas, mask = outpaint_canvas(init, left=32, bottom=32)
    assert canvas.size == (160, 128)
    params = _params(sampler="Euler", steps=3, width=160, height=128, init_image=canvas, mask=mask,
                     mask_blur=0, inpainting_fill=0)  # fmt: skip
    out = np.asarray(run(params, sd1, identity=IDENTITY).images[0])
    assert np.array_equal(out[:96, 32:], np.asarray(init))
    with pytest.raises(ValueError, match="left: -1"):
        outpaint_canvas(init, left=-1)


def test_decode_tiles_when_memory_is_short(sd1: loader.Components, monkeypatch: pytest.MonkeyPatch) -> None:
    from latentstudio.pipeline import vae as vae_module

    latents = torch.randn(1, 4, 40, 40, generator=torch.Generator().manual_seed(0))
    whole = vae_module.decode(sd1, latents)
    monkeypatch.setattr(vae_module, "free_memory", lambda _device: 2_000_000)  # forces 16–24 px tiles
    tiled = vae_module.decode(sd1, latents)
    assert tiled.shape == whole.shape == (1, 3, 320, 320)
    assert not torch.equal(tiled, whole)  # the tiled path ran
    assert (tiled - whole).abs().mean() < 0.05  # per-tile GroupNorm statistics: a small, smooth difference


def test_hires_pass_with_another_sampler_gets_only_the_options_it_takes(sd1: loader.Components) -> None:
    params = _params(sampler="Euler a", eta=0.5, steps=3, enable_hr=True, hr_sampler="Euler", hr_scale=1.5)
    result = run(params, sd1, identity=IDENTITY)
    assert result.images[0].size == (96, 96)
    assert infotext.parse(result.infotexts[0])["Hires sampler"] == "Euler"
