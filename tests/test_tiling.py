"""Seamless tiling (A1111 ``tiling``; our ``tiling_axes``): circular convolutions against independent
references (a torus-wrapped input; diffusers' pipeline on copies whose convolutions were made circular with
torch's own ``padding_mode``, as A1111's ``apply_circular`` does), torus equivariance of the UNet and VAE
decoder, the models restored after every job, the tiled VAE decode, and the request / option / infotext /
paste / CLI / HTTP doors."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from PIL import Image
from typer.testing import CliRunner

from latentstudio import infotext
from latentstudio.api.sdapi import options as opts
from latentstudio.api.sdapi.convert import ServerCatalog, prepare
from latentstudio.api.sdapi.models import Txt2ImgRequest
from latentstudio.api.sdapi.pasting import apply_infotext
from latentstudio.cli import app
from latentstudio.core import FieldError
from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.pipeline import tiling
from latentstudio.pipeline import vae as pipeline_vae
from latentstudio.pipeline.images import read_infotext
from latentstudio.pipeline.params import GenerationParams, TilingMode
from latentstudio.pipeline.run import GenerationResult, ModelIdentity, run
from latentstudio.postprocess import tiled_vae
from latentstudio.samplers.noise import ImageRNG
from latentstudio.samplers.wrappers import StepControl
from tests.conftest import MakeTiny
from tests.sdapi_support import TXT2IMG_BASE, build_root, generate
from tests.serving import serve

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions: see conftest.one_thread
IDENTITY = ModelIdentity("tiny", "0123456789")
AXES = [TilingMode.BOTH, TilingMode.X, TilingMode.Y]


@pytest.fixture(scope="module")
def sd1(make_tiny: MakeTiny) -> loader.Components:
    return loader.load_checkpoint(
        make_tiny(Family.SD1, seed=5).path, device=torch.device("cpu"), dtype=torch.float32
    )


def _params(**kwargs: Any) -> GenerationParams:
    base: dict[str, Any] = {"prompt": "a red circle", "negative_prompt": "blurry", "steps": 6, "seed": 11,
                            "width": 64, "height": 64, "sampler": "Euler", "scheduler": "Karras"}  # fmt: skip
    return GenerationParams(**{**base, **kwargs}).resolved()


def _pixels(result: GenerationResult) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


def _torus(x: torch.Tensor, pad: tuple[int, int, int, int], mode: TilingMode) -> torch.Tensor:
    """``x [B, C, H, W]`` padded by ``(left, right, top, bottom)`` by slicing and concatenating: wrapped
    around along the axes ``mode`` wraps, zeros along the others (independent of ``F.pad``)."""
    left, right, top, bottom = pad
    wrap_x, wrap_y = mode in (TilingMode.BOTH, TilingMode.X), mode in (TilingMode.BOTH, TilingMode.Y)
    w = x.shape[-1]
    cols = (x[..., w - left :], x, x[..., :right]) if wrap_x else None
    if cols is None:
        zeros = x.new_zeros
        cols = (zeros(*x.shape[:-1], left), x, zeros(*x.shape[:-1], right))
    x = torch.cat(cols, dim=-1)
    h = x.shape[-2]
    if wrap_y:
        return torch.cat((x[..., h - top :, :], x, x[..., :bottom, :]), dim=-2)
    zeros_top, zeros_bottom = (
        x.new_zeros(*x.shape[:-2], top, x.shape[-1]),
        x.new_zeros(*x.shape[:-2], bottom, x.shape[-1]),
    )
    return torch.cat((zeros_top, x, zeros_bottom), dim=-2)


# -- the convolution -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2), ((3, 5), 1, (1, 2), 1)],
)
@pytest.mark.parametrize("mode", AXES)
def test_circular_conv_equals_conv_on_a_wrapped_input(
    kernel: Any, stride: int, padding: Any, dilation: int, mode: TilingMode
) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(2, 3, 10, 12)
    before = conv(x)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    reference = F.conv2d(_torus(x, (pw, pw, ph, ph), mode), conv.weight, conv.bias, stride, 0, dilation)
    with tiling.circular([conv], mode) as changed:
        ours = conv(x)
    assert changed == 1
    assert torch.allclose(ours, reference, atol=1e-6)
    assert not torch.allclose(ours, before, atol=1e-3)
    if mode is TilingMode.BOTH:  # torch's own circular padding, what A1111's apply_circular switches on
        torch_circular = copy.deepcopy(conv)
        torch_circular.padding_mode = "circular"
        assert torch.allclose(ours, torch_circular(x), atol=1e-6)
    assert "_conv_forward" not in vars(conv)
    assert torch.equal(conv(x), before)


def test_unpadded_and_non_zero_padded_convs_are_left_alone() -> None:
    plain = torch.nn.Conv2d(3, 3, 1)
    reflect = torch.nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")
    with tiling.circular([torch.nn.Sequential(plain, reflect)], TilingMode.BOTH) as changed:
        assert changed == 0
    with tiling.circular([torch.nn.Conv2d(3, 3, 3, padding=1)], TilingMode.NONE) as changed:
        assert changed == 0


def test_the_convs_come_back_when_the_block_fails() -> None:
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.randn(1, 3, 8, 8)
    before = conv(x)
    seen: list[bool] = []

    def fails() -> None:
        with tiling.circular([conv, conv], TilingMode.X):
            seen.append("_conv_forward" in vars(conv))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fails()
    assert seen == [True]
    assert "_conv_forward" not in vars(conv)
    assert torch.equal(conv(x), before)


# -- the models: equivariant on the torus ----------------------------------------------------------------
def _rolled_gap(fn: Any, x: torch.Tensor, shift: int, out_shift: int, dim: int) -> float:
    """max |fn(roll(x)) − roll(fn(x))|: 0 (to rounding) for a model that is translation-equivariant on the
    torus, which a zero-padded one is not."""
    return float((fn(torch.roll(x, shift, dim)) - torch.roll(fn(x), out_shift, dim)).abs().max())


@pytest.mark.parametrize("mode", [TilingMode.NONE, *AXES])
def test_unet_and_vae_decoder_wrap_around_the_axes_asked_for(
    sd1: loader.Components, mode: TilingMode
) -> None:
    generator = torch.Generator().manual_seed(3)
    latent = torch.randn(1, 4, 16, 16, generator=generator)
    context = torch.randn(1, 77, sd1.unet.config.cross_attention_dim, generator=generator)

    def unet(x: torch.Tensor) -> torch.Tensor:
        return sd1.unet(x, 500, encoder_hidden_states=context).sample  # type: ignore[no-any-return]

    def decoder(z: torch.Tensor) -> torch.Tensor:
        return sd1.vae.decode(z).sample  # type: ignore[no-any-return]

    wrapped = {-1: mode in (TilingMode.BOTH, TilingMode.X), -2: mode in (TilingMode.BOTH, TilingMode.Y)}
    with torch.no_grad(), tiling.seamless(mode, sd1):
        for dim, wraps in wrapped.items():
            # two stride-2 levels in the tiny UNet: a roll by 4 latent pixels stays on its grid
            gaps = (_rolled_gap(unet, latent, 4, 4, dim), _rolled_gap(decoder, latent, 3, 24, dim))
            if wraps:
                assert max(gaps) < 1e-4, (dim, gaps)
            else:
                assert min(gaps) > 1e-2, (dim, gaps)


# -- a generation ----------------------------------------------------------------------------------------
def _circular_copy(module: torch.nn.Module, mode: TilingMode) -> torch.nn.Module:
    """A copy of ``module`` whose padded convolutions wrap as ``mode`` says, the way A1111 does it (torch's
    ``padding_mode``) for both axes, and by a pre-hook that wraps one axis for one axis."""
    module = copy.deepcopy(module)
    for conv in module.modules():
        if type(conv) is not torch.nn.Conv2d or conv.padding == (0, 0):
            continue
        if mode is TilingMode.BOTH:
            conv.padding_mode = "circular"
            continue
        ph, pw = conv.padding  # type: ignore[misc]
        wrap = (pw, pw, 0, 0) if mode is TilingMode.X else (0, 0, ph, ph)
        conv.padding = (ph, 0) if mode is TilingMode.X else (0, pw)
        conv.register_forward_pre_hook(lambda _m, args, w=wrap: (F.pad(args[0], w, mode="circular"),))
    return module


@pytest.mark.parametrize("mode", AXES)
def test_txt2img_with_tiling_equals_diffusers_with_circular_convolutions(
    sd1: loader.Components, mode: TilingMode
) -> None:
    """Same weights, noise and sampler as diffusers' pipeline on copies of the UNet and VAE made circular
    independently: max |Δpixel| ≤ 2/255; and the picture is not the untiled one."""
    ours = _pixels(run(_params(tiling=mode), sd1, identity=IDENTITY))
    plain = _pixels(run(_params(), sd1, identity=IDENTITY))
    pipe = StableDiffusionPipeline(
        vae=_circular_copy(sd1.vae, mode), text_encoder=sd1.text_encoders["text_encoder"],
        tokenizer=sd1.tokenizers["text_encoder"], unet=_circular_copy(sd1.unet, mode),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", use_karras_sigmas=True
        ),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        "a red circle", negative_prompt="blurry", num_inference_steps=6, guidance_scale=7.0, height=64,
        width=64, latents=ImageRNG((4, 8, 8), [11]).first(),
    ).images[0]  # fmt: skip
    assert np.abs(ours - np.asarray(reference).astype(np.int16)).max() <= 2
    assert np.abs(ours - plain).max() > 10


def test_a_job_leaves_the_models_as_they_were(sd1: loader.Components) -> None:
    """A job without tiling after tiled ones (finished, failed, interrupted) is bit for bit a fresh one."""
    fresh = _pixels(run(_params(), sd1, identity=IDENTITY))
    assert _pixels(run(_params(tiling=TilingMode.BOTH), sd1, identity=IDENTITY)).tobytes() != fresh.tobytes()

    def fail(_step: object) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run(_params(tiling=TilingMode.X), sd1, identity=IDENTITY, on_step=fail)
    stopped = run(
        _params(tiling=TilingMode.Y), sd1, identity=IDENTITY, control=StepControl(should_stop=lambda: True)
    )
    assert stopped.interrupted
    assert not any("_conv_forward" in vars(m) for part in (sd1.unet, sd1.vae) for m in part.modules())
    assert _pixels(run(_params(), sd1, identity=IDENTITY)).tobytes() == fresh.tobytes()


def test_hires_fix_with_tiling(sd1: loader.Components) -> None:
    from latentstudio.pipeline.params import Hires

    hires = Hires(scale=1.5, upscaler="Latent", steps=2, denoising_strength=0.6)
    result = run(_params(tiling=TilingMode.BOTH, hires=hires, steps=3), sd1, identity=IDENTITY)
    plain = run(_params(hires=hires, steps=3), sd1, identity=IDENTITY)
    assert result.images[0].size == (96, 96)
    parsed = infotext.parse(result.infotexts[0])
    assert (parsed["Tiling"], parsed["Hires upscale"]) == ("True", "1.5")
    assert result.images[0].tobytes() != plain.images[0].tobytes()


@pytest.mark.parametrize("mode", [TilingMode.BOTH, TilingMode.X])
def test_tiled_vae_decode_sees_across_the_seam(
    sd1: loader.Components, mode: TilingMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A latent too large for the memory budget decodes in tiles: with tiling, the border tiles get the
    opposite edge as context, so the result stays within the tiled decode's usual tolerance of the whole
    circular decode (tests/test_tiled_vae.py: max 0.36, mean 0.023) also at the edges, where tiles alone
    (no margin) are off by more than 1."""
    latents = torch.randn(1, 4, 48, 64, generator=torch.Generator().manual_seed(0))
    with tiling.seamless(mode, sd1):
        whole = pipeline_vae.decode(sd1, latents)
        budget = 2 * tiled_vae.estimate_decode_bytes(sd1.vae, 40, 40, torch.float32)
        monkeypatch.setattr(pipeline_vae, "free_memory", lambda _device: budget)
        naive = pipeline_vae.decode(sd1, latents)
        tiled = tiling.decode(sd1, latents, mode)
    assert tiled.shape == whole.shape == (1, 3, 384, 512)
    diff = (tiled - whole).abs()
    assert diff.max() <= 0.36
    assert diff.mean() <= 0.023
    assert (naive - whole)[..., :16].abs().max() > 1.0  # the margin is what makes the edge right
    assert torch.equal(tiling.decode(sd1, latents, TilingMode.NONE), pipeline_vae.decode(sd1, latents))


# -- the doors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "options", "expected"),
    [
        ({}, {}, TilingMode.NONE),
        ({"tiling": True}, {}, TilingMode.BOTH),
        ({}, {"tiling": True}, TilingMode.BOTH),  # A1111: None means the option
        ({"tiling": False}, {"tiling": True}, TilingMode.NONE),
        ({"tiling": True}, {"tiling_axes": "x"}, TilingMode.X),
        ({}, {"tiling": True, "tiling_axes": "y"}, TilingMode.Y),
        ({"tiling": False}, {"tiling_axes": "y"}, TilingMode.NONE),
    ],
)
def test_request_field_and_options(
    fields: dict[str, Any], options: dict[str, Any], expected: TilingMode
) -> None:
    req = Txt2ImgRequest(prompt="a cat", override_settings=options, **fields)
    assert prepare(req, opts.defaults(), ServerCatalog()).spec.params.tiling is expected


def test_bad_axes_and_bad_params_are_refused() -> None:
    with pytest.raises(FieldError) as e:
        prepare(Txt2ImgRequest(override_settings={"tiling_axes": "xy"}), opts.defaults(), ServerCatalog())
    assert e.value.field == "override_settings.tiling_axes"
    with pytest.raises(FieldError) as e:
        GenerationParams("x", tiling="x").resolved()  # type: ignore[arg-type]
    assert e.value.field == "tiling"


@pytest.mark.parametrize(
    ("mode", "line"),
    [
        (TilingMode.NONE, None),
        (TilingMode.BOTH, "Tiling: True"),
        (TilingMode.X, "Tiling: True, Tiling axes: x"),
    ],
)
def test_infotext_writes_tiling_as_a1111_and_pastes_back(
    sd1: loader.Components, mode: TilingMode, line: str | None
) -> None:
    text = run(_params(tiling=mode, steps=1), sd1, identity=IDENTITY).infotexts[0]
    params_line = text.splitlines()[-1]
    if line is None:
        assert "Tiling" not in params_line
    else:  # A1111's fixed order: Tiling is the last fixed key, before the extra ones
        assert params_line.endswith(f"RNG: CPU, {line}")
    stored = {**opts.defaults(), "tiling_axes": "y"}  # a stale axes setting must not leak into a paste
    pasted = apply_infotext(Txt2ImgRequest(infotext=text), stored)
    overrides = pasted.override_settings or {}
    if mode is TilingMode.NONE:
        assert "tiling" not in overrides
        return
    assert overrides["tiling"] is True
    assert overrides["tiling_axes"] == ("both" if mode is TilingMode.BOTH else mode.value)
    again = prepare(pasted, stored, ServerCatalog()).spec.params
    assert again.tiling is mode


def test_cli_generate_tiling(make_tiny: MakeTiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copyfile(make_tiny(Family.SD1).path, folder / "a.safetensors")
    monkeypatch.chdir(tmp_path)
    common = ["generate", "x", "--steps", "2", "--seed", "5", "--width", "64", "--height", "64"]
    result = CliRunner().invoke(app, [*common, "--tiling", "--tiling-axes", "x"])
    assert result.exit_code == 0, result.stderr
    text = read_infotext(Image.open(tmp_path / result.stdout.strip()))
    assert text is not None
    parsed = infotext.parse(text)
    assert (parsed["Tiling"], parsed["Tiling axes"]) == ("True", "x")
    bad = CliRunner().invoke(app, [*common, "--tiling", "--tiling-axes", "z"])
    assert bad.exit_code == 1
    assert "--tiling-axes" in bad.stderr


@pytest.fixture(scope="module")
def client(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with (
        serve(build_root(make_tiny, tmp_path_factory.mktemp("tiling"))) as served,
        httpx.Client(base_url=served.base, timeout=300) as c,
    ):
        yield c


def test_a1111_txt2img_with_tiling_performed(client: httpx.Client) -> None:
    """A1111's test_txt2img_with_tiling_performed payload: 200, and the infotext says so."""
    body = generate(client, "txt2img", {**TXT2IMG_BASE, "tiling": True, "seed": 3})
    assert body["parameters"]["tiling"] is True
    text = body["info"]["infotexts"][0]
    assert infotext.parse(text)["Tiling"] == "True"
    plain = generate(client, "txt2img", {**TXT2IMG_BASE, "seed": 3})
    assert "Tiling" not in plain["info"]["infotexts"][0]
    assert body["images"][0] != plain["images"][0]


def test_tiling_by_option_axes_and_pasted_infotext_over_http(client: httpx.Client) -> None:
    base = {k: v for k, v in TXT2IMG_BASE.items() if k != "tiling"}  # tiling None: the option decides
    x_only = generate(
        client, "txt2img", {**base, "seed": 3, "override_settings": {"tiling": True, "tiling_axes": "x"}}
    )
    parsed = infotext.parse(x_only["info"]["infotexts"][0])
    assert (parsed["Tiling"], parsed["Tiling axes"]) == ("True", "x")
    pasted = generate(client, "txt2img", {"infotext": x_only["info"]["infotexts"][0]})
    assert pasted["images"][0] == x_only["images"][0]  # the same request again, from its infotext


def test_the_ui_settings_tab_offers_tiling(tmp_path: Path) -> None:
    from latentstudio.config import Settings
    from latentstudio.server.ui_backend import option_fields

    (tmp_path / "models").mkdir()
    settings = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data", device="cpu")
    fields = {f.key: f for f in option_fields(settings)}
    assert (fields["tiling"].value, fields["tiling_axes"].choices) == (False, ("both", "x", "y"))
