"""The sampler registry against A1111's table (reference/a1111-compat.md §5.1) and the contract every sampler
keeps: k-diffusion's signature, no mutation, a callback per step, noise only from the noise sampler."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
import torch

from latentstudio.samplers import SAMPLER_INFO, SAMPLERS, StepInfo, resolve_sampler
from latentstudio.samplers.schedules import karras
from tests.test_samplers_reference import HashNoise, hash_gaussian, toy_denoiser

A1111_TABLE: dict[str, tuple[tuple[str, ...], dict[str, object]]] = {
    "DPM++ 2M": (("k_dpmpp_2m",), {"scheduler": "karras"}),
    "DPM++ SDE": (("k_dpmpp_sde",), {"scheduler": "karras", "second_order": True, "brownian_noise": True}),
    "DPM++ 2M SDE": (("k_dpmpp_2m_sde",), {"scheduler": "exponential", "brownian_noise": True}),
    "DPM++ 2M SDE Heun": (
        ("k_dpmpp_2m_sde_heun",),
        {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"},
    ),
    "DPM++ 2S a": (("k_dpmpp_2s_a",), {"scheduler": "karras", "uses_ensd": True, "second_order": True}),
    "DPM++ 3M SDE": (
        ("k_dpmpp_3m_sde",),
        {"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True},
    ),
    "Euler a": (("k_euler_a", "k_euler_ancestral"), {"uses_ensd": True}),
    "Euler": (("k_euler",), {}),
    "LMS": (("k_lms",), {}),
    "Heun": (("k_heun",), {"second_order": True}),
    "DPM2": (("k_dpm_2",), {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}),
    "DPM2 a": (
        ("k_dpm_2_a",),
        {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True},
    ),
    "DPM fast": (("k_dpm_fast",), {"uses_ensd": True}),
    "DPM adaptive": (("k_dpm_ad",), {"uses_ensd": True}),
    "Restart": (("restart",), {"scheduler": "karras", "second_order": True}),
    "DDIM": (("ddim",), {}),
    "PLMS": (("plms",), {}),
    "UniPC": (("unipc",), {}),
    "LCM": (("k_lcm",), {}),
    "DDPM": (("ddpm",), {}),  # ComfyUI's; not in A1111
}

REQUIRED = [
    "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
    "DPM++ 2M SDE", "DPM++ 3M SDE", "DPM fast", "DPM adaptive", "Restart", "DDIM", "PLMS", "UniPC", "LCM",
    "DDPM",
]  # fmt: skip

# model evaluations for 10 steps ending in 0 (second-order samplers take an Euler step into σ = 0)
EVALUATIONS = {
    "DPM++ 2M": 10, "DPM++ SDE": 19, "DPM++ 2M SDE": 10, "DPM++ 2M SDE Heun": 10, "DPM++ 2S a": 19,
    "DPM++ 3M SDE": 10, "Euler a": 10, "Euler": 10, "LMS": 10, "Heun": 19, "DPM2": 19, "DPM2 a": 19,
    "DPM fast": 10, "Restart": 19, "DDIM": 10, "PLMS": 11, "UniPC": 10, "LCM": 10, "DDPM": 10,
}  # fmt: skip

SIGMAS = karras(10, 0.0292, 14.6146).double()


def test_table_mirrors_a1111() -> None:
    assert list(SAMPLER_INFO) == list(A1111_TABLE)  # A1111's /sdapi/v1/samplers order
    assert list(SAMPLERS) == list(SAMPLER_INFO)
    for name, (aliases, options) in A1111_TABLE.items():
        info = SAMPLER_INFO[name]
        assert (info.aliases, info.options) == (aliases, options), name
        assert SAMPLERS[name] is info.function
    assert set(REQUIRED) <= set(SAMPLERS)


def test_sampler_info_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SAMPLER_INFO["Euler"].scheduler = "Karras"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("DPM++ 2M", ("DPM++ 2M", None)),
        ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
        ("dpm++ 2m sde karras", ("DPM++ 2M SDE", "Karras")),
        ("DPM++ 2M SDE Heun", ("DPM++ 2M SDE Heun", None)),
        ("DPM++ 2M SDE Heun Exponential", ("DPM++ 2M SDE Heun", "Exponential")),
        ("k_euler_a", ("Euler a", None)),
        ("K_EULER_ANCESTRAL", ("Euler a", None)),
        ("Euler a SGMUniform", ("Euler a", "SGM Uniform")),
        ("Euler SGM Uniform", ("Euler", "SGM Uniform")),
        ("LMS Karras", ("LMS", "Karras")),
        ("k_dpm_2_a karras", ("DPM2 a", "Karras")),
        ("DDIM", ("DDIM", None)),
        ("UniPC Align Your Steps", ("UniPC", "Align Your Steps")),
    ],
)
def test_resolve_sampler(name: str, expected: tuple[str, str | None]) -> None:
    assert resolve_sampler(name) == expected


@pytest.mark.parametrize("name", ["Euler b", "Karras", "DPM++ 2M Karras2", "", "Euler a Euler"])
def test_unknown_sampler_names_raise_listing_the_valid_ones(name: str) -> None:
    with pytest.raises(
        ValueError, match=r"unknown sampler .*valid: DPM\+\+ 2M, DPM\+\+ SDE, .*Euler a, Euler, "
    ):
        resolve_sampler(name)


def test_every_sampler_has_the_k_diffusion_signature_and_a_docstring() -> None:
    for name, fn in SAMPLERS.items():
        params = inspect.signature(fn).parameters
        assert list(params)[:5] == ["model", "x", "sigmas", "noise_sampler", "callback"], name
        assert all(p.kind is p.KEYWORD_ONLY for p in list(params.values())[3:]), name
        assert fn.__doc__, name
        assert len(fn.__doc__.strip().splitlines()) == 1, name


class CountingModel:
    def __init__(self) -> None:
        self.sigmas: list[float] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],)
        self.sigmas.append(float(sigma[0]))
        return toy_denoiser(x, sigma)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_contract(name: str) -> None:
    x, sigmas = hash_gaussian(0) * SIGMAS[0], SIGMAS.clone()
    x_before, sigmas_before = x.clone(), sigmas.clone()
    steps: list[StepInfo] = []
    model = CountingModel()
    out = SAMPLERS[name](model, x, sigmas, noise_sampler=HashNoise(), callback=steps.append)
    assert torch.equal(x, x_before)
    assert torch.equal(sigmas, sigmas_before)
    assert (out.shape, out.dtype) == (x.shape, x.dtype)
    assert bool(torch.isfinite(out).all())
    assert [step["i"] for step in steps] == list(range(len(steps)))
    assert all(set(step) == {"x", "i", "sigma", "sigma_hat", "denoised"} for step in steps)
    assert all(step["denoised"].shape == x.shape for step in steps)
    if name not in ("DPM fast", "DPM adaptive"):  # these report their own (solver) steps
        assert len(steps) == len(sigmas) - 1
    if name != "DPM adaptive":
        assert len(model.sigmas) == EVALUATIONS[name]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_float32_runs(name: str) -> None:
    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert (x.dtype, sigma.dtype) == (torch.float32, torch.float32)
        return toy_denoiser(x.double(), sigma.double()).float()

    noise = HashNoise()
    x = (hash_gaussian(0) * SIGMAS[0]).float()
    out = SAMPLERS[name](model, x, SIGMAS.float(), noise_sampler=lambda s, s_next: noise(s, s_next).float())
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", [name for name, info in SAMPLER_INFO.items() if info.stochastic])
def test_stochastic_samplers_need_a_noise_sampler(name: str) -> None:
    model = CountingModel()
    sigmas = karras(24, 0.0292, 14.6146).double()  # Restart restarts (adds noise) from 20 steps on
    with pytest.raises(ValueError, match="noise_sampler"):
        SAMPLERS[name](model, hash_gaussian(0) * sigmas[0], sigmas)
    assert model.sigmas == []  # refused before any work


@pytest.mark.parametrize(
    ("name", "options"),
    [
        *[(name, {}) for name, info in SAMPLER_INFO.items() if not info.stochastic],
        *[(name, {"eta": 0.0}) for name in ("Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 3M SDE")],
        *[(name, {"eta": 0.0}) for name in ("DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM fast", "DPM adaptive")],
        ("Restart", {}),  # below 20 steps Restart does not restart
        ("LCM", {}),  # a single step into σ = 0 adds no noise
    ],
)
def test_deterministic_settings_need_no_noise_sampler(name: str, options: dict[str, Any]) -> None:
    sigmas = torch.tensor([14.6, 0.0], dtype=torch.float64) if name == "LCM" else SIGMAS
    out = SAMPLERS[name](toy_denoiser, hash_gaussian(0) * sigmas[0], sigmas, **options)
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", ["Euler", "Heun", "DPM2"])
def test_churn_draws_one_noise_per_step_like_a1111(name: str) -> None:
    with pytest.raises(ValueError, match="noise_sampler"):
        SAMPLERS[name](toy_denoiser, hash_gaussian(0) * SIGMAS[0], SIGMAS, s_churn=1.0)
    noise = HashNoise()
    SAMPLERS[name](
        toy_denoiser, hash_gaussian(0) * SIGMAS[0], SIGMAS, noise_sampler=noise, s_churn=1.0, s_tmin=1.0
    )
    assert len(noise.calls) == len(SIGMAS) - 1  # even where σ < s_tmin and no noise is added


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("DPM++ 2M SDE", {"solver_type": "euler"}),
        ("UniPC", {"order": 4}),
        ("UniPC", {"variant": "bh3"}),
        ("LMS", {"order": 0}),
        ("DPM adaptive", {"order": 1}),
    ],
)
def test_invalid_options_raise(name: str, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        SAMPLERS[name](
            toy_denoiser, hash_gaussian(0) * SIGMAS[0], SIGMAS, noise_sampler=HashNoise(), **options
        )


def test_unknown_options_are_rejected() -> None:
    with pytest.raises(TypeError):
        SAMPLERS["Euler"](toy_denoiser, hash_gaussian(0), SIGMAS, eta=1.0)


def test_dpm_solvers_need_a_nonzero_sigma_range() -> None:
    for name in ("DPM fast", "DPM adaptive"):
        with pytest.raises(ValueError, match="sigma"):
            SAMPLERS[name](toy_denoiser, hash_gaussian(0), torch.zeros(3, dtype=torch.float64), eta=0.0)
