"""Noise schedules against A1111's published sigma vectors (reference/a1111-compat.md §5.2), diffusers'
schedulers and independent numpy/scipy formulas; the model's σ ↔ t mapping; sigma selection per sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from scipy import stats

from latentstudio.samplers import (
    SCHEDULER_INFO,
    SCHEDULERS,
    automatic_scheduler,
    model_sigmas_from_alphas,
    resolve_scheduler,
    scaled_linear_alphas_cumprod,
    sigma_to_t,
    sigmas_for,
    t_to_sigma,
)
from latentstudio.samplers._beta import beta_ppf

MS = model_sigmas_from_alphas(scaled_linear_alphas_cumprod())  # SD1.x, float64
SMIN, SMAX = float(MS[0]), float(MS[-1])
SD_BETAS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}

PUBLISHED = {  # §5.2, SD1.5, n = 10 (float64 reference, 4 decimals)
    "Karras": [14.6146, 9.1029, 5.4784, 3.1686, 1.7494, 0.9141, 0.4469, 0.2014, 0.0819, 0.0292, 0],
    "Exponential": [14.6146, 7.3249, 3.6712, 1.8400, 0.9222, 0.4622, 0.2317, 0.1161, 0.0582, 0.0292, 0],
    "Automatic": [14.6146, 7.8399, 4.6092, 2.9183, 1.9502, 1.3449, 0.9324, 0.6250, 0.3687, 0.0292, 0],
}


def _np_sigma_to_t(sigma: np.ndarray) -> np.ndarray:
    return np.interp(np.log(sigma), np.log(MS.numpy()), np.arange(len(MS)))


def _np_t_to_sigma(t: np.ndarray) -> np.ndarray:
    return np.exp(np.interp(t, np.arange(len(MS)), np.log(MS.numpy())))


# --- published values -------------------------------------------------------------------------------------


def test_sd1_sigma_range() -> None:
    sigma_range = (float(MS[0]), float(MS[-1]))
    assert sigma_range == pytest.approx((0.029167, 14.614641), abs=1e-6)
    float32 = model_sigmas_from_alphas(scaled_linear_alphas_cumprod().float())  # how LDM/A1111 store ᾱ
    assert float32.dtype == torch.float32
    assert (float(float32[0]), float(float32[-1])) == pytest.approx((0.029167, 14.614641), abs=1e-4)


@pytest.mark.parametrize("scheduler", list(PUBLISHED))
def test_published_sd15_vectors(scheduler: str) -> None:
    got = sigmas_for("Euler", scheduler, 10, MS).sigmas
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(PUBLISHED[scheduler], abs=1e-4)


def test_published_old_karras_vector() -> None:
    expected = [10.0, 4.0701, 1.4507, 0.4325, 0.1, 0]
    assert SCHEDULERS["Karras"](5, 0.1, 10.0).tolist() == pytest.approx(expected, abs=1e-4)
    old = sigmas_for("DPM++ 2M", "Automatic", 5, MS, use_old_karras_scheduler_sigmas=True).sigmas
    assert old.tolist() == pytest.approx(expected, abs=1e-4)


# --- diffusers' schedulers as an independent reference ------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "scheduler"),
    [("use_karras_sigmas", "Karras"), ("use_exponential_sigmas", "Exponential"), ("use_beta_sigmas", "Beta")],
)
@pytest.mark.parametrize("n", [4, 10, 25])
def test_matches_diffusers_euler_sigmas(flag: str, scheduler: str, n: int) -> None:
    reference = EulerDiscreteScheduler(**SD_BETAS, **{flag: True})
    reference.set_timesteps(n)
    ms32 = model_sigmas_from_alphas(reference.alphas_cumprod)
    ours = SCHEDULERS[scheduler](n, float(ms32[0]), float(ms32[-1]))
    assert torch.allclose(ours, reference.sigmas, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [4, 10])  # diffusers' default spacing hits integer timesteps for these n
def test_uniform_matches_diffusers_default_euler(n: int) -> None:
    reference = EulerDiscreteScheduler(**SD_BETAS)
    reference.set_timesteps(n)
    ours = SCHEDULERS["Uniform"](
        n, SMIN, SMAX, model_sigmas=model_sigmas_from_alphas(reference.alphas_cumprod)
    )
    assert torch.allclose(ours, reference.sigmas, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [10, 20, 50])
def test_ddim_schedule_is_diffusers_ddim_timesteps(n: int) -> None:
    reference = DDIMScheduler(**SD_BETAS, steps_offset=1)  # "leading" spacing + 1, like A1111's DDIM
    reference.set_timesteps(n)
    ours = SCHEDULERS["DDIM"](n, SMIN, SMAX, model_sigmas=MS)
    expected = torch.cat([MS[reference.timesteps], MS.new_zeros(1)])
    assert torch.allclose(ours.double(), expected, rtol=1e-6)


def test_ddim_schedule_keeps_a1111_step_count() -> None:
    """A1111 takes every (1000 // n)-th timestep from 1: for n = 7 that is 8 timesteps (diffusers: 7)."""
    got = SCHEDULERS["DDIM"](7, SMIN, SMAX, model_sigmas=MS)
    assert got.tolist() == pytest.approx([*MS[1::142].flip(0).tolist(), 0.0], rel=1e-6)
    assert len(got) == 9


# --- formulas -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 17])
def test_uniform_sgm_normal_simple_against_numpy(n: int) -> None:
    t_max, t_min = _np_sigma_to_t(np.array([SMAX, SMIN]))
    expected = {
        "Uniform": _np_t_to_sigma(np.linspace(999, 0, n)),
        "SGM Uniform": _np_t_to_sigma(np.linspace(t_max, t_min, n + 1)[:-1]),
        "Normal": _np_t_to_sigma(np.linspace(t_max, t_min, n)),
        "Simple": np.array([MS.numpy()[-(1 + int(i * 1000 / n))] for i in range(n)]),
    }
    for label, values in expected.items():
        got = SCHEDULERS[label](n, SMIN, SMAX, model_sigmas=MS)
        assert got.tolist() == pytest.approx([*values.tolist(), 0.0], rel=1e-6), label


def test_sgm_uniform_and_normal_follow_the_sigma_range() -> None:
    got = SCHEDULERS["Normal"](6, 0.5, 5.0, model_sigmas=MS)
    assert (float(got[0]), float(got[-2]), float(got[-1])) == pytest.approx((5.0, 0.5, 0.0), rel=1e-5)
    sgm = SCHEDULERS["SGM Uniform"](6, 0.5, 5.0, model_sigmas=MS)
    assert float(sgm[0]) == pytest.approx(5.0, rel=1e-5)
    assert float(sgm[-2]) > 0.5


def test_kl_optimal_has_no_final_zero() -> None:
    got = SCHEDULERS["KL Optimal"](8, SMIN, SMAX)
    i = np.arange(9) / 8
    expected = np.tan(i * np.arctan(SMIN) + (1 - i) * np.arctan(SMAX))
    assert len(got) == 9
    assert got.tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    assert float(got[-1]) == pytest.approx(SMIN, rel=1e-6)


def test_polyexponential_with_rho_one_is_exponential() -> None:
    assert torch.allclose(
        SCHEDULERS["Polyexponential"](9, SMIN, SMAX), SCHEDULERS["Exponential"](9, SMIN, SMAX)
    )
    bent = SCHEDULERS["Polyexponential"](9, SMIN, SMAX, rho=2.0)
    ramp = np.linspace(1, 0, 9) ** 2
    expected = np.exp(ramp * (np.log(SMAX) - np.log(SMIN)) + np.log(SMIN))
    assert bent[:-1].tolist() == pytest.approx(expected.tolist(), rel=1e-6)


@pytest.mark.parametrize("sdxl", [False, True])
def test_align_your_steps(sdxl: bool) -> None:
    table = (
        [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]
        if sdxl
        else [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
    )
    assert SCHEDULERS["Align Your Steps"](11, SMIN, SMAX, sdxl=sdxl).tolist() == pytest.approx([*table, 0])
    got = SCHEDULERS["Align Your Steps"](20, SMIN, SMAX, sdxl=sdxl)
    log_rev = np.interp(np.linspace(0, 1, 20), np.linspace(0, 1, 11), np.log(table[::-1]))
    assert got.tolist() == pytest.approx([*np.exp(log_rev)[::-1].tolist(), 0], rel=1e-6)


def test_beta_schedule_and_its_ppf_against_scipy() -> None:
    for a, b in ((0.6, 0.6), (0.5, 2.0), (3.0, 0.7)):
        for q in np.linspace(0, 1, 21):
            assert beta_ppf(float(q), a, b) == pytest.approx(stats.beta.ppf(q, a, b), abs=1e-12)
    got = SCHEDULERS["Beta"](12, SMIN, SMAX, alpha=0.5, beta=0.8)
    ppf = stats.beta.ppf(1 - np.linspace(0, 1, 12), 0.5, 0.8)
    assert got.tolist() == pytest.approx([*(SMIN + ppf * (SMAX - SMIN)).tolist(), 0], rel=1e-6)


# --- σ ↔ t ------------------------------------------------------------------------------------------------


def test_sigma_to_t_and_back() -> None:
    t = torch.tensor([0.0, 1.0, 57.25, 500.5, 998.9, 999.0], dtype=torch.float64)
    sigma = t_to_sigma(t, MS)
    assert sigma.tolist() == pytest.approx(_np_t_to_sigma(t.numpy()).tolist(), rel=1e-12)
    assert torch.allclose(sigma_to_t(sigma, MS), t, atol=1e-9)
    assert float(t_to_sigma(torch.tensor(321.0, dtype=torch.float64), MS)) == float(MS[321])


def test_sigma_to_t_shapes_clamps_and_quantize() -> None:
    sigma = torch.tensor([[0.5, 1.0, 2.0], [SMAX * 2, SMIN / 2, 3.3]], dtype=torch.float64)
    t = sigma_to_t(sigma, MS)
    assert t.shape == (2, 3)
    assert t.tolist()[0] == pytest.approx(_np_sigma_to_t(sigma[0].numpy()).tolist(), rel=1e-9)
    assert (float(t[1, 0]), float(t[1, 1])) == (999.0, 0.0)  # clamped to the training range
    assert sigma_to_t(torch.tensor(1.0, dtype=torch.float64), MS).shape == ()
    quantized = sigma_to_t(sigma[0], MS, quantize=True)
    assert quantized.tolist() == np.rint(_np_sigma_to_t(sigma[0].numpy())).tolist()
    batch = sigma_to_t(torch.full((4,), 2.0), MS.float())
    assert batch.shape == (4,)
    assert batch.dtype == torch.float32


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", [label for label, info in SCHEDULER_INFO.items() if info.need_inner_model])
def test_model_timestep_schedules_need_model_sigmas(label: str) -> None:
    if label == "Beta":  # A1111 marks it need_inner_model but only uses the σ range
        assert len(SCHEDULERS[label](5, SMIN, SMAX)) == 6
        return
    with pytest.raises(ValueError, match="model_sigmas"):
        SCHEDULERS[label](5, SMIN, SMAX)


def test_schedule_argument_errors() -> None:
    with pytest.raises(ValueError, match="n "):
        SCHEDULERS["Karras"](0, SMIN, SMAX)
    with pytest.raises(ValueError, match="sigma_min"):
        SCHEDULERS["Exponential"](5, 2.0, 1.0)
    with pytest.raises(ValueError, match="model_sigmas"):
        sigmas_for("Euler", "Karras", 10)
    with pytest.raises(ValueError, match="steps"):
        sigmas_for("Euler", "Karras", 0, MS)


# --- names and per-sampler selection ----------------------------------------------------------------------


def test_scheduler_table_mirrors_a1111() -> None:
    rows = [(i.name, i.label, i.default_rho, i.need_inner_model, i.aliases) for i in SCHEDULER_INFO.values()]
    assert rows == [
        ("automatic", "Automatic", -1, False, ()),
        ("uniform", "Uniform", -1, True, ()),
        ("karras", "Karras", 7.0, False, ()),
        ("exponential", "Exponential", -1, False, ()),
        ("polyexponential", "Polyexponential", 1.0, False, ()),
        ("sgm_uniform", "SGM Uniform", -1, True, ("SGMUniform",)),
        ("kl_optimal", "KL Optimal", -1, False, ()),
        ("align_your_steps", "Align Your Steps", -1, False, ()),
        ("simple", "Simple", -1, True, ()),
        ("normal", "Normal", -1, True, ()),
        ("ddim", "DDIM", -1, True, ()),
        ("beta", "Beta", -1, True, ()),
    ]
    assert list(SCHEDULERS) == list(SCHEDULER_INFO)
    without_sampler = SCHEDULERS["Automatic"](10, SMIN, SMAX, model_sigmas=MS)  # the model's own schedule
    assert torch.equal(without_sampler, SCHEDULERS["Uniform"](10, SMIN, SMAX, model_sigmas=MS))


def test_resolve_scheduler() -> None:
    assert resolve_scheduler("karras") == "Karras"
    assert resolve_scheduler("SGMUniform") == "SGM Uniform"
    assert resolve_scheduler(" sgm uniform ") == "SGM Uniform"
    assert resolve_scheduler("align_your_steps") == "Align Your Steps"
    with pytest.raises(ValueError, match="valid: Automatic, Uniform, Karras"):
        resolve_scheduler("karras2")


@pytest.mark.parametrize(
    ("sampler", "expected"),
    [
        ("DPM++ 2M", "Karras"),
        ("k_dpmpp_2m_sde", "Exponential"),
        ("DPM++ 2M SDE Heun", "Exponential"),
        ("Restart", "Karras"),
        ("Euler a", "Uniform"),
        ("LMS", "Uniform"),
        ("DDIM", "DDIM"),
        ("PLMS", "DDIM"),
        ("UniPC", "Uniform"),
    ],
)
def test_automatic_resolves_per_sampler(sampler: str, expected: str) -> None:
    assert automatic_scheduler(sampler) == expected
    direct = SCHEDULERS[expected](10, SMIN, SMAX, model_sigmas=MS)
    got, label = sigmas_for(sampler, "Automatic", 10, MS)
    assert label == expected
    assert torch.equal(got, direct)


@pytest.mark.parametrize("sampler", ["DPM2", "DPM2 a", "DPM++ 3M SDE"])
def test_discard_penultimate_sigma(sampler: str) -> None:
    got, label = sigmas_for(sampler, "Karras", 10, MS)
    assert label == "Karras"
    eleven = SCHEDULERS["Karras"](11, SMIN, SMAX)
    assert len(got) == 11  # still 10 steps
    assert torch.equal(got, torch.cat([eleven[:-2], eleven[-1:]]))
    forced = sigmas_for("Euler", "Karras", 10, MS, always_discard_next_to_last_sigma=True).sigmas
    assert torch.equal(forced, got)


def test_sigma_and_rho_overrides() -> None:
    got = sigmas_for("Euler", "Karras", 6, MS, sigma_min=0.5, sigma_max=8.0, rho=3.0).sigmas
    assert torch.equal(got, SCHEDULERS["Karras"](6, 0.5, 8.0, rho=3.0))
    # rho only applies to schedules that have one; options reach the schedule
    assert torch.equal(
        sigmas_for("Euler", "Exponential", 6, MS, rho=3.0).sigmas, SCHEDULERS["Exponential"](6, SMIN, SMAX)
    )
    beta, label = sigmas_for("Euler", "beta", 6, MS, alpha=0.3, beta=0.3)
    assert label == "Beta"
    assert torch.equal(beta, SCHEDULERS["Beta"](6, SMIN, SMAX, alpha=0.3, beta=0.3))
    assert torch.equal(
        sigmas_for("Euler", "Karras", 6, sigma_min=0.1, sigma_max=10.0).sigmas,
        SCHEDULERS["Karras"](6, 0.1, 10),
    )
