"""GenerationParams: one frozen description of a txt2img / img2img request, and its one builder.

Every door (the A1111 API, the native API, the CLI, the UI through the A1111 converter) fills a
:class:`GenerationParams` in its own vocabulary and calls :meth:`GenerationParams.resolved` once, with the
server's :class:`Policy`: that validates every field (a :class:`FieldError` naming it and the allowed values,
before any model work), resolves sampler and schedule names, both seeds and the sampler-specific options,
and flattens a transparent init image. The result, a :class:`ResolvedParams`, is what the job service, the
worker and :func:`~latentstudio.pipeline.run.run` take as it is; they never validate again.

Defaults are A1111's UI defaults (DPM++ 2M, Automatic schedule, 20 steps, CFG 7, 512×512).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum, IntEnum

from PIL import Image

from latentstudio.config import MAX_IMAGES, MAX_SIDE, MAX_STEPS
from latentstudio.control.units import MAX_UNITS, ControlUnit
from latentstudio.core import FieldError
from latentstudio.pipeline.images import flatten
from latentstudio.prompts.errors import PromptError
from latentstudio.prompts.parser import check_prompt
from latentstudio.samplers import (
    SAMPLER_INFO,
    SCHEDULERS,
    resolve_sampler,
    resolve_scheduler,
    sampler_and_scheduler,
)
from latentstudio.samplers.noise import RngSource, resolve_seed

EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")  # prompts.conditioning.Emphasis values


@dataclass(frozen=True)
class Policy:
    """What the server decides for every request it resolves: its size limit (``Settings.max_side``) and
    the A1111 options that fill fields a request leaves out (``eta_ddim``/``eta_ancestral``: the eta of
    timestep / other samplers when ``eta`` is None, None keeping the sampler's own; ``background``:
    ``img2img_background_color``, what a transparent init image is flattened onto)."""

    max_side: int = MAX_SIDE
    eta_ddim: float | None = None
    eta_ancestral: float | None = None
    background: str = "#ffffff"


class ResizeMode(IntEnum):
    """img2img resize modes, numbered as A1111's ``resize_mode``."""

    JUST_RESIZE = 0
    CROP_AND_RESIZE = 1
    RESIZE_AND_FILL = 2
    LATENT_UPSCALE = 3


class TilingMode(Enum):
    """A1111's ``tiling`` (seamless pictures: circular padding in the convolutions, see
    :mod:`~latentstudio.pipeline.tiling`) and the axes it wraps (our ``tiling_axes`` option): ``NONE``
    off, ``BOTH`` A1111's tiling, ``X`` left/right edges only, ``Y`` top/bottom edges only."""

    NONE = "none"
    BOTH = "both"
    X = "x"
    Y = "y"


@dataclass(frozen=True)
class Hires:
    """The txt2img hires fix (A1111 ``enable_hr`` and ``hr_*``; the native API's ``hires``, field for field):
    the first pass's result upscaled to ``scale`` × its size (or to ``resize_x``×``resize_y``), then a
    second pass at ``denoising_strength``. None / 0 / "" fields mean "as the first pass"."""

    scale: float = 2.0
    resize_x: int = 0
    resize_y: int = 0
    upscaler: str = "Latent"  # a latent mode (pipeline.hires.LATENT_UPSCALE_MODES) or a pixel upscaler
    steps: int = 0
    sampler: str | None = None
    scheduler: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    denoising_strength: float = 0.7  # A1111's UI default for the hires pass
    checkpoint: str | None = None  # another checkpoint of the same family for the second pass
    firstpass_image: Image.Image | None = None  # A1111 firstpass_image: stands for the first pass's result


@dataclass(frozen=True)
class Inpaint:
    """img2img inpainting (A1111's mask fields): repaint where ``mask`` is white (or, for an RGBA mask,
    where it is opaque), blurred by ``blur`` pixels horizontally and ``blur_y`` vertically (A1111
    ``mask_blur_x``/``_y``; None: as ``blur``); ``fill`` is A1111 ``inpainting_fill`` (0 fill,
    1 original, 2 latent noise, 3 latent nothing); ``only_masked`` crops to the mask plus ``padding``
    pixels (``inpaint_full_res``); ``invert`` repaints the unmasked area. ``round_mask`` (A1111
    ``mask_round``) thresholds an RGBA mask's alpha at > 128 and rounds the latent (and inpainting-model)
    mask to 0/1; off, a soft mask blends partially. ``latent_mask`` (A1111 ``latent_mask``) replaces the
    processed mask, as it is, for the masked-content fill and the latent blend."""

    mask: Image.Image
    blur: int = 4
    fill: int = 1  # A1111's UI default "original"
    only_masked: bool = False  # the A1111 API's default is True, its UI's False
    padding: int = 32
    invert: bool = False
    blur_y: int | None = None
    round_mask: bool = True
    latent_mask: Image.Image | None = None

    @property
    def blur_xy(self) -> tuple[int, int]:
        """``(horizontal, vertical)`` Gaussian sigmas of the mask blur."""
        return self.blur, self.blur if self.blur_y is None else self.blur_y


@dataclass(frozen=True)
class ScriptCall:
    """An A1111 script the job runs instead of one generation (``script_name`` + ``script_args``):
    ``name`` its title, ``args`` its checked arguments as canonical JSON (a list, defaults filled in, made
    by :func:`latentstudio.pipeline.scripts.prepare`), ``seeds`` any seeds it drew when the job was made."""

    name: str
    args: str = "[]"
    seeds: tuple[int, ...] = ()


@dataclass(frozen=True)
class GenerationParams:
    """Everything that determines the images of one request (with ``seed`` resolved by :meth:`resolved`)."""

    prompt: str
    negative_prompt: str = ""
    sampler: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    width: int = 512
    height: int = 512
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int = 1
    eta: float | None = None  # ancestral / SDE eta (A1111 eta_ancestral 1.0; eta_ddim 0.0 for DDIM)
    s_noise: float = 1.0
    # Karras churn (A1111 s_churn/s_tmin/s_tmax, Euler, Heun and DPM2 only); s_tmax 0 means no upper bound
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0
    s_min_uncond: float = 0.0  # NGMS: skip the negative prompt's pass below this σ (A1111 s_min_uncond)
    s_min_uncond_all: bool = False  # NGMS on every step, not every other one (A1111 s_min_uncond_all)
    initial_noise_multiplier: float = 1.0  # img2img: scales the start noise (A1111 "Noise multiplier")
    extra_noise: float = 0.0  # A1111 img2img_extra_noise: more start noise for img2img and hires passes
    sigma_min: float = 0.0  # A1111 schedule overrides sigma_min/sigma_max/rho; 0 keeps the model's/default
    sigma_max: float = 0.0
    rho: float = 0.0
    sgm_noise_multiplier: bool = False  # A1111: txt2img start noise × √(1 + σ0²) instead of σ0
    img2img_fix_steps: bool = False  # A1111: img2img runs exactly `steps` steps at any denoising strength
    rng: RngSource = RngSource.CPU
    eta_noise_seed_delta: int = 0
    init_image: Image.Image | None = None
    denoising_strength: float = 0.75
    resize_mode: ResizeMode = ResizeMode.JUST_RESIZE
    inpaint: Inpaint | None = None  # img2img only
    inpainting_mask_weight: float = 1.0  # inpainting checkpoints: how much of the masked image they see
    color_correction: bool = False  # A1111 img2img_color_correction: outputs keep the init image's colours
    hires: Hires | None = None  # txt2img only
    emphasis: str = "Original"  # A1111 emphasis option: Original, No norm, Ignore, None
    old_prompt_editing: bool = False  # A1111 use_old_scheduling ("Old prompt editing timelines")
    pad_conds: bool = False  # A1111 pad_cond_uncond: pad prompt/negative to one length with empty chunks
    pad_conds_v0: bool = False  # A1111 pad_cond_uncond_v0: pad by repeating the last vector (pre-1.6)
    control: tuple[ControlUnit, ...] = ()  # the enabled ControlNet / T2I-Adapter units, in order
    tiling: TilingMode = TilingMode.NONE  # A1111 tiling (+ our tiling_axes): circular-padded convolutions
    script: ScriptCall | None = None  # an A1111 script over several generations (pipeline.scripts)

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None

    def resolved(self, policy: Policy = Policy()) -> ResolvedParams:
        """The one builder: validated under ``policy``, names resolved, images flattened, seeds fixed.

        ``sampler`` may name its schedule ("DPM++ 2M Karras" wins over ``scheduler``, A1111's rule) and the
        sampler's own schedule becomes "Automatic"; ``hires.sampler``/``.scheduler`` likewise. ``eta`` and
        ``s_noise`` are kept only for samplers that take them (A1111 ignores them elsewhere, infotext too),
        the churn fields likewise (A1111's ``sampler_extra_params``: either pass's sampler), and the start
        noise options only where they act; a missing ``eta`` is the policy's. -1 seeds become recorded
        random ones. Raises :class:`FieldError`.
        """
        sampler, scheduler = sampler_and_scheduler(self.sampler, self.scheduler)
        info = SAMPLER_INFO[sampler]
        eta = self.eta if self.eta is not None else policy.eta_ddim if info.timestep else policy.eta_ancestral
        hires = self.hires
        if hires is not None:
            hr_sampler, hr_scheduler = _hires_names(hires.sampler, hires.scheduler)
            hires = dataclasses.replace(hires, sampler=hr_sampler, scheduler=hr_scheduler)
        init = None if self.init_image is None else flatten(self.init_image, policy.background)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(sampler=sampler, scheduler=scheduler, hires=hires)
        fields.update(eta=eta if info.takes("eta") else None, init_image=init)
        fields.update(_acting_noise_options(self, (sampler, hires.sampler if hires else None), init))
        resolved = ResolvedParams(**fields)
        resolved._validate(policy.max_side)
        return dataclasses.replace(resolved, seed=resolve_seed(self.seed), subseed=resolve_seed(self.subseed))

    def _validate(self, max_side: int) -> None:
        """Raise :class:`FieldError` for the first invalid field (names already resolved)."""
        _check_size("width", self.width, max_side)
        _check_size("height", self.height, max_side)
        _check_int("steps", self.steps, 1, MAX_STEPS)
        _check_int("batch_size", self.batch_size, 1, MAX_IMAGES)
        _check_int("n_iter", self.n_iter, 1, MAX_IMAGES)
        _check_int("clip_skip", self.clip_skip, 1, 12)
        _check_float("cfg_scale", self.cfg_scale, 0.0, 100.0)
        _check_float("subseed_strength", self.subseed_strength, 0.0, 1.0)
        _check_float("denoising_strength", self.denoising_strength, 0.0, 1.0)
        _check_float("s_noise", self.s_noise, 0.0, 10.0)
        _validate_noise_options(self)
        if self.eta is not None:
            _check_float("eta", self.eta, 0.0, 10.0)
        for field in ("seed", "subseed"):
            _check_int(field, getattr(self, field), -1, 2**32 - 1)
        for field in ("seed_resize_from_w", "seed_resize_from_h"):
            _check_int(field, getattr(self, field), 0, MAX_SIDE)
        for field in ("prompt", "negative_prompt"):
            text = getattr(self, field)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:  # JSON "\ud800" decodes to a lone surrogate: no PNG can hold it
                raise FieldError(field, f"a lone surrogate at position {e.start} is not Unicode") from None
            try:
                check_prompt(text, self.steps)
            except PromptError as e:
                raise FieldError(field, str(e)) from None
        _check_float("inpainting_mask_weight", self.inpainting_mask_weight, 0.0, 1.0)
        if self.hires is not None:
            _validate_hires(self, self.hires, max_side)
        if self.inpaint is not None:
            _validate_inpaint(self, self.inpaint)
        if self.color_correction and not self.is_img2img:
            raise FieldError(
                "color_correction", "colour correction is an img2img option (it needs an init image)"
            )
        if self.emphasis not in EMPHASIS_MODES:
            raise FieldError("emphasis", f"unknown {self.emphasis!r}; allowed: {', '.join(EMPHASIS_MODES)}")
        _validate_control(self)
        if not isinstance(self.tiling, TilingMode):
            allowed = ", ".join(m.value for m in TilingMode)
            raise FieldError("tiling", f"must be a TilingMode ({allowed}), got {self.tiling!r}")
        if self.scheduler not in SCHEDULERS:
            raise FieldError("scheduler", f"unknown {self.scheduler!r}; allowed: {', '.join(SCHEDULERS)}")


@dataclass(frozen=True)
class ResolvedParams(GenerationParams):
    """A :class:`GenerationParams` made by :meth:`GenerationParams.resolved` (or read back from the job
    store, which only holds those): valid, names resolved, seeds fixed, the init image flattened to RGB.
    The job service, the worker and the pipeline take it as it is. Change one with ``dataclasses.replace``
    only to call :meth:`~GenerationParams.resolved` on the result."""


def target_size(width: int, height: int, hires: Hires) -> tuple[int, int, int, int]:
    """The hires fix's upscaled size from the first pass's, A1111 ``calculate_target_resolution``:
    ``(to_x, to_y, truncate_x, truncate_y)``. Here, not in :mod:`~latentstudio.pipeline.hires`, because
    :meth:`GenerationParams.resolved` bounds it and hires imports this module."""
    rx, ry = hires.resize_x, hires.resize_y
    if rx == 0 and ry == 0:
        return int(width * hires.scale), int(height * hires.scale), 0, 0
    if ry == 0:
        return rx, rx * height // width, 0, 0
    if rx == 0:
        return ry * width // height, ry, 0, 0
    if width / height < rx / ry:
        to_x, to_y = rx, rx * height // width
    else:
        to_x, to_y = ry * width // height, ry
    return to_x, to_y, (to_x - rx) // 8, (to_y - ry) // 8


_NOISE_OPTION_LIMITS = {  # upper bounds of the sampler fields (A1111's sliders stop lower; its API does not)
    "s_churn": 100.0, "s_tmin": 1000.0, "s_tmax": 1000.0, "s_min_uncond": 1000.0,
    "initial_noise_multiplier": 10.0, "extra_noise": 10.0, "sigma_min": 1000.0, "sigma_max": 1000.0,
    "rho": 100.0,
}  # fmt: skip


def _validate_noise_options(params: GenerationParams) -> None:
    """The churn, NGMS, start-noise and schedule-override fields: finite, in range, σ_min ≤ σ_max."""
    for field, high in _NOISE_OPTION_LIMITS.items():
        _check_float(field, getattr(params, field), 0.0, high)
    if 0 < params.sigma_max < params.sigma_min:
        raise FieldError("sigma_min", f"must be at most sigma_max ({params.sigma_max})")


def _acting_noise_options(
    params: GenerationParams, samplers: tuple[str, str | None], init: Image.Image | None
) -> dict[str, object]:
    """Churn and ``s_noise`` at their defaults unless a pass's sampler takes them (A1111's
    ``sampler_extra_params``); the start-noise options at theirs where they cannot act."""
    taken = {name for s in samplers if s is not None for name in SAMPLER_INFO[s].extra_params}
    defaults = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0}
    out: dict[str, object] = {k: getattr(params, k) if k in taken else v for k, v in defaults.items()}
    if init is None:  # initial_noise_multiplier is img2img's, extra noise needs an img2img or hires pass
        out["initial_noise_multiplier"] = 1.0
        out["extra_noise"] = params.extra_noise if params.hires is not None else 0.0
    if init is not None or SAMPLER_INFO[samplers[0]].timestep:  # A1111: k-diffusion txt2img only
        out["sgm_noise_multiplier"] = False
    return out


def _validate_inpaint(params: GenerationParams, inpaint: Inpaint) -> None:
    """The inpainting fields: only with an init image."""
    if params.init_image is None:
        raise FieldError("inpaint.mask", "a mask needs an init image (img2img)")
    _check_int("inpaint.blur", inpaint.blur, 0, 64)
    if inpaint.blur_y is not None:
        _check_int("inpaint.blur_y", inpaint.blur_y, 0, 64)
    _check_int("inpaint.fill", inpaint.fill, 0, 3)
    _check_int("inpaint.padding", inpaint.padding, 0, MAX_SIDE)
    if inpaint.latent_mask is not None and inpaint.fill != 1:  # A1111 fills the image under it as it is
        whole_latent = params.resize_mode is ResizeMode.LATENT_UPSCALE and not inpaint.only_masked
        w, h = params.init_image.size if whole_latent else (params.width, params.height)
        if inpaint.latent_mask.size != (w, h):
            got = f"{inpaint.latent_mask.width}x{inpaint.latent_mask.height}"
            raise FieldError("inpaint.latent_mask", f"must be {w}x{h} with a masked-content fill, got {got}")


def _validate_control(params: GenerationParams) -> None:
    """The ControlNet units: at most :data:`MAX_UNITS`; each valid; an image each, or the init image."""
    if len(params.control) > MAX_UNITS:
        raise FieldError("control", f"at most {MAX_UNITS} ControlNet units, got {len(params.control)}")
    for i, unit in enumerate(params.control):
        unit.validate(i)
        if unit.image is None and params.init_image is None:
            raise FieldError(f"control.{i}.image", "controlnet is enabled but no input image is given")
        if unit.mask is not None and (unit.image is None or unit.mask.size != unit.image.size):
            raise FieldError(f"control.{i}.mask", "a mask needs the unit's image, of the same size")


def _validate_hires(params: GenerationParams, hires: Hires, max_side: int) -> None:
    """The hires-fix fields: only for txt2img; the target size obeys the same limits as the base size."""
    if params.is_img2img:
        raise FieldError("hires", "hires fix is a txt2img option; img2img has no second pass")
    _check_float("hires.scale", hires.scale, 1.0, 8.0)
    _check_int("hires.resize_x", hires.resize_x, 0, MAX_SIDE)
    _check_int("hires.resize_y", hires.resize_y, 0, MAX_SIDE)
    _check_int("hires.steps", hires.steps, 0, MAX_STEPS)
    _check_float("hires.denoising_strength", hires.denoising_strength, 0.0, 1.0)
    if hires.checkpoint is not None and not 0 < len(hires.checkpoint.strip()) <= 1000:
        raise FieldError(
            "hires.checkpoint", "a checkpoint name (at most 1000 characters), or None for the same"
        )
    for field in ("prompt", "negative_prompt"):
        try:
            check_prompt(getattr(hires, field), hires.steps or params.steps)
        except PromptError as e:
            raise FieldError(f"hires.{field}", str(e)) from None
    to_x, to_y, _, _ = target_size(params.width, params.height, hires)
    if not (64 <= to_x <= max_side and 64 <= to_y <= max_side):
        raise FieldError("hires.scale", f"the hires target {to_x}x{to_y} must be within [64, {max_side}]")


def _hires_names(sampler: str | None, scheduler: str | None) -> tuple[str | None, str | None]:
    """The hires pass's own sampler and schedule (None: the first pass's), by A1111 name or alias; a
    schedule in the sampler's name wins."""
    if sampler is not None:
        try:
            sampler, named = resolve_sampler(sampler)
        except ValueError as e:
            raise FieldError("hires.sampler", str(e)) from None
        scheduler = named or scheduler
    try:
        return sampler, None if scheduler is None else resolve_scheduler(scheduler)
    except ValueError as e:
        raise FieldError("hires.scheduler", str(e)) from None


def _check_size(field: str, value: int, max_side: int) -> None:
    _check_int(field, value, 8, max_side)
    if value % 8:
        raise FieldError(field, f"{value} is not a multiple of 8")


def _check_int(field: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise FieldError(field, f"must be an integer in [{low}, {high}], got {value!r}")


def _check_float(field: str, value: object, low: float, high: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise FieldError(field, f"must be a finite number in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise FieldError(field, f"must be in [{low}, {high}], got {value!r}")
