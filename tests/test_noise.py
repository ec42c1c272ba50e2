"""Seeds and noise as A1111 (reference/a1111-compat.md §5.4): Philox vectors, per-image determinism,
variation, seed resize, ENSD and RNG sources."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from latentstudio.samplers.noise import (
    SEED_RANGE,
    ImageRNG,
    PhiloxGenerator,
    RngSource,
    all_seeds,
    latent_shape,
    paste_centred,
    resolve_seed,
    slerp,
)

SHAPE = (4, 8, 8)


def cpu_randn(seed: int, shape: tuple[int, ...], draws: int = 1) -> torch.Tensor:
    """The ``draws``-th standard normal tensor of a fresh CPU generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(draws - 1):
        torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g)


# --- Philox (NV) ------------------------------------------------------------------------------------------


def test_philox_docstring_vector() -> None:
    expected = [
        [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
        [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
        [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
    ]
    out = PhiloxGenerator(seed=0).randn((3, 4))
    assert out.dtype == np.float32
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_philox_seed_1234_first_and_second_draw() -> None:
    g = PhiloxGenerator(1234)
    first = g.randn((2, 3))
    assert g.offset == 1
    second = g.randn((2, 3))
    assert g.offset == 2
    np.testing.assert_allclose(
        first, [[-1.6164904, 0.5684552, -0.5102246], [-0.9113394, -1.1555171, -0.22615087]], atol=1e-6
    )
    np.testing.assert_allclose(
        second, [[0.6330828, 1.6358219, -0.34586293], [1.0195528, -0.41219768, 1.427874]], atol=1e-6
    )


def test_philox_is_elementwise_in_the_counter() -> None:
    """Element i depends only on (seed, offset, i): a longer draw starts with the shorter one."""
    short = PhiloxGenerator(7).randn((5,))
    long = PhiloxGenerator(7).randn((2, 50))
    np.testing.assert_array_equal(long.reshape(-1)[:5], short)


def test_philox_statistics_and_64_bit_seeds() -> None:
    x = PhiloxGenerator(2**40 + 3).randn((200_000,))
    assert abs(float(x.mean())) < 0.01
    assert abs(float(x.std()) - 1.0) < 0.01
    assert not np.array_equal(PhiloxGenerator(2**32 + 1).randn((8,)), PhiloxGenerator(1).randn((8,)))


@pytest.mark.parametrize("seed", [-1, -5, 2**64])
def test_philox_rejects_out_of_range_seeds(seed: int) -> None:
    with pytest.raises(ValueError, match="seed"):
        PhiloxGenerator(seed)


# --- seeds ------------------------------------------------------------------------------------------------


def test_resolve_seed() -> None:
    assert resolve_seed(123) == 123
    assert resolve_seed(0) == 0
    assert resolve_seed(-5) == -5  # A1111 only treats -1 as random
    expected = random.Random(42).randrange(SEED_RANGE)
    assert resolve_seed(-1, random.Random(42)) == expected
    assert resolve_seed(None, random.Random(42)) == expected
    drawn = {resolve_seed(None) for _ in range(20)}
    assert all(0 <= s < SEED_RANGE for s in drawn)
    assert len(drawn) > 1


def test_all_seeds() -> None:
    assert all_seeds(10, 100, 0.0, 3) == ([10, 11, 12], [100, 101, 102])
    assert all_seeds(10, 100, 0.5, 3) == ([10, 10, 10], [100, 101, 102])
    assert all_seeds(10, 100, 0.5, 0) == ([], [])


def test_latent_shape_floors() -> None:
    assert latent_shape(512, 768) == (4, 96, 64)
    assert latent_shape(513, 519, channels=16) == (16, 64, 64)


# --- determinism ------------------------------------------------------------------------------------------


def test_cpu_first_noise_is_the_seeds_first_draw() -> None:
    rng = ImageRNG(SHAPE, [5, 6])
    x = rng.first()
    assert x.shape == (2, *SHAPE)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x[0], cpu_randn(5, SHAPE), rtol=0, atol=0)
    torch.testing.assert_close(x[1], cpu_randn(6, SHAPE), rtol=0, atol=0)
    torch.testing.assert_close(rng.next()[1], cpu_randn(6, SHAPE, draws=2), rtol=0, atol=0)


@pytest.mark.parametrize("source", [RngSource.CPU, RngSource.GPU, RngSource.NV])
def test_batch_of_four_equals_four_single_runs(source: RngSource) -> None:
    seeds, _ = all_seeds(1000, 0, 0.0, 4)
    batch = ImageRNG(SHAPE, seeds, source=source)
    singles = [ImageRNG(SHAPE, [s], source=source) for s in seeds]
    for _ in range(3):  # the initial noise, then two ancestral draws
        expected = torch.cat([single.next() for single in singles])
        torch.testing.assert_close(batch.next(), expected, rtol=0, atol=0)


def test_nv_source_matches_philox() -> None:
    rng = ImageRNG(SHAPE, [1234], source=RngSource.NV)
    g = PhiloxGenerator(1234)
    np.testing.assert_array_equal(rng.first()[0].numpy(), g.randn(SHAPE))
    np.testing.assert_array_equal(rng.next()[0].numpy(), g.randn(SHAPE))


def test_gpu_source_on_a_cpu_device_is_the_cpu_generator() -> None:
    cpu = ImageRNG(SHAPE, [3, 4], source=RngSource.CPU)
    gpu = ImageRNG(SHAPE, [3, 4], source=RngSource.GPU)
    torch.testing.assert_close(cpu.first(), gpu.first(), rtol=0, atol=0)
    torch.testing.assert_close(cpu.next(), gpu.next(), rtol=0, atol=0)


def test_no_global_rng_state() -> None:
    """Interleaved jobs and the global torch seed do not affect each other's noise."""
    a, b = ImageRNG(SHAPE, [1]), ImageRNG(SHAPE, [2])
    a0 = a.first()
    torch.manual_seed(999)
    b.first()
    torch.randn(10)
    a1 = a.next()
    torch.testing.assert_close(a0[0], cpu_randn(1, SHAPE), rtol=0, atol=0)
    torch.testing.assert_close(a1[0], cpu_randn(1, SHAPE, draws=2), rtol=0, atol=0)


def test_next_starts_with_first_and_first_only_once() -> None:
    rng = ImageRNG(SHAPE, [8])
    torch.testing.assert_close(rng.next(), ImageRNG(SHAPE, [8]).first(), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="first"):
        rng.first()
    with pytest.raises(ValueError, match="seeds"):
        ImageRNG(SHAPE, [])
    with pytest.raises(ValueError, match="shape"):
        ImageRNG((4, 8), [1])
    with pytest.raises(ValueError, match="RngSource"):
        ImageRNG(SHAPE, [1], source="TPU")


def test_shape_may_be_any_sequence() -> None:
    """A list or torch.Size shape is not mistaken for a seed resize."""
    plain = ImageRNG(SHAPE, [4]).first()
    torch.testing.assert_close(ImageRNG(list(SHAPE), [4]).first(), plain, rtol=0, atol=0)
    torch.testing.assert_close(ImageRNG(torch.Size(SHAPE), [4]).first(), plain, rtol=0, atol=0)


def test_source_may_be_given_as_its_value() -> None:
    by_value = ImageRNG(SHAPE, [1234], source="NV").first()
    np.testing.assert_array_equal(by_value[0].numpy(), PhiloxGenerator(1234).randn(SHAPE))


def test_noise_sampler_returns_the_next_draw() -> None:
    rng, ref = ImageRNG(SHAPE, [2, 9]), ImageRNG(SHAPE, [2, 9])
    rng.first(), ref.first()
    out = rng.noise_sampler(torch.tensor(1.0), torch.tensor(0.5))
    assert out.shape == (2, *SHAPE)
    torch.testing.assert_close(out, ref.next(), rtol=0, atol=0)


# --- ENSD -------------------------------------------------------------------------------------------------


def test_ensd_changes_later_draws_only() -> None:
    plain = ImageRNG(SHAPE, [10, 11])
    ensd = ImageRNG(SHAPE, [10, 11], eta_noise_seed_delta=31337)
    torch.testing.assert_close(ensd.first(), plain.first(), rtol=0, atol=0)
    later = ensd.next()
    assert not torch.equal(later, plain.next())
    # The re-created generator starts from scratch at seed + ENSD.
    torch.testing.assert_close(later[1], cpu_randn(11 + 31337, SHAPE), rtol=0, atol=0)
    torch.testing.assert_close(ensd.next()[0], cpu_randn(10 + 31337, SHAPE, draws=2), rtol=0, atol=0)


def test_ensd_with_nv_source() -> None:
    rng = ImageRNG(SHAPE, [10], source=RngSource.NV, eta_noise_seed_delta=5)
    np.testing.assert_array_equal(rng.first()[0].numpy(), PhiloxGenerator(10).randn(SHAPE))
    np.testing.assert_array_equal(rng.next()[0].numpy(), PhiloxGenerator(15).randn(SHAPE))


# --- variation (subseed) ----------------------------------------------------------------------------------


def test_variation_strength_zero_is_plain_noise() -> None:
    varied = ImageRNG(SHAPE, [1, 1], subseeds=[50, 51], subseed_strength=0.0).first()
    torch.testing.assert_close(varied, ImageRNG(SHAPE, [1, 1]).first(), rtol=0, atol=0)


def test_variation_strength_one_is_the_subseed_noise() -> None:
    varied = ImageRNG(SHAPE, [1, 1], subseeds=[50, 51], subseed_strength=1.0).first()
    torch.testing.assert_close(varied[0], cpu_randn(50, SHAPE), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(varied[1], cpu_randn(51, SHAPE), rtol=1e-4, atol=1e-5)


def test_variation_is_the_slerp_of_seed_and_subseed_noise() -> None:
    rng = ImageRNG(SHAPE, [1], subseeds=[50], subseed_strength=0.3)
    expected = slerp(0.3, cpu_randn(1, SHAPE), cpu_randn(50, SHAPE))
    torch.testing.assert_close(rng.first()[0], expected, rtol=0, atol=0)
    # The image generator still continues after the seed's first draw.
    torch.testing.assert_close(rng.next()[0], cpu_randn(1, SHAPE, draws=2), rtol=0, atol=0)


def test_variation_missing_subseed_uses_zero() -> None:
    rng = ImageRNG(SHAPE, [1, 2], subseeds=[50], subseed_strength=0.3)
    x = rng.first()
    torch.testing.assert_close(x[1], slerp(0.3, cpu_randn(2, SHAPE), cpu_randn(0, SHAPE)), rtol=0, atol=0)


def test_variation_with_subseed_equal_to_seed_is_the_seed_noise() -> None:
    """Identical noises take the linear fallback; its inverted weights still sum to one."""
    varied = ImageRNG(SHAPE, [77], subseeds=[77], subseed_strength=0.3).first()
    torch.testing.assert_close(varied[0], cpu_randn(77, SHAPE), rtol=1e-6, atol=1e-6)


def test_slerp_linear_fallback_has_inverted_weights() -> None:
    low = cpu_randn(1, SHAPE)
    high = low + 1e-3 * cpu_randn(2, SHAPE)  # nearly parallel: mean dot > 0.9995
    torch.testing.assert_close(slerp(0.25, low, high), low * 0.25 + high * 0.75, rtol=0, atol=0)
    # The true slerp branch goes the other way: val=0 is low, val=1 is high.
    other = cpu_randn(3, SHAPE)
    torch.testing.assert_close(slerp(0.0, low, other), low, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slerp(1.0, low, other), other, rtol=1e-5, atol=1e-5)


def test_slerp_normalises_along_dim_1() -> None:
    """A1111 normalises a (C, H, W) noise along H: every (c, w) column is slerped on its own."""
    low, high, val = cpu_randn(1, SHAPE), cpu_randn(2, SHAPE), 0.4
    out = slerp(val, low, high)
    c, w = 2, 5
    a, b = low[c, :, w].double(), high[c, :, w].double()
    omega = torch.acos(torch.dot(a / a.norm(), b / b.norm()))
    col = (torch.sin((1 - val) * omega) * a + torch.sin(val * omega) * b) / torch.sin(omega)
    torch.testing.assert_close(out[c, :, w].double(), col, rtol=1e-5, atol=1e-5)


# --- seed resize ------------------------------------------------------------------------------------------


def test_seed_resize_pastes_the_small_noise_centred() -> None:
    shape = (4, 16, 12)  # 96 wide, 128 tall
    rng = ImageRNG(shape, [42], seed_resize_from_w=64, seed_resize_from_h=48)  # small (4, 6, 8)
    x = rng.first()[0]
    small, full = cpu_randn(42, (4, 6, 8)), cpu_randn(42, shape)
    dy, dx = (16 - 6) // 2, (12 - 8) // 2
    torch.testing.assert_close(x[:, dy : dy + 6, dx : dx + 8], small, rtol=0, atol=0)
    outside = torch.ones(shape, dtype=torch.bool)
    outside[:, dy : dy + 6, dx : dx + 8] = False
    torch.testing.assert_close(x[outside], full[outside], rtol=0, atol=0)
    # The image generator was used once for the full shape.
    torch.testing.assert_close(rng.next()[0], cpu_randn(42, shape, draws=2), rtol=0, atol=0)


def test_seed_resize_crops_a_larger_source() -> None:
    shape = (4, 8, 8)
    x = ImageRNG(shape, [3], seed_resize_from_w=88, seed_resize_from_h=64).first()[0]  # (4, 8, 11)
    small, full = cpu_randn(3, (4, 8, 11)), cpu_randn(3, shape)
    # dx = (8 - 11) // 2 = -2: 7 columns from small[2:9]; the last column keeps the full noise.
    torch.testing.assert_close(x[:, :, :7], small[:, :, 2:9], rtol=0, atol=0)
    torch.testing.assert_close(x[:, :, 7], full[:, :, 7], rtol=0, atol=0)


def test_paste_centred_offsets() -> None:
    full = torch.zeros(1, 5, 5)
    small = torch.arange(9.0).reshape(1, 3, 3)
    out = paste_centred(full, small)
    assert torch.equal(out[0, 1:4, 1:4], small[0])
    assert out.sum() == small.sum()
    assert full.sum() == 0  # the argument is not mutated
    big = torch.arange(49.0).reshape(1, 7, 7)
    assert torch.equal(paste_centred(full, big)[0], big[0, 1:6, 1:6])


def test_seed_resize_with_variation_slerps_the_small_noise() -> None:
    shape = (4, 8, 8)
    x = ImageRNG(
        shape, [3], subseeds=[9], subseed_strength=0.5, seed_resize_from_w=32, seed_resize_from_h=32
    ).first()[0]
    small = slerp(0.5, cpu_randn(3, (4, 4, 4)), cpu_randn(9, (4, 4, 4)))
    torch.testing.assert_close(x[:, 2:6, 2:6], small, rtol=0, atol=0)
    torch.testing.assert_close(x[:, 0], cpu_randn(3, shape)[:, 0], rtol=0, atol=0)


def test_seed_resize_needs_both_sides_and_same_size_is_plain() -> None:
    plain = ImageRNG(SHAPE, [4]).first()
    for w, h in [(0, 48), (48, 0), (-1, -1), (64, 64)]:
        rng = ImageRNG(SHAPE, [4], seed_resize_from_w=w, seed_resize_from_h=h)
        torch.testing.assert_close(rng.first(), plain, rtol=0, atol=0)


# --- devices ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_source_is_device_independent_and_nv_matches_cuda() -> None:
    cuda = torch.device("cuda")
    on_cpu = ImageRNG(SHAPE, [5, 6]).first()
    on_cuda = ImageRNG(SHAPE, [5, 6], device=cuda).first()
    assert on_cuda.device.type == "cuda"
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=0, atol=0)
    gpu = ImageRNG(SHAPE, [5, 6], source=RngSource.GPU, device=cuda).first()
    nv = ImageRNG(SHAPE, [5, 6], source=RngSource.NV, device=cuda).first()
    torch.testing.assert_close(nv, gpu, rtol=0, atol=1e-5)
