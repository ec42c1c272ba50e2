"""The ControlNet inpaint units (``inpaint_only``, ``inpaint`` = inpaint_global_harmonious) as
sd-webui-controlnet runs them, on a tiny SD1 checkpoint (and a tiny inpainting one): the map with its mask
fitted in float, the network's hint with the masked pixels at −1, ``inpaint_only``'s latent restore and
final seam blend, the fallback to ``inpaint`` when A1111 inpaints too, and an inpainting checkpoint's
image conditioning taken from the unit. Each checked against an independent computation."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from latentstudio.control import hint, lama, synthetic
from latentstudio.control.networks import ControlNetwork, load_control_network
from latentstudio.control.units import ControlResize, ControlUnit
from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.models.loader import Components
from latentstudio.pipeline import inpaint, vae
from latentstudio.pipeline.control import ControlledUNet, Detected, detect_units, pass_units
from latentstudio.pipeline.params import GenerationParams, Hires, Inpaint
from latentstudio.pipeline.run import GenerationResult, ModelIdentity, run
from latentstudio.samplers.noise import ImageRNG
from tests.conftest import MakeTiny
from tests.test_control_lama import random_lama_state

IDENTITY = ModelIdentity("tiny", "0123456789")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sd1(make_tiny: MakeTiny) -> Components:
    return loader.load_checkpoint(make_tiny(Family.SD1, seed=5).path, device=CPU, dtype=torch.float32)


@pytest.fixture(scope="module")
def controlnet(tmp_path_factory: pytest.TempPathFactory) -> ControlNetwork:
    path = tmp_path_factory.mktemp("cn") / "control_tiny_inpaint.safetensors"
    synthetic.tiny_controlnet_file(path, Family.SD1, seed=4, hint_gain=30.0)
    return load_control_network(path, device=CPU, dtype=torch.float32)


def _picture(seed: int = 0, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Smooth random colours (not an example picture of the extension)."""
    noise = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 2.0)


def _mask(size: tuple[int, int] = (64, 64), box: tuple[int, int, int, int] = (24, 40, 20, 44)) -> np.ndarray:
    mask = np.zeros(size, np.uint8)
    top, bottom, left, right = box
    mask[top:bottom, left:right] = 255
    return mask


def _unit(module: str, picture: np.ndarray | None, mask: np.ndarray | None, **changes: object) -> ControlUnit:
    fields: dict[str, object] = {
        "module": module, "model": "control_tiny_inpaint",
        "image": None if picture is None else Image.fromarray(picture),
        "mask": None if mask is None else Image.fromarray(mask),
        "resize_mode": ControlResize.JUST_RESIZE,
    }  # fmt: skip
    return ControlUnit(**{**fields, **changes})  # type: ignore[arg-type]


def _run(components: Components, units: tuple[ControlUnit, ...], networks: tuple[ControlNetwork, ...],
         **changes: object) -> GenerationResult:  # fmt: skip
    fields: dict[str, object] = {"prompt": "a box", "negative_prompt": "blurry", "steps": 4, "seed": 11,
                                 "width": 64, "height": 64, "sampler": "Euler", "control": units}  # fmt: skip
    params = GenerationParams(**{**fields, **changes})  # type: ignore[arg-type]
    return run(params.resolved(), components, identity=IDENTITY, controls=networks)


def _pixels(result: GenerationResult) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


def _pool(mask: np.ndarray, kernel: int, stride: int, pad: int) -> np.ndarray:
    """Max over ``kernel``² windows every ``stride`` pixels, the border padded by ``pad`` (never larger)."""
    height, width = mask.shape
    rows = (height + 2 * pad - kernel) // stride + 1
    cols = (width + 2 * pad - kernel) // stride + 1
    out = np.zeros((rows, cols), mask.dtype)
    for i in range(rows):
        for j in range(cols):
            top, left = i * stride - pad, j * stride - pad
            out[i, j] = mask[max(top, 0) : top + kernel, max(left, 0) : left + kernel].max()
    return out


# ---------------------------------------------------------------- fitting the map


@pytest.mark.parametrize("mode", list(ControlResize))
def test_an_inpaint_map_is_fitted_in_float_with_a_binary_mask(mode: ControlResize) -> None:
    """The extension's detectmap_proc for inpaint: float32 throughout (a cubic upscale is neither rounded
    nor clipped), the mask resized alike and set to 255 over 127, and Resize and Fill's border masked."""
    rgba = np.concatenate([_picture(1, (40, 30)), _mask((40, 30), (10, 25, 5, 20))[:, :, None]], axis=2)
    fitted = hint.fit(rgba, mode, 96, 96)
    assert fitted.dtype == np.float32
    assert fitted.shape == (96, 96, 4)
    assert set(np.unique(fitted[:, :, 3])) <= {0.0, 255.0}
    if mode is ControlResize.JUST_RESIZE:
        colours = cv2.resize(rgba[:, :, :3].astype(np.float32), (96, 96), interpolation=cv2.INTER_CUBIC)
        mask = cv2.resize(rgba[:, :, 3].astype(np.float32), (96, 96), interpolation=cv2.INTER_CUBIC)
        assert np.array_equal(fitted[:, :, :3], colours)
        assert np.array_equal(fitted[:, :, 3], np.where(mask > 127, 255.0, 0.0))
        assert not np.array_equal(fitted[:, :, :3], np.round(fitted[:, :, :3]))  # floats, not rounded
    if mode is ControlResize.RESIZE_AND_FILL:  # 30 wide scaled to 72: 12 columns filled on each side
        assert (fitted[:, :12, 3] == 255).all()
        assert (fitted[:, -12:, 3] == 255).all()
        assert (fitted[:, 12:-12, 3] == 0).any()
    if mode is ControlResize.CROP_AND_RESIZE:  # scaled to 96×128, the middle 96 rows kept
        assert fitted[:, :, 3].mean() > 0


def test_the_network_sees_the_masked_pixels_at_minus_one(controlnet: ControlNetwork) -> None:
    picture, mask = _picture(2), _mask()
    rgba = np.concatenate([picture, mask[:, :, None]], axis=2)
    unit = _unit("inpaint", picture, mask)
    (passed,) = pass_units([Detected(unit, controlnet, rgba, ControlResize.JUST_RESIZE)], (64, 64), "single")
    expected = picture.astype(np.float32) / 255.0
    expected[mask > 0] = -1.0
    assert np.array_equal(passed.hint[0].permute(1, 2, 0).numpy(), expected)
    assert passed.restore is None  # inpaint_global_harmonious only guides
    assert passed.conditioning is None  # not an inpainting checkpoint


# ---------------------------------------------------------------- inpaint_only's restore


def test_inpaint_only_restores_the_unmasked_latent_as_the_extension_does(
    sd1: Components, controlnet: ControlNetwork
) -> None:
    """x0 = ᾱ^-½ x − (ᾱ^-1 − 1)^½ ε; x0·m + latent(picture)·(1 − m) with m the mask max-pooled (10×10,
    stride 8, padding 1); ε recomputed and blended by min(weight, 1) — outside the guidance window too."""
    picture, mask = _picture(3), _mask(box=(17, 40, 9, 31))
    unit = _unit("inpaint_only", picture, mask, weight=0.7, guidance_start=0.9)
    rgba = np.concatenate([picture, mask[:, :, None]], axis=2)
    (passed,) = pass_units([Detected(unit, controlnet, rgba, ControlResize.JUST_RESIZE)], (64, 64), "single",
                           partial(vae.vae_encode, sd1))  # type: ignore[arg-type]  # fmt: skip
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    fn = ControlledUNet(
        lambda x_, t_, **_: eps, [passed], total=4, alphas_cumprod=sd1.alphas_cumprod.double()
    )
    out = fn(x, torch.tensor([300.4, 300.4]), encoder_hidden_states=torch.randn(2, 77, 64),
             cond_mark=[True, False])  # fmt: skip
    alpha = float(sd1.alphas_cumprod[300])
    m = _pool(mask.astype(np.float64) / 255.0, 10, 8, 1)[None, None]
    assert m.shape == (1, 1, 8, 8)
    latent = vae.vae_encode(sd1, torch.from_numpy(picture).permute(2, 0, 1)[None].double().div(127.5) - 1)
    x64, e64 = x.double().numpy(), eps.double().numpy()
    x0 = (x64 / alpha**0.5 - (1 / alpha - 1) ** 0.5 * e64) * m + latent.double().numpy() * (1 - m)
    expected = 0.7 * (x64 / alpha**0.5 - x0) / (1 / alpha - 1) ** 0.5 + 0.3 * e64
    assert np.abs(out.double().numpy() - expected).max() < 1e-4
    assert np.abs(out.numpy() - eps.numpy()).max() > 0.1  # it did steer


def test_inpaint_only_keeps_the_picture_outside_its_mask(sd1: Components, controlnet: ControlNetwork) -> None:
    """After decoding, ``m·x + (1 − m)·picture`` with m the mask dilated 7×7 and box-blurred 7×7: farther
    than 6 pixels from the mask the result is the picture itself; inside it, the model's drawing.
    ``inpaint`` (global harmonious) guides without restoring; weight 0 leaves the picture untouched."""
    picture, mask = _picture(4), _mask()
    only = _pixels(_run(sd1, (_unit("inpaint_only", picture, mask),), (controlnet,)))
    far = cv2.dilate(mask, np.ones((13, 13), np.uint8)) == 0
    assert np.array_equal(only[far], picture[far].astype(np.int16))
    assert np.abs(only[mask > 0] - picture[mask > 0]).mean() > 5
    m = cv2.blur(cv2.dilate(mask.astype(np.float32) / 255, np.ones((7, 7), np.uint8)), (7, 7))
    assert np.array_equal(far, m == 0)  # the seam is exactly where the blended mask is not 0
    plain = _pixels(_run(sd1, (), ()))
    harmonious = _pixels(_run(sd1, (_unit("inpaint_global_harmonious", picture, mask),), (controlnet,)))
    assert np.abs(harmonious - plain).mean() > 1.0
    assert not np.array_equal(harmonious[far], picture[far].astype(np.int16))
    weightless = _unit("inpaint_only", picture, mask, weight=0.0)
    assert np.array_equal(_pixels(_run(sd1, (weightless,), (controlnet,))), plain)


def test_inpaint_only_falls_back_to_global_harmonious_when_a1111_inpaints(
    sd1: Components, controlnet: ControlNetwork
) -> None:
    """img2img with a mask: the unit (no image of its own) takes the init image and A1111's mask, inverted
    as asked; inpaint_only becomes inpaint, so the two give the same picture."""
    init = Image.fromarray(_picture(5))
    a1111_mask = Image.fromarray(255 - _mask())
    spec = Inpaint(a1111_mask, blur=0, invert=True)
    params = GenerationParams(prompt="x", width=64, height=64, init_image=init, inpaint=spec,
                              control=(_unit("inpaint_only", None, None),)).resolved()  # fmt: skip
    (detected,) = detect_units(params.control, (controlnet,), params, 1, 0)
    assert detected.unit.module == "inpaint"
    assert np.array_equal(detected.detected[:, :, :3], np.asarray(init))
    assert np.array_equal(detected.detected[:, :, 3], _mask())
    changes = {"init_image": init, "inpaint": spec, "denoising_strength": 0.7}
    only = _run(sd1, (_unit("inpaint_only", None, None),), (controlnet,), **changes)
    harmonious = _run(sd1, (_unit("inpaint", None, None),), (controlnet,), **changes)
    assert np.array_equal(_pixels(only), _pixels(harmonious))
    # without A1111's mask it stays inpaint_only, and the unit's mask is all clear
    plain = dataclasses.replace(params, inpaint=None)
    (kept,) = detect_units(plain.control, (controlnet,), plain, 1, 0)
    assert kept.unit.module == "inpaint_only"
    assert (kept.detected[:, :, 3] == 0).all()


# ---------------------------------------------------------------- inpainting checkpoints


def test_an_inpainting_checkpoint_takes_its_image_conditioning_from_the_unit(
    make_tiny: MakeTiny, controlnet: ControlNetwork
) -> None:
    """With 9 input channels the UNet's extra five are ``[max_pool(m, 8), VAE((2c − 1)·(1 − m))]`` from the
    unit, in every call (the extension's "replace x_t to support inpaint models")."""
    model = loader.load_checkpoint(
        make_tiny(Family.SD1, inpainting=True, seed=6).path, device=CPU, dtype=torch.float32
    )
    picture, mask = _picture(6), _mask(box=(5, 19, 30, 61))
    seen: list[torch.Tensor] = []
    handle = model.unet.register_forward_pre_hook(lambda _m, args: seen.append(args[0][:, 4:].clone()))
    try:
        _run(model, (_unit("inpaint_only", picture, mask),), (controlnet,))
    finally:
        handle.remove()
    m = (mask > 127).astype(np.float64)
    masked = (picture.astype(np.float64) / 255.0 * 2 - 1) * (1 - m[:, :, None])
    latent = vae.vae_encode(model, torch.from_numpy(masked).permute(2, 0, 1)[None].float())
    expected = torch.cat([torch.from_numpy(_pool(m, 8, 8, 0)).float()[None, None], latent], dim=1)
    assert len(seen) == 4  # 4 steps (the prompt and the negative prompt in one batch)
    for extra in seen:
        assert torch.allclose(extra, expected.expand_as(extra), atol=1e-5)


# ---------------------------------------------------------------- inpaint_only+lama


@pytest.fixture(scope="module")
def lama_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models") / "ControlNetPreprocessor"  # an annotator root
    (root / "lama").mkdir(parents=True)
    torch.save(random_lama_state(2), root / lama.FILE)
    return root


@pytest.mark.usefixtures("one_thread")
def test_lama_fills_the_map_and_shifts_the_first_batchs_noise(
    sd1: Components, controlnet: ControlNetwork, lama_root: Path
) -> None:
    """inpaint_only+lama: the map is LaMa's fill (then it restores and blends as inpaint_only), and the
    first batch's noise becomes √ᾱ·latent + √(1 − ᾱ)·noise at t = 999, the latent the filled picture's
    (the extension's HackedImageRNG); the second batch's noise is left alone."""
    picture, mask = _picture(7), _mask()
    unit = _unit("inpaint_only+lama", picture, mask)
    params = GenerationParams(prompt="a box", width=64, height=64, steps=3, seed=21, sampler="Euler",
                              n_iter=2, control=(unit,)).resolved()  # fmt: skip
    (detected,) = detect_units(params.control, (controlnet,), params, 21, 0, roots=(lama_root,))
    rgba = np.concatenate([picture, mask[:, :, None]], axis=2)
    assert np.array_equal(detected.detected, lama.fill(rgba, lama_root / lama.FILE))
    encode = partial(vae.vae_encode, sd1)
    (single,) = pass_units([detected], (64, 64), "single", encode)  # type: ignore[arg-type]
    (high,) = pass_units([detected], (64, 64), "high", encode)  # type: ignore[arg-type]
    assert single.restore is not None
    assert single.noise is single.restore.latent
    assert high.noise is None  # the hires pass draws fresh noise, as A1111's
    seen: list[torch.Tensor] = []
    handle = sd1.unet.register_forward_pre_hook(lambda _m, args: seen.append(args[0][:1].clone()))
    try:
        result = run(params, sd1, identity=IDENTITY, controls=(controlnet,), annotator_roots=(lama_root,))
    finally:
        handle.remove()
    assert len(result.images) == 2
    sigma = float(((1 - sd1.alphas_cumprod[999]) / sd1.alphas_cumprod[999]) ** 0.5)
    alpha = float(sd1.alphas_cumprod[999])
    for batch, expected_shift in ((0, True), (1, False)):
        noise = ImageRNG((4, 8, 8), [21 + batch]).first()
        if expected_shift:
            latent = vae.vae_encode(sd1, torch.from_numpy(detected.detected[:, :, :3]).permute(2, 0, 1)[None]
                                    .float().div(127.5).sub(1))  # fmt: skip
            noise = alpha**0.5 * latent + (1 - alpha) ** 0.5 * noise
        first_call = seen[batch * 3]  # Euler: one UNet call per step, the prompts batched
        expected = noise * sigma / (sigma**2 + 1) ** 0.5  # x_T = noise·σ_max, through c_in
        assert torch.allclose(first_call, expected, atol=1e-4), batch


@pytest.mark.usefixtures("one_thread")
def test_lama_outpaints_a_resize_and_fill_border_at_the_final_size(
    controlnet: ControlNetwork, lama_root: Path
) -> None:
    """With Resize and Fill the extension fits the picture (float, the border masked) to the last pass's
    size first, so LaMa fills the border too; with the hires fix that is the hires size."""
    picture, mask = _picture(8, (40, 64)), _mask((40, 64), (10, 30, 20, 40))
    unit = _unit("inpaint_only+lama", picture, mask, resize_mode=ControlResize.RESIZE_AND_FILL)
    params = GenerationParams(prompt="x", width=64, height=64, control=(unit,),
                              hires=Hires(1.5, denoising_strength=0.5)).resolved()  # fmt: skip
    (detected,) = detect_units(params.control, (controlnet,), params, 1, 0, roots=(lama_root,))
    rgba = np.concatenate([picture, mask[:, :, None]], axis=2)
    fitted = hint.fit(rgba, ControlResize.RESIZE_AND_FILL, 96, 96)
    assert fitted.dtype == np.float32
    assert (fitted[:12, :, 3] == 255).all()  # the filled border is masked: LaMa draws it
    assert detected.detected.shape == (96, 96, 4)
    assert np.array_equal(detected.detected, lama.fill(fitted, lama_root / lama.FILE))


def test_only_masked_inpainting_crops_the_picture_and_its_mask_alike(controlnet: ControlNetwork) -> None:
    """With "only masked" the extension crops each channel of an inpaint unit's input as A1111 crops the
    picture: the colours are the picture A1111 inpaints, the mask A1111's own mask at that size."""
    rng = np.random.default_rng(9)
    init = Image.fromarray(rng.integers(0, 256, (80, 112, 3), dtype=np.uint8))
    mask = Image.new("L", init.size, 0)
    mask.paste(255, (60, 20, 90, 50))
    params = GenerationParams(prompt="x", width=64, height=64, init_image=init,
                              inpaint=Inpaint(mask, blur=4, only_masked=True, padding=8),
                              control=(_unit("inpaint", None, None),)).resolved()  # fmt: skip
    (detected,) = detect_units(params.control, (controlnet,), params, 1, 0)
    prepared = inpaint.prepare(params)
    assert detected.detected.shape == (64, 64, 4)
    assert np.array_equal(detected.detected[:, :, :3], np.asarray(prepared.image))
    assert prepared.mask is not None
    assert np.array_equal(detected.detected[:, :, 3], np.asarray(prepared.mask))
