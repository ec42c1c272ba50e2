"""ControlNet and T2I-Adapter units in real jobs on a tiny SD1 checkpoint, with tiny networks in the
original layouts: effect vs none, weight 0 and disabled units bit-identical, the guidance window counted in
A1111's steps, two units, control modes, hires options and the infotext entry."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import uniform_filter

from latentstudio.control import preprocessors, synthetic
from latentstudio.control.networks import ControlNetwork, load_control_network
from latentstudio.control.units import ControlMode, ControlResize, ControlUnit, HiresOption
from latentstudio.core import FieldError
from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.models.loader import Components
from latentstudio.pipeline import inpaint, vae
from latentstudio.pipeline.control import ControlledUNet, Detected, PassUnit, detect_units, pass_units
from latentstudio.pipeline.params import GenerationParams, Hires, Inpaint
from latentstudio.pipeline.run import GenerationResult, ModelIdentity, run
from tests.conftest import MakeTiny

IDENTITY = ModelIdentity("tiny", "0123456789")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sd1(make_tiny: MakeTiny) -> Components:
    return loader.load_checkpoint(make_tiny(Family.SD1, seed=5).path, device=CPU, dtype=torch.float32)


@pytest.fixture(scope="module")
def controlnet(tmp_path_factory: pytest.TempPathFactory) -> ControlNetwork:
    path = tmp_path_factory.mktemp("cn") / "control_tiny_canny.safetensors"
    synthetic.tiny_controlnet_file(path, Family.SD1, seed=2)
    network = load_control_network(path, device=CPU, dtype=torch.float32)
    _strengthen(network.module)
    return network


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> ControlNetwork:
    path = tmp_path_factory.mktemp("cn") / "t2iadapter_tiny_canny.safetensors"
    synthetic.tiny_adapter_file(path, seed=3)
    network = load_control_network(path, device=CPU, dtype=torch.float32)
    _strengthen(network.module)
    return network


def _strengthen(module: torch.nn.Module) -> None:
    """Random tiny networks start near zero (zero convolutions): scale them up so that an effect shows
    in a 3-step 64×64 image."""
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(4.0)


def _control_image() -> Image.Image:
    image = Image.new("RGB", (64, 64), "black")
    pixels = np.asarray(image).copy()
    pixels[16:48, 16:48] = 255
    pixels[24:40, 24:40] = 60
    return Image.fromarray(pixels)


def _unit(**changes: object) -> ControlUnit:
    fields: dict[str, object] = {"module": "canny", "model": "control_tiny_canny", "image": _control_image()}
    return ControlUnit(**{**fields, **changes})  # type: ignore[arg-type]


def _run(
    components: Components,
    units: tuple[ControlUnit, ...] = (),
    networks: tuple[ControlNetwork, ...] = (),
    **changes: object,
) -> GenerationResult:
    fields: dict[str, object] = {"prompt": "a box", "negative_prompt": "blurry", "steps": 4, "seed": 11,
                                 "width": 64, "height": 64, "sampler": "Euler", "control": units}  # fmt: skip
    params = GenerationParams(**{**fields, **changes})  # type: ignore[arg-type]
    return run(params.resolved(), components, identity=IDENTITY, controls=networks)


def _pixels(result: GenerationResult) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


@contextmanager
def _calls(network: ControlNetwork) -> Iterator[list[int]]:
    """Count the network's forward calls (and their batch sizes)."""
    seen: list[int] = []
    handle = network.module.register_forward_hook(lambda _m, args, _o: seen.append(int(args[0].shape[0])))
    try:
        yield seen
    finally:
        handle.remove()


def test_a_unit_changes_the_image_and_weight_zero_does_not(
    sd1: Components, controlnet: ControlNetwork
) -> None:
    plain = _pixels(_run(sd1))
    guided = _run(sd1, (_unit(),), (controlnet,))
    assert np.abs(_pixels(guided) - plain).mean() > 1.0
    assert (_pixels(_run(sd1, (_unit(weight=0.0),), (controlnet,))) == plain).all()
    assert guided.infotexts[0].count("ControlNet 0: ") == 1
    assert (
        'ControlNet 0: "Module: canny, Model: control_tiny_canny, Weight: 1.0, Resize Mode: Crop and '
        in (guided.infotexts[0])
    )


def test_guidance_window_follows_a1111s_step_counter(sd1: Components, controlnet: ControlNetwork) -> None:
    # Euler, 4 steps: the model calls see sampling_step 0, 0, 1, 2 → fractions 0, 0, .25, .5
    for (start, end), expected in (((0.0, 1.0), 4), ((0.0, 0.0), 2), ((0.5, 1.0), 1), ((0.3, 0.4), 0)):
        with _calls(controlnet) as seen:
            _run(sd1, (_unit(guidance_start=start, guidance_end=end),), (controlnet,))
        assert len(seen) == expected, (start, end)
        assert all(batch == 2 for batch in seen)  # prompt and negative prompt in one call


def test_window_outside_every_step_is_bit_identical(sd1: Components, controlnet: ControlNetwork) -> None:
    plain = _pixels(_run(sd1))
    assert (_pixels(_run(sd1, (_unit(guidance_start=0.3, guidance_end=0.4),), (controlnet,))) == plain).all()


def test_two_units_both_act(sd1: Components, controlnet: ControlNetwork, adapter: ControlNetwork) -> None:
    first = _pixels(_run(sd1, (_unit(),), (controlnet,)))
    second_unit = _unit(model="t2iadapter_tiny_canny", weight=1.0)
    second = _pixels(_run(sd1, (second_unit,), (adapter,)))
    with _calls(adapter) as adapter_calls:
        both = _pixels(_run(sd1, (_unit(), second_unit), (controlnet, adapter)))
    assert adapter_calls == [1]  # the adapter's features depend on the hint only: once per pass
    assert np.abs(both - first).mean() > 0.5
    assert np.abs(both - second).mean() > 0.5


def test_control_modes_scale_and_mask_the_residuals(sd1: Components, controlnet: ControlNetwork) -> None:
    """One UNet call through :class:`ControlledUNet` equals the UNet given the extension's residuals:
    balanced (weight everywhere), soft (0.825^(12-i)), CFG injection (negative prompt's entries zero)."""
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500.0, 500.0])
    context = torch.randn(2, 77, 64, generator=torch.Generator().manual_seed(1))
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    cond = hint.expand(2, -1, -1, -1)
    down, mid = controlnet.module(
        x, t, encoder_hidden_states=context, controlnet_cond=cond, return_dict=False
    )
    outs = [*down, mid]
    for mode, weight in ((ControlMode.BALANCED, 0.7), (ControlMode.PROMPT, 0.7), (ControlMode.CONTROL, 1.3)):
        soft = mode is not ControlMode.BALANCED
        scales = [weight * 0.825 ** (12 - i) if soft else weight for i in range(13)]
        expected_res = [o * s for o, s in zip(outs, scales, strict=False)]  # 10 outputs here, as SDXL
        if mode is ControlMode.CONTROL:
            expected_res = [r * torch.tensor([1.0, 0.0])[:, None, None, None] for r in expected_res]
        expected = sd1.unet(
            x, t, encoder_hidden_states=context, down_block_additional_residuals=expected_res[:-1],
            mid_block_additional_residual=expected_res[-1], return_dict=False,
        )[0]  # fmt: skip
        unit = PassUnit(_unit(weight=weight, control_mode=mode), controlnet, hint, tuple(scales),
                        mode is ControlMode.CONTROL)  # fmt: skip
        fn = ControlledUNet(lambda *a, **k: sd1.unet(*a, return_dict=False, **k)[0], [unit], total=4)
        got = fn(x, t, encoder_hidden_states=context, cond_mark=[True, False])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_hires_options_choose_the_passes(sd1: Components, controlnet: ControlNetwork) -> None:
    hires = Hires(scale=1.5, steps=2, denoising_strength=0.5)
    for option, expected in (
        (HiresOption.BOTH, 6),
        (HiresOption.LOW_RES_ONLY, 4),
        (HiresOption.HIGH_RES_ONLY, 2),
    ):
        with _calls(controlnet) as seen:
            _run(sd1, (_unit(hr_option=option),), (controlnet,), hires=hires)
        assert len(seen) == expected, option
    # without a hires fix, "High res only" guides the one pass (the extension ignores hr_option then)
    with _calls(controlnet) as seen:
        _run(sd1, (_unit(hr_option=HiresOption.HIGH_RES_ONLY),), (controlnet,))
    assert len(seen) == 4


def test_img2img_unit_without_image_uses_the_init_image(sd1: Components, controlnet: ControlNetwork) -> None:
    init = _control_image()
    plain = _pixels(_run(sd1, init_image=init, denoising_strength=0.8))
    guided = _pixels(_run(sd1, (_unit(image=None),), (controlnet,), init_image=init, denoising_strength=0.8))
    assert np.abs(guided - plain).mean() > 0.5


@pytest.mark.parametrize(
    ("blur", "invert", "own_image"), [(0, False, False), (6, False, True), (3, True, False)]
)
def test_only_masked_inpainting_crops_the_control_image_as_the_picture(
    sd1: Components, controlnet: ControlNetwork, blur: int, invert: bool, own_image: bool
) -> None:
    """The extension crops a unit's image to the region A1111 inpaints: module "none" on the init image (or
    the same picture as the unit's own) gives exactly the picture A1111's "only masked" inpaints."""
    rng = np.random.default_rng(blur)
    init = Image.fromarray(rng.integers(0, 256, (80, 112, 3), dtype=np.uint8))
    mask = Image.new("L", init.size, 0)
    mask.paste(255, (70, 20, 92, 44))
    unit = _unit(module="none", image=init if own_image else None, resize_mode=ControlResize.JUST_RESIZE)
    params = GenerationParams(
        prompt="x", width=64, height=64, init_image=init, control=(unit,),
        inpaint=Inpaint(mask, blur=blur, only_masked=True, padding=6, invert=invert),
    ).resolved()  # fmt: skip
    (detected,) = detect_units(params.control, (controlnet,), params, 1, 0)
    assert detected.detected.shape == (64, 64, 3)
    assert np.array_equal(detected.detected, np.asarray(inpaint.prepare(params).image))
    # without the crop (the unit's inpaint_crop_input_image off) the whole picture is the hint
    whole = dataclasses.replace(params, control=(dataclasses.replace(unit, inpaint_crop_input_image=False),))
    (uncropped,) = detect_units(whole.control, (controlnet,), whole, 1, 0)
    assert uncropped.detected.shape == (80, 112, 3)
    # and the job runs with it
    result = _run(sd1, (unit,), (controlnet,), init_image=init, denoising_strength=0.6,
                  inpaint=Inpaint(mask, blur=blur, only_masked=True, padding=6, invert=invert))  # fmt: skip
    assert result.images[0].size == init.size


def test_unit_needs_an_image_in_txt2img() -> None:
    with pytest.raises(FieldError) as e:
        GenerationParams(prompt="x", control=(_unit(image=None),)).resolved()
    assert e.value.field == "control.0.image"


def test_a_shuffle_controlnet_is_pooled_and_guides_the_prompt_only(sd1: Components, tmp_path: Path) -> None:
    """The extension's one file-name rule: an original SD1/SD2 ControlNet named *shuffle* averages its
    outputs over space, and (as with CFG injection) only the prompt's batch entries get them."""
    path = tmp_path / "control_tiny_shuffle.safetensors"
    synthetic.tiny_controlnet_file(path, Family.SD1, seed=2)
    network = load_control_network(path, device=CPU, dtype=torch.float32)
    detected = [Detected(_unit(model="control_tiny_shuffle"), network, np.full((64, 64, 3), 128, np.uint8),
                         ControlResize.JUST_RESIZE)]  # fmt: skip
    (unit,) = pass_units(detected, (64, 64), "single")
    assert unit.pooled
    assert unit.cond_only
    seen: dict[str, object] = {}

    def unet(x: torch.Tensor, t: torch.Tensor, **kwargs: object) -> torch.Tensor:
        seen.update(kwargs)
        return x

    fn = ControlledUNet(unet, [unit], total=4)
    fn(torch.randn(2, 4, 8, 8), torch.tensor([500.0, 500.0]), encoder_hidden_states=torch.randn(2, 77, 64),
       cond_mark=[True, False])  # fmt: skip
    residuals = [*seen["down_block_additional_residuals"], seen["mid_block_additional_residual"]]  # type: ignore[misc]
    assert all(r.shape[-2:] == (1, 1) for r in residuals)
    assert all((r[1] == 0).all() for r in residuals)  # the negative prompt's entry
    assert all((r[0] != 0).any() for r in residuals)


def _blur_reference(x: np.ndarray, k: int) -> np.ndarray:
    """A (2k+1)² box mean with the edge values repeated, per ``[B, C]`` plane (float64)."""
    return uniform_filter(x, size=(1, 1, 2 * k + 1, 2 * k + 1), mode="nearest")


@pytest.mark.parametrize("case", [
    ("tile_colorfix", None, "single", HiresOption.BOTH),
    ("tile_colorfix+sharp", 1.5, "high", HiresOption.BOTH),
    ("tile_colorfix+sharp", 2.0, "high", HiresOption.LOW_RES_ONLY),
])  # fmt: skip
def test_a_colour_fix_steers_eps_as_the_extension_does(
    sd1: Components, controlnet: ControlNetwork, case: tuple[str, float | None, str, HiresOption]
) -> None:
    """x0 = ᾱ^-½ x − (ᾱ^-1 − 1)^½ ε; x0 − blur(x0) + blur(hint latent) (sharp: the negative entries get
    d·blur + (1 − d)·x0); ε recomputed and blended by the weight — outside the guidance window too, with
    the radius doubled in the hires pass unless the unit is off there (then its network does not run)."""
    module, b, stage, option = case
    rng = np.random.default_rng(3)
    picture = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    unit = _unit(module=module, threshold_a=3.0, threshold_b=b, weight=0.6, hr_option=option,
                 guidance_start=0.9)  # fmt: skip
    (pass_unit,) = pass_units([Detected(unit, controlnet, picture, ControlResize.JUST_RESIZE)], (64, 64),
                              stage, partial(vae.vae_encode, sd1))  # type: ignore[arg-type]  # fmt: skip
    doubled = stage == "high" and option is HiresOption.BOTH
    assert pass_unit.guides is (option is HiresOption.BOTH)
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([499.6, 499.6])
    fn = ControlledUNet(lambda x_, t_, **_: eps, [pass_unit], total=4,
                        alphas_cumprod=sd1.alphas_cumprod.double())  # fmt: skip
    with _calls(controlnet) as seen:
        out = fn(x, t, encoder_hidden_states=torch.randn(2, 77, 64), cond_mark=[True, False])
    assert seen == []  # sampling_step 0 is outside [0.9, 1]: the network rests, the colour fix does not
    alpha = float(sd1.alphas_cumprod[500])
    k = 6 if doubled else 3
    hint_latent = vae.vae_encode(
        sd1, torch.from_numpy(picture).permute(2, 0, 1)[None].double().div(127.5) - 1
    )
    x64, e64 = x.double().numpy(), eps.double().numpy()
    x0 = x64 / alpha**0.5 - (1 / alpha - 1) ** 0.5 * e64
    x0 = x0 - _blur_reference(x0, k) + _blur_reference(hint_latent.double().numpy(), k)
    if b is not None:
        soft = b / 100 * _blur_reference(x0, k) + (1 - b / 100) * x0
        x0 = np.concatenate([x0[:1], soft[1:]])
    expected = 0.6 * (x64 / alpha**0.5 - x0) / (1 / alpha - 1) ** 0.5 + 0.4 * e64
    assert np.abs(out.double().numpy() - expected).max() < 1e-4


def test_tile_colorfix_changes_the_picture_and_weight_zero_does_not(
    sd1: Components, controlnet: ControlNetwork
) -> None:
    resample = _pixels(_run(sd1, (_unit(module="tile_resample"),), (controlnet,)))
    fixed = _run(sd1, (_unit(module="tile_colorfix"),), (controlnet,))
    assert np.abs(_pixels(fixed) - resample).mean() > 1.0
    plain = _pixels(_run(sd1))
    assert (
        _pixels(_run(sd1, (_unit(module="tile_colorfix+sharp", weight=0.0),), (controlnet,))) == plain
    ).all()
    assert "Module: tile_colorfix, " in fixed.infotexts[0]


@pytest.mark.parametrize(("module", "space", "channel"), [
    ("recolor_luminance", cv2.COLOR_RGB2LAB, 0), ("recolor_intensity", cv2.COLOR_RGB2HSV, 2),
])  # fmt: skip
def test_a_recolor_unit_gives_the_picture_its_maps_lightness(
    sd1: Components, controlnet: ControlNetwork, module: str, space: int, channel: int
) -> None:
    """The extension's recolor post-processing: the map replaces the decoded picture's L (Lab) or V (HSV)."""
    x = np.linspace(0, 255, 64, dtype=np.float32)
    source = np.stack([np.add.outer(x, x[::-1]) / 2, np.add.outer(x, x) / 2, np.full((64, 64), 90.0)], 2)
    picture = Image.fromarray(source.astype(np.uint8))
    unit = _unit(module=module, image=picture, threshold_a=0.8)
    result = _run(sd1, (unit,), (controlnet,))
    expected = preprocessors.detect(module, np.asarray(picture), None, 0.8)[:, :, 0].astype(np.int16)
    got = cv2.cvtColor(np.asarray(result.images[0]), space)[:, :, channel].astype(np.int16)
    error = np.abs(got - expected)  # the 8-bit round trip through RGB (and its gamut) costs a little
    assert error.mean() < 0.5
    assert np.quantile(error, 0.95) <= 3
    weightless = _unit(module=module, image=picture, threshold_a=0.8, weight=0.0)
    plain = _pixels(_run(sd1, (weightless,), (controlnet,)))
    assert (plain == _pixels(_run(sd1))).all()
    assert np.abs(_pixels(result) - plain).mean() > 1.0
