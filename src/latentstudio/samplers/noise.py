"""Seeds and initial/ancestral noise exactly as A1111 (``modules/rng.py``, ``modules/rng_philox.py``).

Reading of A1111 v1.10.1 ``ImageRNG`` that this module reproduces (reference/a1111-compat.md §5.4):

* ``__init__`` creates one generator per image, seeded with that image's seed.
* ``first()``, per image ``i`` (noise shape ``(C, H, W)`` in latent units, or ``(C, h//8, w//8)`` with
  "Seed resize from" w×h in pixels when both are > 0):

  1. with subseeds and ``subseed_strength != 0``: ``subnoise = randn(subseed_i, noise_shape)`` from a
     *fresh* generator seeded with the subseed (``subseed_i = 0`` past the end of ``subseeds``);
  2. ``noise``: without resize, the image's own generator draws ``(C, H, W)`` (its first draw); with
     resize, a *fresh* generator seeded with the image seed draws the small shape;
  3. ``noise = slerp(subseed_strength, noise, subnoise)`` when there is a subnoise;
  4. with resize, the image's own generator draws the full shape (so it starts with the seed's first values
     too) and the small noise is pasted centred into it, cropped where it is larger.

  Every generator is thus advanced by exactly one full-shape draw, whatever the options. The draw order
  (subnoise before noise) does not change any value, because each fresh generator is seeded on the spot.
* ENSD: after ``first()``, when ``eta_noise_seed_delta != 0``, every image generator is re-created with
  ``seed + ENSD``; only later draws change.
* ``next()``: one full-shape draw per image generator, stacked. A1111's ``next()`` returns ``first()`` on its
  first call; so does ours. Unlike A1111, calling ``first()`` directly also counts as that first call (A1111
  never mixes the two; we refuse a second ``first()`` instead of silently drawing again).

Sources: "CPU" draws with a CPU ``torch.Generator`` and moves the result (identical on every device); "GPU"
draws on the device with a device generator (on the CPU or on mps this is the CPU generator); "NV" is
:class:`PhiloxGenerator`, CUDA's ``torch.randn`` reproduced in numpy. All noise is float32.
"""

from __future__ import annotations

import random
import secrets
import warnings
from collections.abc import Sequence
from enum import StrEnum

import numpy as np
import numpy.typing as npt
import torch

SEED_RANGE = 4294967294  # A1111: random.randrange(4294967294)
LATENT_FACTOR = 8  # pixels per latent cell

_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_MASK32 = 0xFFFFFFFF
# A1111 keeps these as float32 arrays; uint32 × float32 promotes to float64 in numpy, so the arithmetic runs
# in float64 on the float32-rounded constants. Reproduce that exactly.
_TWO_POW32_INV = float(np.float32(2.3283064e-10))
_TWO_POW32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))


class RngSource(StrEnum):
    """A1111 ``randn_source`` setting (infotext key "RNG")."""

    GPU = "GPU"
    CPU = "CPU"
    NV = "NV"


def resolve_seed(seed: int | None, rng: random.Random | None = None) -> int:
    """A1111 ``get_fixed_seed``: -1 or None becomes a random seed in [0, 4294967294); others pass through.

    ``rng`` makes the draw reproducible in tests; by default the OS entropy source is used (no global state).
    """
    if seed is not None and seed != -1:
        return seed
    return rng.randrange(SEED_RANGE) if rng is not None else secrets.randbelow(SEED_RANGE)


def all_seeds(seed: int, subseed: int, subseed_strength: float, n: int) -> tuple[list[int], list[int]]:
    """Per-image seeds and subseeds for ``n`` images (batch size × iterations), as A1111.

    Seeds increment only when there is no variation (``subseed_strength == 0``); subseeds always increment.
    """
    seeds = [seed + i if subseed_strength == 0 else seed for i in range(n)]
    return seeds, [subseed + i for i in range(n)]


def latent_shape(width: int, height: int, channels: int = 4) -> tuple[int, int, int]:
    """Per-image latent noise shape ``(C, H//8, W//8)`` for an image of ``width`` × ``height`` pixels."""
    return channels, height // LATENT_FACTOR, width // LATENT_FACTOR


def _philox_round(c: list[npt.NDArray[np.uint64]], k0: int, k1: int) -> list[npt.NDArray[np.uint64]]:
    """One Philox4x32 round on four counter words (uint32 values held in uint64 arrays)."""
    p0 = c[0] * np.uint64(_PHILOX_M[0])
    p1 = c[2] * np.uint64(_PHILOX_M[1])
    k0_, k1_, m = np.uint64(k0), np.uint64(k1), np.uint64(_MASK32)
    return [(p1 >> np.uint64(32)) ^ c[1] ^ k0_, p1 & m, (p0 >> np.uint64(32)) ^ c[3] ^ k1_, p0 & m]


class PhiloxGenerator:
    """Philox4x32-10 with Box–Muller on the CPU: the values of ``torch.randn`` on a CUDA device (A1111 "NV").

    Each ``randn`` call uses counter = (offset, 0, i, 0) for element i, then increments the offset; the key is
    the 64-bit seed split into two 32-bit words. Only the first value of each Box–Muller pair is used.
    """

    def __init__(self, seed: int) -> None:
        if not 0 <= seed < 1 << 64:
            raise ValueError(f"seed must be in [0, 2**64) for the NV generator, got {seed}")
        self.seed = seed
        self.offset = 0

    def randn(self, shape: Sequence[int]) -> npt.NDArray[np.float32]:
        """Standard normal float32 array of ``shape``; advances the offset by one."""
        n = int(np.prod(shape, dtype=np.int64))
        c = [
            np.full(n, self.offset & _MASK32, dtype=np.uint64),
            np.zeros(n, dtype=np.uint64),
            np.arange(n, dtype=np.uint64) & np.uint64(_MASK32),
            np.zeros(n, dtype=np.uint64),
        ]
        self.offset += 1
        k0, k1 = self.seed & _MASK32, self.seed >> 32
        for _ in range(9):
            c = _philox_round(c, k0, k1)
            k0, k1 = (k0 + _PHILOX_W[0]) & _MASK32, (k1 + _PHILOX_W[1]) & _MASK32
        c = _philox_round(c, k0, k1)
        u = c[0].astype(np.float64) * _TWO_POW32_INV + _TWO_POW32_INV / 2
        v = c[1].astype(np.float64) * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
        out = np.sqrt(-2.0 * np.log(u)) * np.sin(v)
        return out.astype(np.float32).reshape(tuple(shape))


Generator = torch.Generator | PhiloxGenerator


def create_generator(seed: int, source: RngSource | str, device: torch.device) -> Generator:
    """A generator seeded with ``seed`` for ``source`` (A1111 ``create_generator``)."""
    source = RngSource(source)
    if source is RngSource.NV:
        return PhiloxGenerator(seed)
    on_device = source is RngSource.GPU and device.type != "mps"
    return torch.Generator(device if on_device else "cpu").manual_seed(seed)


def draw(generator: Generator, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """The generator's next standard normal float32 tensor of ``shape``, on ``device``."""
    if isinstance(generator, PhiloxGenerator):
        return torch.asarray(generator.randn(shape), device=device)
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111 ``slerp`` of two noises ``(C, H, W)``, with its quirks kept.

    Norms and dot products run along dim 1 (H), giving a ``(C, W)`` angle field. When the mean dot exceeds
    0.9995 it falls back to ``low·val + high·(1−val)``, weights inverted relative to the slerp branch
    (which gives ``low`` at val=0 and ``high`` at val=1).
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    w_low = (torch.sin((1.0 - val) * omega) / so).unsqueeze(1)
    w_high = (torch.sin(val * omega) / so).unsqueeze(1)
    return w_low * low + w_high * high


def paste_centred(full: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """``full`` ``(C, H, W)`` with ``small`` ``(C, h, w)`` pasted centred, cropped where larger (A1111).

    Offsets are ``(H−h)//2`` and ``(W−w)//2`` (floor division, so an odd negative difference crops one more
    cell on the leading side and leaves the last row/column of ``full`` untouched). Returns a new tensor.
    """
    out = full.clone()
    dx = (full.shape[2] - small.shape[2]) // 2
    dy = (full.shape[1] - small.shape[1]) // 2
    w = small.shape[2] if dx >= 0 else small.shape[2] + 2 * dx
    h = small.shape[1] if dy >= 0 else small.shape[1] + 2 * dy
    tx, ty, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
    out[:, ty : ty + h, tx : tx + w] = small[:, sy : sy + h, sx : sx + w]
    return out


class ImageRNG:
    """Per-image noise for one batch (A1111 ``ImageRNG``): each image has its own generator and seed.

    ``shape`` is the per-image latent shape ``(C, H, W)``; ``seed_resize_from_h``/``_w`` are in pixels
    (disabled unless both are > 0); ``source`` is a :class:`RngSource` or its value (anything else raises
    ValueError). Draws are ``[B, C, H, W]`` float32 on ``device``. Owned by one job.
    """

    def __init__(
        self,
        shape: Sequence[int],
        seeds: Sequence[int],
        *,
        subseeds: Sequence[int] | None = None,
        subseed_strength: float = 0.0,
        seed_resize_from_h: int = 0,
        seed_resize_from_w: int = 0,
        source: RngSource | str = RngSource.CPU,
        device: torch.device | str = "cpu",
        eta_noise_seed_delta: int = 0,
    ) -> None:
        if not seeds:
            raise ValueError("seeds must not be empty")
        if len(shape) != 3:
            raise ValueError(f"shape must be the per-image latent shape (C, H, W), got {tuple(shape)}")
        self.shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self.seeds = tuple(seeds)
        self.subseeds = tuple(subseeds) if subseeds is not None else None
        self.subseed_strength = subseed_strength
        self.seed_resize_from_h = seed_resize_from_h
        self.seed_resize_from_w = seed_resize_from_w
        self.source = RngSource(source)
        self.device = torch.device(device)
        self.eta_noise_seed_delta = eta_noise_seed_delta
        self._generators = [create_generator(s, self.source, self.device) for s in self.seeds]
        self._is_first = True

    def _fresh(self, seed: int, shape: Sequence[int]) -> torch.Tensor:
        """The first draw of a new generator seeded with ``seed`` (A1111 ``randn(seed, shape)``)."""
        return draw(create_generator(seed, self.source, self.device), shape, self.device)

    def _first_one(self, i: int, noise_shape: tuple[int, int, int]) -> torch.Tensor:
        """Initial noise ``(C, H, W)`` of image ``i`` (see the module docstring for the steps)."""
        seed, generator = self.seeds[i], self._generators[i]
        subnoise = None
        if self.subseeds is not None and self.subseed_strength != 0:
            subseed = self.subseeds[i] if i < len(self.subseeds) else 0
            subnoise = self._fresh(subseed, noise_shape)
        resized = noise_shape != self.shape
        noise = self._fresh(seed, noise_shape) if resized else draw(generator, self.shape, self.device)
        if subnoise is not None:
            noise = slerp(self.subseed_strength, noise, subnoise)
        if resized:
            noise = paste_centred(draw(generator, self.shape, self.device), noise)
        return noise

    def first(self) -> torch.Tensor:
        """Initial noise ``[B, C, H, W]``: variation, seed resize, then ENSD for later draws."""
        if not self._is_first:
            raise RuntimeError("ImageRNG.first() was already drawn; use next() for later noise")
        self._is_first = False
        h, w = self.seed_resize_from_h, self.seed_resize_from_w
        noise_shape = (
            self.shape if w <= 0 or h <= 0 else (self.shape[0], h // LATENT_FACTOR, w // LATENT_FACTOR)
        )
        xs = [self._first_one(i, noise_shape) for i in range(len(self.seeds))]
        if self.eta_noise_seed_delta:
            ensd = self.eta_noise_seed_delta
            self._generators = [create_generator(s + ensd, self.source, self.device) for s in self.seeds]
        return torch.stack(xs)

    def next(self) -> torch.Tensor:
        """The next noise ``[B, C, H, W]``: one draw per image generator (``first()`` on the first call)."""
        if self._is_first:
            return self.first()
        return torch.stack([draw(g, self.shape, self.device) for g in self._generators])

    def noise_sampler(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        """k-diffusion ``noise_sampler(sigma, sigma_next)``: the next draw ``[B, C, H, W]`` (σ are unused)."""
        return self.next()


class BrownianNoiseSampler:
    """Noise for the SDE samplers (DPM++ SDE, 2M SDE, 3M SDE) as increments of one Brownian path per image
    (k-diffusion's ``BrownianTreeNoiseSampler`` as A1111 seeds it: one ``torchsde.BrownianTree`` per image,
    entropy = the image's seed, over ``[σ_min, σ_max]``), so a batch equals single runs.

    ``__call__(sigma, sigma_next)`` returns ``(W(σ_next) − W(σ)) / √|σ_next − σ|``, shape ``[B, C, H, W]``.
    The trees live on the CPU, so the noise does not depend on the device.
    """

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: Sequence[int]) -> None:
        import torchsde  # the Brownian tree used by k-diffusion and A1111

        # σ from exp(−t) lands a float ulp below σ_min; torchsde warns and extrapolates, as in A1111.
        warnings.filterwarnings("ignore", message="Should have t[ab]>=t0", module="torchsde")
        if len(seeds) != x.shape[0]:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for a batch of {x.shape[0]}")
        positive = sigmas[sigmas > 0]
        t0, t1 = positive.min().float().cpu(), sigmas.max().float().cpu()
        w0 = torch.zeros_like(x[0], dtype=torch.float32, device="cpu")
        self._trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(seed)) for seed in seeds]
        self._device, self._dtype = x.device, x.dtype

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        """Normalised Brownian increment between two noise levels, ``[B, C, H, W]``."""
        a, b = torch.as_tensor(sigma).float().cpu(), torch.as_tensor(sigma_next).float().cpu()
        low, high, sign = (a, b, 1.0) if a <= b else (b, a, -1.0)
        w = torch.stack([tree(low, high) for tree in self._trees]) * sign
        return (w / (b - a).abs().sqrt()).to(self._device, self._dtype)
