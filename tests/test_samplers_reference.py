"""Samplers against reference implementations.

* Golden values from the reference code itself, for a fixed nonlinear toy denoiser and fixed noise (all
  float64, no RNG): k-diffusion 0.1.1.post1 (``k_diffusion.sampling.sample_*``, noise passed through its
  ``noise_sampler=``), A1111's ``restart_sampler`` and ``sample_lcm`` and ComfyUI's ``sample_ddpm`` run on
  that k-diffusion. They were produced by running those functions on :func:`toy_denoiser`, :func:`HashNoise`
  and :data:`SIGMAS` below (k-diffusion cannot be a test dependency: its package import needs clip, wandb,
  kornia and a numpy < 2 pin). Our samplers matched them bit for bit except DPM fast/adaptive, where
  k-diffusion builds its log-σ grid in float32 (differences ~1e-7), and Restart, whose reference had its
  restart segments' ends pinned to the schedule's own sigmas as ours are (A1111 recomputes them in float32;
  when one rounds below σ_min it adds a spurious noise jump of √(σ² − σ'²) ≈ 1e-4).
* Live parity with diffusers' own schedulers (an independent implementation, installed with the project):
  DDIM (η = 0 and 1), DDPM, PLMS (PNDM with ``skip_prk_steps``) and UniPC (bh1/bh2, orders 1–3), run on their
  own timesteps with the same ε-model; diffusers computes ᾱ in float32, hence ~1e-6 differences.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, PNDMScheduler, UniPCMultistepScheduler

from latentstudio.samplers import SAMPLERS, model_sigmas_from_alphas

SHAPE = (2, 2, 4, 4)
_W = 0.3 * torch.sin(1 + torch.arange(2 * 2 * 9, dtype=torch.float64)).reshape(2, 2, 3, 3)


def toy_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear ε-prediction "UNet" (a 3×3 conv, tanh) wrapped as k-diffusion does: D = x − σ·ε."""
    s = sigma.reshape(-1, 1, 1, 1)
    eps = torch.tanh(torch.nn.functional.conv2d(x / (s**2 + 1) ** 0.5, _W, padding=1) + 0.1 * s.log())
    return x - s * eps


def hash_gaussian(k: int) -> torch.Tensor:
    """The k-th fixed "random" standard-normal tensor of shape SHAPE, from a hash instead of an RNG."""
    i = torch.arange(math.prod(SHAPE), dtype=torch.float64)
    u = torch.frac(torch.sin(i * 12.9898 + k * 78.233 + 1.0) * 43758.5453).abs().clamp(1e-9, 1 - 1e-9)
    return torch.special.ndtri(u).reshape(SHAPE)


class HashNoise:
    """A noise sampler returning hash_gaussian(1), hash_gaussian(2), … and recording its (σ, σ_next) calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        self.calls.append((float(sigma), float(sigma_next)))
        return hash_gaussian(len(self.calls))


def karras64(
    n: int, sigma_min: float = 0.0291675, sigma_max: float = 14.614642, rho: float = 7.0
) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


SIGMAS = karras64(8)
SIGMAS_LONG = karras64(24)

# (our sampler, options, k-diffusion/A1111/ComfyUI function it was checked against, sigmas) → every 8th value
# of the output and its mean absolute value.
CASES: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "euler": ("Euler", {}, "k_diffusion sample_euler", "SIGMAS"),
    "euler_a": ("Euler a", {}, "k_diffusion sample_euler_ancestral", "SIGMAS"),
    "euler_a_eta": ("Euler a", {"eta": 0.5, "s_noise": 0.9}, "k_diffusion sample_euler_ancestral", "SIGMAS"),
    "heun": ("Heun", {}, "k_diffusion sample_heun", "SIGMAS"),
    "dpm_2": ("DPM2", {}, "k_diffusion sample_dpm_2", "SIGMAS"),
    "dpm_2_a": ("DPM2 a", {}, "k_diffusion sample_dpm_2_ancestral", "SIGMAS"),
    "lms": ("LMS", {}, "k_diffusion sample_lms", "SIGMAS"),
    "dpm_fast": ("DPM fast", {"eta": 1.0}, "k_diffusion sample_dpm_fast", "SIGMAS"),
    "dpm_fast_ode": ("DPM fast", {"eta": 0.0}, "k_diffusion sample_dpm_fast", "SIGMAS"),
    "dpm_adaptive": ("DPM adaptive", {"eta": 1.0}, "k_diffusion sample_dpm_adaptive", "SIGMAS"),
    "dpm_adaptive_ode": ("DPM adaptive", {"eta": 0.0}, "k_diffusion sample_dpm_adaptive", "SIGMAS"),
    "dpmpp_2s_a": ("DPM++ 2S a", {}, "k_diffusion sample_dpmpp_2s_ancestral", "SIGMAS"),
    "dpmpp_sde": ("DPM++ SDE", {}, "k_diffusion sample_dpmpp_sde", "SIGMAS"),
    "dpmpp_sde_r": ("DPM++ SDE", {"r": 0.3, "eta": 0.7}, "k_diffusion sample_dpmpp_sde", "SIGMAS"),
    "dpmpp_2m": ("DPM++ 2M", {}, "k_diffusion sample_dpmpp_2m", "SIGMAS"),
    "dpmpp_2m_sde": ("DPM++ 2M SDE", {}, "k_diffusion sample_dpmpp_2m_sde", "SIGMAS"),
    "dpmpp_2m_sde_heun": (
        "DPM++ 2M SDE Heun",
        {},
        "k_diffusion sample_dpmpp_2m_sde(solver_type='heun')",
        "SIGMAS",
    ),
    "dpmpp_3m_sde": ("DPM++ 3M SDE", {}, "k_diffusion sample_dpmpp_3m_sde", "SIGMAS"),
    "restart": ("Restart", {}, "A1111 sd_samplers_extra.restart_sampler", "SIGMAS_LONG"),
    "restart_list": ("Restart", {"restart_list": {0.5: (4, 2, 5.0)}}, "A1111 restart_sampler", "SIGMAS"),
    "lcm": ("LCM", {}, "A1111 sd_samplers_lcm.sample_lcm", "SIGMAS"),
    "ddpm": ("DDPM", {}, "ComfyUI k_diffusion.sampling.sample_ddpm", "SIGMAS"),
}

GOLDEN: dict[str, list[float]] = {
    "euler": [
        -4.629345455761992,
        -13.476839529521378,
        3.023588516111874,
        0.3332561179600385,
        21.725661254898952,
        2.6529435906733614,
        6.118016237621376,
        17.018001039122982,
        11.601896596667846,
    ],
    "euler_a": [
        -7.743664986208937,
        -23.158524482701885,
        -21.32964817478877,
        -2.9257173987346237,
        4.369051844065678,
        11.505552848057523,
        3.7352654263121976,
        6.596067899683229,
        15.131842571001133,
    ],
    "euler_a_eta": [
        -6.893416944923304,
        -16.34685081016888,
        -7.0295630988603985,
        -0.08343930263256757,
        13.782433844186611,
        5.655763160220708,
        5.922975990814599,
        11.474213452379965,
        12.206976192049682,
    ],
    "heun": [
        -6.335418885121949,
        -14.48863000765089,
        0.8505190807150167,
        -1.6863326450002512,
        24.071655996699477,
        5.268443949223083,
        8.895457021744848,
        20.250573524442878,
        11.897742041875206,
    ],
    "dpm_2": [
        -6.390773825559822,
        -14.692822814933576,
        0.7158352606311281,
        -1.8543172555504406,
        24.203332864116565,
        5.603067409689858,
        9.036882117676452,
        20.52404034549507,
        11.960379772976973,
    ],
    "dpm_2_a": [
        -9.419292475486454,
        -25.784409518013774,
        -24.565186723359894,
        -6.443181408886633,
        9.757053101348925,
        18.123887536042602,
        16.949459017816494,
        13.98917115194345,
        17.240276483303365,
    ],
    "lms": [
        -5.18700517524864,
        -13.77852982611322,
        2.3825656555437056,
        -0.252447911202666,
        22.485016775684947,
        3.44221331095126,
        6.987344187378123,
        17.978304345474193,
        11.65338027654275,
    ],
    "dpm_fast": [
        -8.67537631423626,
        -15.23848785953823,
        -3.8430789816693403,
        0.7735052373236174,
        19.81241098840787,
        3.318967647693999,
        8.086892770879814,
        14.11931272641301,
        11.485485311594918,
    ],
    "dpm_fast_ode": [
        -6.91980360952728,
        -13.905770138635155,
        -0.039963587447044605,
        -1.4391435114032278,
        23.841726615016192,
        4.102733353680838,
        9.06785848260274,
        19.536304760882093,
        11.820520010274304,
    ],
    "dpm_adaptive": [
        7.392277378332427,
        -28.626258712662093,
        -15.631873121614998,
        -15.592689166766998,
        -2.7961102447424206,
        25.60429398398848,
        -1.6879628650882486,
        13.603668986043765,
        18.506070901608485,
    ],
    "dpm_adaptive_ode": [
        -6.2427386565749075,
        -14.497088348341942,
        0.6089940057975396,
        -1.8328118192209661,
        23.80846110918516,
        5.228466558477398,
        8.781778347966405,
        20.353877450439978,
        11.85101488466091,
    ],
    "dpmpp_2s_a": [
        -8.783543387729123,
        -24.58032373607488,
        -23.31868589824519,
        -4.903365682926025,
        9.116052295490757,
        15.105765644265245,
        12.245918715872731,
        10.797985261320084,
        16.31385471553969,
    ],
    "dpmpp_sde": [
        1.8692383918608302,
        -32.998071387268176,
        -23.115457214546264,
        -19.180979936608065,
        -3.888411477268618,
        21.910034955218062,
        -7.1171572586928145,
        12.255585391138842,
        19.45155147935668,
    ],
    "dpmpp_sde_r": [
        1.1031611217468114,
        -26.672296440747047,
        -17.559511783494383,
        -12.48358390115676,
        3.433688940023815,
        16.81505211931812,
        0.28236578935538253,
        12.106260163019307,
        16.108108745190997,
    ],
    "dpmpp_2m": [
        -6.019486440655307,
        -14.38034289299302,
        1.5770958695125374,
        -1.2745831630055426,
        23.840328588579457,
        4.974426102556187,
        8.455561574718464,
        19.72587141089947,
        11.90302768746222,
    ],
    "dpmpp_2m_sde": [
        -10.8868028361199,
        -32.095825702277004,
        -42.31943111688152,
        -8.652538850538408,
        -4.897460471943793,
        22.8864548757414,
        4.83235863661024,
        4.1406460438740496,
        21.317803153726313,
    ],
    "dpmpp_2m_sde_heun": [
        -12.809757200141673,
        -37.04407418478485,
        -54.26267395723423,
        -12.107070584815798,
        -10.125894061356282,
        29.3815081670943,
        5.160454923108937,
        2.9895733184219155,
        25.06096742926328,
    ],
    "dpmpp_3m_sde": [
        -3.6703323601024604,
        -27.130308380564966,
        -34.511075414379356,
        -10.709657344700727,
        2.227310541590818,
        18.857664905070436,
        -0.49120311718193677,
        10.706961429037435,
        17.607243560503804,
    ],
    "restart": [
        -9.422267621070059,
        -16.73160652811731,
        -3.7695329079107056,
        -1.284225212921661,
        22.796755187128056,
        7.22647137503745,
        10.999225332093722,
        18.44883778228848,
        12.623938701130939,
    ],
    "restart_list": [
        -13.884869189632715,
        -26.316177126469515,
        -18.927083851295542,
        -11.333847148121038,
        11.259363152194032,
        14.792079019887954,
        9.561767939282802,
        17.88794173364732,
        15.527709779026553,
    ],
    "lcm": [
        -13.002454925502548,
        -30.07690021676475,
        -28.678931910498502,
        -7.24738334672037,
        3.6580570555030434,
        16.217642338931757,
        6.279266101380354,
        7.275806957635057,
        18.040752996017872,
    ],
    "ddpm": [
        -7.743664986208934,
        -23.15852448270188,
        -21.32964817478877,
        -2.9257173987346268,
        4.369051844065677,
        11.505552848057523,
        3.7352654263121923,
        6.596067899683231,
        15.131842571001133,
    ],
}


def run_case(key: str) -> torch.Tensor:
    name, options, _, sigmas_name = CASES[key]
    sigmas = SIGMAS if sigmas_name == "SIGMAS" else SIGMAS_LONG
    x = hash_gaussian(0) * sigmas[0]
    return SAMPLERS[name](toy_denoiser, x, sigmas, noise_sampler=HashNoise(), **options)


def summary(out: torch.Tensor) -> list[float]:
    return [*out.flatten()[::8].tolist(), float(out.abs().mean())]


@pytest.mark.parametrize("key", list(CASES))
def test_golden_values_of_reference_implementations(key: str) -> None:
    got = summary(run_case(key))
    # DPM fast/adaptive: k-diffusion builds its log-σ grid (and rtol/atol) in float32
    tolerance = 5e-5 if key.startswith(("dpm_fast", "dpm_adaptive")) else 2e-6
    assert got == pytest.approx(GOLDEN[key], abs=tolerance, rel=1e-6)


# --- live parity with diffusers' schedulers ---------------------------------------------------------------

SD_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


def _eps_model(model_sigmas: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The toy denoiser as a VP ε-model on integer timesteps, as diffusers' schedulers call a UNet."""

    def eps(x_vp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = model_sigmas[int(t)]
        x = x_vp * (1 + sigma**2) ** 0.5
        return (x - toy_denoiser(x, sigma.expand(x.shape[0]))) / sigma

    return eps


class _SeededNoise:
    """Standard-normal noise drawn in the order diffusers draws it (one draw per noisy step)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.randn(SHAPE, generator=self.generator, dtype=torch.float64)


def _run_diffusers(scheduler: Any, steps: int, x_vp: torch.Tensor, **step_kwargs: Any) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    eps = _eps_model(model_sigmas_from_alphas(scheduler.alphas_cumprod.double()))
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = torch.Generator().manual_seed(5)
    x = x_vp * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(eps(scheduler.scale_model_input(x, t), t), t, x, **step_kwargs).prev_sample
    return x


def _run_ours(name: str, sigmas: torch.Tensor, x_vp: torch.Tensor, **options: Any) -> torch.Tensor:
    """Our sampler from the same x_vp; the result converted back to diffusers' (VP) scaling."""
    x = x_vp * (1 + sigmas[0] ** 2) ** 0.5
    out = SAMPLERS[name](toy_denoiser, x, sigmas, noise_sampler=_SeededNoise(5), **options)
    return out / (1 + sigmas[-1] ** 2) ** 0.5


def _x_vp() -> torch.Tensor:
    return hash_gaussian(0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(eta: float) -> None:
    scheduler = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    ref = _run_diffusers(scheduler, 10, _x_vp(), eta=eta)
    ms = model_sigmas_from_alphas(scheduler.alphas_cumprod.double())
    sigmas = torch.cat([ms[scheduler.timesteps], ms[:1]])  # diffusers' last step goes to ᾱ_0, not to 1
    assert torch.allclose(_run_ours("DDIM", sigmas, _x_vp(), eta=eta), ref, atol=2e-5, rtol=0)


def test_ddpm_matches_diffusers() -> None:
    scheduler = DDPMScheduler(**SD_BETAS, clip_sample=False, variance_type="fixed_small", steps_offset=1)
    ref = _run_diffusers(scheduler, 10, _x_vp())
    ms = model_sigmas_from_alphas(scheduler.alphas_cumprod.double())
    sigmas = torch.cat([ms[scheduler.timesteps], ms.new_zeros(1)])
    assert torch.allclose(_run_ours("DDPM", sigmas, _x_vp()), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("steps", [3, 10, 25])
def test_plms_matches_diffusers_pndm(steps: int) -> None:
    scheduler = PNDMScheduler(**SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    ref = _run_diffusers(scheduler, steps, _x_vp())
    ms = model_sigmas_from_alphas(scheduler.alphas_cumprod.double())
    timesteps = torch.unique(scheduler.timesteps).flip(0)  # PNDM repeats one timestep for its first step
    sigmas = torch.cat([ms[timesteps], ms[:1]])
    assert torch.allclose(_run_ours("PLMS", sigmas, _x_vp()), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_matches_diffusers(variant: str, order: int) -> None:
    """On diffusers' schedule ending at σ_min (final_sigmas_type="sigma_min"). Towards σ = 0 diffusers takes a
    last first-order step from the uncorrected point (NaN for bh1); ours denoises the corrected x instead."""
    scheduler = UniPCMultistepScheduler(
        **SD_BETAS,
        solver_order=order,
        solver_type=variant,
        final_sigmas_type="sigma_min",
        timestep_spacing="linspace",
    )
    ref = _run_diffusers(scheduler, 12, _x_vp())
    sigmas = scheduler.sigmas.double()
    ours = _run_ours("UniPC", sigmas, _x_vp(), order=order, variant=variant)
    assert torch.allclose(ours, ref, atol=2e-5, rtol=0)


def test_unipc_to_zero_denoises_the_last_corrected_point() -> None:
    sigmas = SIGMAS
    x = hash_gaussian(0) * sigmas[0]
    calls: list[float] = []

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls.append(float(sigma[0]))
        return toy_denoiser(x, sigma)

    to_zero = SAMPLERS["UniPC"](model, x, sigmas)
    assert len(calls) == len(sigmas) - 1  # one model evaluation per step, as every first-order-cost sampler
    to_sigma_min = SAMPLERS["UniPC"](toy_denoiser, x, sigmas[:-1])
    assert torch.equal(to_zero, toy_denoiser(to_sigma_min, sigmas[-2].reshape(1).expand(x.shape[0])))
