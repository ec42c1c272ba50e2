"""A1111's sampler-side request fields and options (issue 22): Karras churn (``s_churn``, ``s_tmin``,
``s_tmax``, ``s_noise``), NGMS (``s_min_uncond``), the start noise (``initial_noise_multiplier``,
``img2img_extra_noise``, ``sgm_noise_multiplier``), the schedule overrides (``sigma_min``, ``sigma_max``,
``rho``) and the fixed img2img / hires step arithmetic.

Each is checked against an independent transcription, written here, of what A1111 v1.10.1 and its pinned
k-diffusion (commit ab527a9) do: the churn loops of ``sample_euler``/``sample_heun``/``sample_dpm_2`` (one
``randn_like`` per step, which A1111 hijacks to the per-image generators), ``Sampler.initialize``'s option
precedence, the CFG denoiser's NGMS condition, the start-latent formulas of ``sample``/``sample_img2img`` and
``setup_img2img_steps``. The HTTP side is in ``test_sampler_fields_http.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from PIL import Image

from latentstudio.api.sdapi import options as opts
from latentstudio.api.sdapi.convert import ServerCatalog, generation_params
from latentstudio.api.sdapi.models import Img2ImgRequest, Txt2ImgRequest
from latentstudio.core import Conditioning, Prediction
from latentstudio.pipeline.params import GenerationParams
from latentstudio.pipeline.passes import Pass, Progress, _options, pass_sigmas, run_pass
from latentstudio.samplers import SAMPLERS, model_sigmas_from_alphas, scaled_linear_alphas_cumprod, sigmas_for
from latentstudio.samplers.noise import ImageRNG
from latentstudio.samplers.schedules import t_to_sigma
from latentstudio.samplers.wrappers import (
    CFGDenoiser,
    Denoiser,
    Ngms,
    ScheduledConditioning,
    StepControl,
    skips_uncond,
)
from tests.test_samplers_reference import SIGMAS, HashNoise, hash_gaussian, toy_denoiser

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MODEL_SIGMAS = model_sigmas_from_alphas(scaled_linear_alphas_cumprod()).float()


# -- churn: our samplers against k-diffusion's loops -----------------------------------------------------
def _reference_churn(  # noqa: PLR0917 - k-diffusion's signature
    kind: str, model: Model, x: torch.Tensor, sigmas: torch.Tensor, noises: Iterator[torch.Tensor],
    s_churn: float, s_tmin: float, s_tmax: float, s_noise: float,
) -> torch.Tensor:  # fmt: skip
    """k-diffusion ab527a9's ``sample_euler``/``sample_heun``/``sample_dpm_2``: eps drawn every step."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        eps = next(noises) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        d = (x - model(x, sigma_hat * s_in)) / sigma_hat
        dt = sigmas[i + 1] - sigma_hat
        if kind == "Euler" or sigmas[i + 1] == 0:
            x = x + d * dt
        elif kind == "Heun":
            x_2 = x + d * dt
            d_2 = (x_2 - model(x_2, sigmas[i + 1] * s_in)) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
        else:  # DPM2
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = (x_2 - model(x_2, sigma_mid * s_in)) / sigma_mid
            x = x + d_2 * dt
    return x


@pytest.mark.parametrize("name", ["Euler", "Heun", "DPM2"])
@pytest.mark.parametrize(
    "churn",
    [
        {"s_churn": 1.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0},
        {"s_churn": 0.5, "s_tmin": 0.3, "s_tmax": 5.0, "s_noise": 0.9},
        {"s_churn": 40.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.1},  # γ capped at √2 − 1
    ],
)
def test_churn_matches_k_diffusion(name: str, churn: dict[str, float]) -> None:
    x = hash_gaussian(0) * SIGMAS[0]
    ours = SAMPLERS[name](toy_denoiser, x, SIGMAS, noise_sampler=HashNoise(), **churn)
    noises = (hash_gaussian(k) for k in range(1, 100))
    reference = _reference_churn(name, toy_denoiser, x, SIGMAS, noises, **churn)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-12)
    without = SAMPLERS[name](toy_denoiser, x, SIGMAS)
    assert (ours - without).abs().max() > 1e-3


# -- where the values come from (A1111 Sampler.initialize) -----------------------------------------------
A1111_EXTRA = {  # A1111 v1.10.1 sd_samplers_kdiffusion.sampler_extra_params, by our sampler names
    "Euler": ("s_churn", "s_tmin", "s_tmax", "s_noise"),
    "Heun": ("s_churn", "s_tmin", "s_tmax", "s_noise"),
    "DPM2": ("s_churn", "s_tmin", "s_tmax", "s_noise"),
    **dict.fromkeys(
        [
            "DPM fast",
            "DPM2 a",
            "DPM++ 2S a",
            "DPM++ SDE",
            "DPM++ 2M SDE",
            "DPM++ 2M SDE Heun",
            "DPM++ 3M SDE",
        ],
        ("s_noise",),
    ),
}


def _a1111_kwargs(request: dict[str, float], options: dict[str, float], sampler: str) -> dict[str, float]:
    """``fill_fields_from_opts`` (request, else option; s_tmax 0 → ∞) then ``Sampler.initialize``: the
    sampler's extra params from p, each replaced by the option when the option is not the default."""
    p = {k: request[k] if k in request else options[k] for k in ("s_churn", "s_tmin", "s_tmax", "s_noise")}
    p["s_tmax"] = p["s_tmax"] or math.inf
    kwargs = {name: p[name] for name in A1111_EXTRA.get(sampler, ())}
    own = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}
    for name, default in own.items():
        option = (options[name] or math.inf) if name == "s_tmax" else options[name]
        if name in kwargs and option != default:
            kwargs[name] = option
    return kwargs


@pytest.mark.parametrize(
    ("request_fields", "options", "sampler"),
    [
        ({"s_churn": 0.5}, {}, "Euler"),
        ({"s_churn": 0.5}, {"s_churn": 0.3}, "Euler"),  # a non-default option wins over the request
        ({}, {"s_churn": 0.3, "s_tmin": 0.2}, "Heun"),
        ({"s_churn": 0.5, "s_tmax": 0.0}, {}, "DPM2"),  # 0 means no upper bound
        ({"s_churn": 0.5, "s_tmax": 5.0, "s_tmin": 1.0}, {"s_tmax": 7.0}, "Euler"),
        ({"s_noise": 0.5}, {}, "Euler a"),  # Euler a is not in sampler_extra_params
        ({"s_noise": 0.5, "s_churn": 2.0}, {}, "DPM++ 2S a"),  # s_noise only
        ({"s_noise": 0.8}, {"s_noise": 0.9}, "DPM2 a"),
        ({"s_tmin": 0.2, "s_churn": 1.0}, {"s_churn": 0.4}, "LMS"),
    ],
)
def test_values_reach_the_sampler_as_in_a1111(
    request_fields: dict[str, float], options: dict[str, float], sampler: str
) -> None:
    stored = {**opts.defaults(), **options}
    req = Txt2ImgRequest(prompt="x", sampler_name=sampler, steps=4, width=64, height=64, **request_fields)
    params = generation_params(req, stored, ServerCatalog(), None)
    ours = {k: v for k, v in _options(params, sampler).items() if k != "eta"}
    defaults = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0}
    expected = _a1111_kwargs(request_fields, {**defaults, **options}, sampler)
    assert ours == expected


# -- NGMS: which model calls skip the negative prompt ----------------------------------------------------
class CountingUNet:
    """ε = x · mean(context) + t/1000; records the batch size of every call."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, *, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return x * encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None] + t[:, None, None, None] / 1000


def _cond(seed: int, length: int = 77) -> ScheduledConditioning:
    context = torch.randn((1, length, 4), generator=torch.Generator().manual_seed(seed))
    return ScheduledConditioning.constant(Conditioning(context))


def _call_sigmas(name: str, sigmas: torch.Tensor) -> list[float]:
    """The σ of every model call of Euler (one per step) and Heun (two, one on the last step)."""
    calls = []
    for i in range(len(sigmas) - 1):
        calls.append(float(sigmas[i]))
        if name == "Heun" and sigmas[i + 1] > 0:
            calls.append(float(sigmas[i + 1]))
    return calls


@pytest.mark.parametrize("name", ["Euler", "Heun"])
@pytest.mark.parametrize(("min_sigma", "all_steps"), [(2.0, False), (2.0, True), (100.0, False), (0.0, True)])
def test_ngms_skips_the_negative_pass_where_a1111_does(name: str, min_sigma: float, all_steps: bool) -> None:
    unet = CountingUNet()
    guided = CFGDenoiser(
        Denoiser(unet, MODEL_SIGMAS, Prediction.EPSILON), [(_cond(1), 1.0)], _cond(2), 7.0,
        ngms=Ngms(min_sigma, all_steps),
    )  # fmt: skip
    sigmas = SIGMAS.float()
    SAMPLERS[name](guided, hash_gaussian(0).float()[:1] * sigmas[0], sigmas)
    # A1111: (self.step % 2 or s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond
    expected = [
        1 if (k % 2 or all_steps) and min_sigma > 0 and s < min_sigma else 2
        for k, s in enumerate(_call_sigmas(name, sigmas))
    ]
    assert unet.batches == expected
    assert ("NGMS" in guided.padded) == (1 in expected)


def test_a_skipped_call_uses_the_first_part_for_the_negative_at_scale_one() -> None:
    unet = CountingUNet()
    a, b = _cond(1), _cond(3)
    denoiser = Denoiser(unet, MODEL_SIGMAS, Prediction.EPSILON)
    guided = CFGDenoiser(denoiser, [(a, 1.0), (b, 0.5)], _cond(2), 7.0, ngms=Ngms(5.0))
    x, sigma = hash_gaussian(0).float(), torch.tensor([1.5, 1.5])
    guided(x, sigma)  # call 0 runs the negative prompt
    out = guided(x, sigma)  # call 1 below σ 5 skips it
    assert unet.batches == [6, 4]
    ca, cb = (denoiser(x, sigma, encoder_hidden_states=c.at(0).context.expand(2, -1, -1)) for c in (a, b))
    assert torch.allclose(out, ca + 1.0 * (ca - ca) + 0.5 * (cb - ca), atol=1e-6)


def test_ngms_on_timestep_samplers_compares_the_timestep() -> None:
    """A1111's DDIM/PLMS/UniPC denoiser gets the timestep in σ's place: t = 1 < 1.5 skips, t = 51 does not
    (though its σ ≈ 0.2 is below 1.5)."""
    ngms = Ngms(1.5, timesteps=True)
    at = {t: t_to_sigma(torch.tensor([float(t)]), MODEL_SIGMAS) for t in (1, 51)}
    assert skips_uncond(1, at[1], ngms, MODEL_SIGMAS)
    assert not skips_uncond(1, at[51], ngms, MODEL_SIGMAS)
    assert skips_uncond(1, at[51], Ngms(1.5), MODEL_SIGMAS)  # a k-diffusion sampler compares σ
    assert not skips_uncond(2, at[1], ngms, MODEL_SIGMAS)  # even calls keep the negative prompt


# -- the start latent ---------------------------------------------------------------------------------------
def _start_latent(params: GenerationParams, sigmas: torch.Tensor, init: torch.Tensor | None) -> torch.Tensor:
    """The latent the first model call sees (read back from the UNet input x·c_in)."""
    seen: list[torch.Tensor] = []

    def unet(x: torch.Tensor, t: torch.Tensor, **_: Any) -> torch.Tensor:
        seen.append(x.clone())
        return torch.zeros_like(x)

    cond = ScheduledConditioning.constant(Conditioning(torch.zeros(1, 77, 4)))
    sampling = Pass(params.sampler, sigmas, False, "Automatic", [(cond, 1.0)], cond)
    rng = ImageRNG((4, 8, 8), [11, 12], source="CPU")
    denoiser = Denoiser(unet, MODEL_SIGMAS, Prediction.EPSILON)
    run_pass(sampling, denoiser, params, StepControl(), rng, init, Progress(0, 9, 0, None))
    return seen[0][:2] * (sigmas[0] ** 2 + 1) ** 0.5


def _noise() -> torch.Tensor:
    """A1111's CPU per-image noise for seeds 11 and 12: each image's own generator, first draw."""
    return torch.stack([torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(s)) for s in (11, 12)])


def test_img2img_start_latent_has_the_noise_multiplier_and_extra_noise() -> None:
    sigmas = sigmas_for("Euler", "Automatic", 10, MODEL_SIGMAS).sigmas[4:]
    init = torch.linspace(-1, 1, 2 * 4 * 8 * 8).reshape(2, 4, 8, 8)
    picture = Image.new("RGB", (64, 64))
    base = GenerationParams("x", sampler="Euler", init_image=picture)
    for multiplier, extra in ((1.0, 0.0), (0.5, 0.0), (1.3, 0.25)):
        params = GenerationParams(
            "x", sampler="Euler", init_image=picture, initial_noise_multiplier=multiplier, extra_noise=extra
        )
        noise = (
            _noise() * multiplier
        )  # Img2Img.sample: x *= multiplier; sample_img2img: + noise·σ0, + noise·extra
        expected = init + noise * sigmas[0] + noise * extra
        assert torch.allclose(_start_latent(params, sigmas, init), expected, atol=1e-5)
    assert not torch.allclose(
        _start_latent(base, sigmas, init), _start_latent(params, sigmas, init), atol=1e-3
    )


def test_txt2img_start_latent_with_the_sgm_noise_multiplier() -> None:
    sigmas = sigmas_for("Euler", "Automatic", 6, MODEL_SIGMAS).sigmas
    plain = _start_latent(GenerationParams("x", sampler="Euler"), sigmas, None)
    assert torch.allclose(plain, _noise() * sigmas[0], atol=1e-5)
    sgm = _start_latent(GenerationParams("x", sampler="Euler", sgm_noise_multiplier=True), sigmas, None)
    assert torch.allclose(sgm, _noise() * (1 + sigmas[0] ** 2) ** 0.5, atol=1e-5)
    # the first-pass-only options are dropped where A1111 never applies them
    resolved = GenerationParams("x", sampler="DDIM", sgm_noise_multiplier=True, initial_noise_multiplier=2.0)
    assert (resolved.resolved().sgm_noise_multiplier, resolved.resolved().initial_noise_multiplier) == (
        False,
        1.0,
    )


# -- the schedule: overrides and step arithmetic --------------------------------------------------------
def _karras(n: int, lo: float, hi: float, rho: float) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    values = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return torch.cat([values, values.new_zeros(1)]).float()


def test_schedule_overrides_act_where_a1111_applies_them() -> None:
    params = GenerationParams("x", sigma_min=0.5, sigma_max=8.0, rho=3.0)
    karras, _, _ = pass_sigmas("DPM++ 2M", "Automatic", 6, None, MODEL_SIGMAS, params)  # Automatic = Karras
    assert torch.allclose(karras, _karras(6, 0.5, 8.0, 3.0), rtol=1e-5)
    default_rho = GenerationParams("x", sigma_max=8.0, rho=7.0)  # ρ 7 is Karras' default
    karras, _, _ = pass_sigmas("DPM++ 2M", "Karras", 6, None, MODEL_SIGMAS, default_rho)
    assert torch.allclose(karras, _karras(6, float(MODEL_SIGMAS[0]), 8.0, 7.0), rtol=1e-5)
    # Euler's Automatic is the model's own schedule: A1111's get_sigmas takes no overrides there
    own, _, _ = pass_sigmas("Euler", "Automatic", 6, None, MODEL_SIGMAS, params)
    assert torch.equal(own, sigmas_for("Euler", "Automatic", 6, MODEL_SIGMAS).sigmas)


@pytest.mark.parametrize(("steps", "strength"), [(20, 0.75), (7, 0.3), (12, 0.999), (5, 1.0)])
def test_fixed_steps_run_exactly_the_requested_steps(steps: int, strength: float) -> None:
    """A1111 setup_img2img_steps with img2img_fix_steps (and always for the hires pass): a schedule of
    int(steps / min(strength, 0.999)) steps, its last ``steps`` run."""
    total, t_enc = int(steps / min(strength, 0.999)), steps - 1
    full = sigmas_for("Euler", "Karras", total, MODEL_SIGMAS).sigmas
    fixed, _, _ = pass_sigmas("Euler", "Karras", steps, strength, MODEL_SIGMAS, fixed_steps=True)
    assert torch.equal(fixed, full[total - t_enc - 1 :])
    assert len(fixed) - 1 == steps
    default, _, _ = pass_sigmas("Euler", "Karras", steps, strength, MODEL_SIGMAS)
    assert len(default) - 1 == int(min(strength, 0.999) * steps) + 1


def test_fixed_steps_at_strength_zero_keep_the_init_latent() -> None:
    sigmas, _, _ = pass_sigmas("Euler", "Karras", 8, 0.0, MODEL_SIGMAS, fixed_steps=True)
    assert sigmas.tolist() == [0.0]
    init = torch.linspace(-1, 1, 2 * 4 * 8 * 8).reshape(2, 4, 8, 8)
    params = GenerationParams("x", sampler="Euler", init_image=Image.new("RGB", (64, 64)))
    cond = ScheduledConditioning.constant(Conditioning(torch.zeros(1, 77, 4)))
    denoiser = Denoiser(CountingUNet(), MODEL_SIGMAS, Prediction.EPSILON)
    latents, stopped, _ = run_pass(
        Pass("Euler", sigmas, False, "Karras", [(cond, 1.0)], cond), denoiser, params, StepControl(),
        ImageRNG((4, 8, 8), [1, 2], source="CPU"), init, Progress(0, 0, 0, None),
    )  # fmt: skip
    assert torch.equal(latents, init)
    assert not stopped


def test_img2img_request_fields_and_options_become_parameters() -> None:
    stored = {
        **opts.defaults(),
        "img2img_extra_noise": 0.2,
        "img2img_fix_steps": True,
        "s_min_uncond_all": True,
    }
    picture = Image.new("RGB", (64, 64))
    req = Img2ImgRequest(init_images=["x"], steps=4, width=64, height=64, s_min_uncond=1.5)
    params = generation_params(req, stored, ServerCatalog(), picture)
    assert (params.initial_noise_multiplier, params.extra_noise, params.img2img_fix_steps) == (1.0, 0.2, True)
    assert (params.s_min_uncond, params.s_min_uncond_all) == (1.5, True)
    stored["initial_noise_multiplier"] = 0.7
    assert generation_params(req, stored, ServerCatalog(), picture).initial_noise_multiplier == 0.7
    asked = req.model_copy(update={"initial_noise_multiplier": 0.4})
    assert generation_params(asked, stored, ServerCatalog(), picture).initial_noise_multiplier == 0.4
