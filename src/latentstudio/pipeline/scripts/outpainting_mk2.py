"""A1111's "Outpainting mk2" (img2img): grow the picture side by side, each new border first filled with
noise shaped like the picture's spectrum and matched to its colours, then inpainted.

Arguments: ``[info, pixels, mask_blur, direction, noise_q, color_variation]``. The target canvas is as in
"Poor man's outpainting" (next multiples of 64, growth split between opposite sides); the sides run left,
right, up, down, each one pass of the whole batch: the canvas so far plus the new strip (rounded up to 64)
gets :func:`matched_noise` in the strip (mask white but for the old picture shrunk by ``mask_blur``), the
part nearest the new side — the request's width (height) at most — is inpainted (mask blur
``4·mask_blur``, masked content "original", latent mask inset by ``2·mask_blur``) and pasted back. Every
pass of a batch uses the request's seeds (A1111 keeps ``p.seed``; a random request seed draws one per
pass), and with several pictures a grid comes first; every picture carries the first pass's infotext.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from skimage.exposure import match_histograms

from latentstudio.core import FieldError
from latentstudio.pipeline.params import Inpaint, Policy, ResolvedParams
from latentstudio.pipeline.run import GenerationResult
from latentstudio.pipeline.scripts.base import (
    JOB_MODEL,
    Json,
    Script,
    ScriptArg,
    ScriptContext,
    ScriptEnv,
    check_number,
    combined_result,
    single,
)
from latentstudio.pipeline.scripts.grid import image_grid
from latentstudio.pipeline.scripts.poor_mans import SIDES, growth
from latentstudio.samplers.noise import resolve_seed

__all__ = ["OutpaintingMk2", "matched_noise"]

HELP = "Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, Denoising strength: 0.8"


def _fft(data: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2-D FFT of each channel of ``[H, W, C]``."""
    shifted = np.fft.fftshift(data, axes=(0, 1))
    return np.fft.ifftshift(np.fft.fft2(shifted, axes=(0, 1), norm="ortho"), axes=(0, 1))


def _ifft(data: np.ndarray) -> np.ndarray:
    shifted = np.fft.fftshift(data, axes=(0, 1))
    return np.fft.ifftshift(np.fft.ifft2(shifted, axes=(0, 1), norm="ortho"), axes=(0, 1))


def _falloff(rows: int, cols: int) -> np.ndarray:
    """``1 / ((u² + 1)(v² + 1))`` over centred coordinates in [-1, 1) scaled by the aspect ratio."""
    short = min(rows, cols)
    u = (np.arange(rows) / rows * 2.0 - 1.0) * (rows / short)
    v = (np.arange(cols) / cols * 2.0 - 1.0) * (cols / short)
    return 1.0 / np.outer(u**2 + 1.0, v**2 + 1.0)


def matched_noise(
    image: np.ndarray, mask: np.ndarray, noise_q: float = 1.0, color_variation: float = 0.05
) -> np.ndarray:
    """``image`` ``[H, W, 3]`` in [0, 1] with its masked part (``mask`` ``[H, W, 3]`` in [0, 1], white =
    new) replaced by noise whose spectrum follows the unmasked picture's (magnitude to the power
    ``noise_q``, its phase) and whose colours are histogram-matched to it: the g-diffuser fill A1111's
    Outpainting mk2 uses, deterministic (the noise generator is seeded with 0)."""
    grey = mask.sum(axis=2) / 3.0
    new, reference = grey > 1e-6, grey < 1e-3
    weight = np.repeat(grey[..., None], 3, axis=2)
    windowed = image * (1.0 - weight)
    with np.errstate(divide="ignore", invalid="ignore"):
        windowed = windowed / windowed.max() + image.mean() * mask
        spectrum = _fft(windowed)
        magnitude = np.abs(spectrum)
        # A1111 divides as it is: a frequency the picture lacks entirely (flat synthetic pictures) makes
        # its phase NaN and the whole fill NaN; such a frequency gets no phase here instead
        phase = np.divide(spectrum, magnitude, out=np.zeros_like(spectrum), where=magnitude > 0)
        rng = np.random.default_rng(0)
        noise = rng.random(image.shape)
        noise_grey = noise.sum(axis=2) / 3.0
        noise = noise * color_variation + ((1.0 - color_variation) * noise_grey)[..., None]
        noise = np.real(_ifft(_fft(noise) * _falloff(*image.shape[:2])[..., None]))
        shaped = np.real(_ifft(np.abs(_fft(noise)) ** 2 * magnitude**noise_q * phase))
    shaped = shaped - shaped.min()
    shaped = shaped / shaped.max()
    shaped[new, :] = match_histograms(shaped[new, :], image[reference, :], channel_axis=1)
    out: np.ndarray = np.clip(image * (1.0 - mask) + shaped * mask, 0.0, 1.0)
    return out


@dataclass(frozen=True)
class _Pass:
    """One side's pass: the grown canvas size, where the old picture sits, the inpainted crop, the
    masks."""

    canvas: tuple[int, int]
    offset: tuple[int, int]
    crop: tuple[int, int, int, int]
    mask: Image.Image  # full canvas, white = new
    latent_mask: Image.Image  # the crop's size


def _plan(size: tuple[int, int], grow: int, side: str, blur: int, tile: tuple[int, int]) -> _Pass:
    """A1111's ``expand`` for one picture of ``size`` growing by ``grow`` on ``side``."""
    horizontal = side in ("left", "right")
    width = size[0] + (grow if horizontal else 0)
    height = size[1] + (0 if horizontal else grow)
    canvas = (math.ceil(width / 64) * 64, math.ceil(height / 64) * 64)
    offset = (grow if side == "left" else 0, grow if side == "up" else 0)
    mask = Image.new("RGB", canvas, "white")
    ImageDraw.Draw(mask).rectangle((
        grow + blur if side == "left" else 0, grow + blur if side == "up" else 0,
        canvas[0] - grow - blur if side == "right" else width,
        canvas[1] - grow - blur if side == "down" else height,
    ), fill="black")  # fmt: skip
    crop_w = min(tile[0], width) if horizontal else canvas[0]
    crop_h = canvas[1] if horizontal else min(tile[1], height)
    crop = (0 if side == "left" else canvas[0] - crop_w, 0 if side == "up" else canvas[1] - crop_h,
            crop_w if side == "left" else canvas[0], crop_h if side == "up" else canvas[1])  # fmt: skip
    inner_w = crop[2] - crop[0]
    latent = Image.new("RGB", (crop_w, crop_h), "white")
    ImageDraw.Draw(latent).rectangle((  # A1111 measures from the cropped mask and the uncropped size
        grow + blur * 2 if side == "left" else 0, grow + blur * 2 if side == "up" else 0,
        inner_w - grow - blur * 2 if side == "right" else width,
        (crop[3] - crop[1]) - grow - blur * 2 if side == "down" else height,
    ), fill="black")  # fmt: skip
    return _Pass(canvas, offset, crop, mask, latent)


def _growth(image: Image.Image, pixels: int, direction: list[str]) -> list[tuple[str, int]]:
    """The sides to grow, in A1111's order, with their growth (the canvas rounded up to 64s)."""
    sides = growth(image.size, pixels, direction)
    return [(side, grow) for side, grow in zip(SIDES, sides, strict=True) if grow > 0]


class OutpaintingMk2(Script):
    title = "Outpainting mk2"
    txt2img = False
    args = (
        ScriptArg("", HELP),
        ScriptArg("Pixels to expand", 128, 8, 256, 8),
        ScriptArg("Mask blur", 8, 0, 64, 1),
        ScriptArg("Outpainting direction", list(SIDES), choices=SIDES),
        ScriptArg("Fall-off exponent (lower=higher detail)", 1.0, 0.0, 4.0, 0.01),
        ScriptArg("Color variation", 0.05, 0.0, 1.0, 0.01),
    )

    def check(self, values: list[Json], params: ResolvedParams, policy: Policy, env: ScriptEnv) -> list[Json]:
        pixels = int(check_number(values, 1, 1, 1024, integer=True))
        blur = int(check_number(values, 2, 0, 64, integer=True))
        direction = values[3]
        if not isinstance(direction, list) or not set(direction) <= set(SIDES):
            raise FieldError("script_args.3", f"a list of {', '.join(SIDES)}, got {direction!r}")
        noise_q, variation = check_number(values, 4, 0, 4), check_number(values, 5, 0, 1)
        assert params.init_image is not None
        size = params.init_image.size
        for side, grow in _growth(params.init_image, pixels, direction):
            try:
                plan = _plan(size, grow, side, blur, (params.width, params.height))
            except ValueError:  # a mask rectangle turned inside out (A1111's PIL raises the same)
                raise FieldError("script_args.1", f"growing the {side} side by {grow} px with mask blur "
                                 f"{blur} leaves no picture in the {params.width}x{params.height} pass; "
                                 "expand less or raise width/height") from None  # fmt: skip
            w, h = plan.crop[2] - plan.crop[0], plan.crop[3] - plan.crop[1]
            if w % 8 or h % 8 or max(plan.canvas) > policy.max_side * 4:
                raise FieldError("script_args.1", f"the {side} pass would inpaint {w}x{h} of a "
                                 f"{plan.canvas[0]}x{plan.canvas[1]} canvas; sides must be multiples of 8 "
                                 "(pick a width/height or picture size that makes them so)")  # fmt: skip
            size = (size[0] + grow, size[1]) if side in ("left", "right") else (size[0], size[1] + grow)
        return [values[0], pixels, blur, list(direction), noise_q, variation]

    def seeds(self, values: list[Json], params: ResolvedParams, random_seed: bool) -> tuple[int, ...]:
        """A random request seed: one per pass (A1111 draws it in every ``process_images``)."""
        if not random_seed:
            return ()
        assert params.init_image is not None
        passes = len(_growth(params.init_image, int(values[1]), list(values[3])))
        return tuple(resolve_seed(-1) for _ in range(passes * params.n_iter))

    def run(
        self, params: ResolvedParams, values: list[Json], seeds: tuple[int, ...], ctx: ScriptContext
    ) -> GenerationResult:
        pixels, blur, direction = int(values[1]), int(values[2]), list(values[3])
        noise_q, variation = float(values[4]), float(values[5])
        assert params.init_image is not None
        sides = _growth(params.init_image, pixels, direction)
        results: list[GenerationResult] = []
        pictures: list[Image.Image] = []
        count = params.n_iter * len(sides) * params.batch_size
        for n in range(params.n_iter):
            batch = [params.init_image] * params.batch_size
            for s, (side, grow) in enumerate(sides):
                seed = seeds[n * len(sides) + s] if seeds else params.seed
                grown = []
                for j, picture in enumerate(batch):
                    if ctx.stopped():
                        break
                    plan = _plan(picture.size, grow, side, blur, (params.width, params.height))
                    canvas = Image.new("RGB", plan.canvas)
                    canvas.paste(picture, plan.offset)
                    filled = matched_noise(
                        np.asarray(canvas) / 255.0, np.asarray(plan.mask) / 255.0, noise_q, variation
                    )
                    noised = Image.fromarray((filled * 255.0).clip(0, 255).astype(np.uint8), "RGB")
                    latent = plan.latent_mask.convert("L")
                    inpaint = Inpaint(plan.mask.crop(plan.crop).convert("L"), blur=blur * 4, fill=1,
                                      only_masked=False, latent_mask=latent)  # fmt: skip
                    w, h = plan.crop[2] - plan.crop[0], plan.crop[3] - plan.crop[1]
                    own = seed if params.subseed_strength > 0 else seed + j  # A1111's batch seeds
                    one = single(params, init_image=noised.crop(plan.crop), inpaint=inpaint, width=w,
                                 height=h, seed=own, subseed=params.subseed + j, batch_size=1,
                                 n_iter=1)  # fmt: skip
                    result = ctx.generate(one, len(results), count, JOB_MODEL)
                    results.append(result)
                    if result.images:
                        noised.paste(result.images[0], plan.crop[:2])
                    width = picture.width + (grow if side in ("left", "right") else 0)
                    height = picture.height + (0 if side in ("left", "right") else grow)
                    grown.append(noised.crop((0, 0, width, height)))
                batch = grown
            pictures += batch
            if ctx.stopped():
                break
        text = results[0].infotexts[0] if results and results[0].infotexts else ""
        images = (
            [image_grid(pictures, rows=round(math.sqrt(len(pictures)))), *pictures]
            if len(pictures) > 1
            else pictures
        )
        first, count = (seeds[0] if seeds else params.seed), len(images)
        return combined_result(params, results, images=images, infotexts=[text] * count,
                               seeds=[first] * count, subseeds=[params.subseed] * count)  # fmt: skip
