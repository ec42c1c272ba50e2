"""GenerationParams: one frozen description of a txt2img / img2img request, validated at the edge.

Defaults are A1111's UI defaults (DPM++ 2M, Automatic schedule, 20 steps, CFG 7, 512×512). ``validate``
raises :class:`FieldError` naming the field and the allowed values before any model work happens.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import IntEnum

from PIL import Image

from latentstudio.core import FieldError
from latentstudio.prompts.errors import PromptError
from latentstudio.prompts.parser import check_prompt
from latentstudio.samplers import SAMPLER_INFO, SCHEDULERS, resolve_sampler
from latentstudio.samplers.noise import RngSource, resolve_seed

MAX_SIDE = 2048
MAX_STEPS = 150
SAMPLER_NAMES = tuple(SAMPLER_INFO)
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")  # prompts.conditioning.Emphasis values


class ResizeMode(IntEnum):
    """img2img resize modes, numbered as A1111's ``resize_mode``."""

    JUST_RESIZE = 0
    CROP_AND_RESIZE = 1
    RESIZE_AND_FILL = 2
    LATENT_UPSCALE = 3


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
    rng: RngSource = RngSource.CPU
    eta_noise_seed_delta: int = 0
    init_image: Image.Image | None = None
    denoising_strength: float = 0.75
    resize_mode: ResizeMode = ResizeMode.JUST_RESIZE
    mask: Image.Image | None = None  # img2img inpainting: white = repaint (or the alpha of an RGBA mask)
    mask_blur: int = 4
    inpainting_fill: int = 1  # A1111 UI default "original"; 0 fill, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = False  # "Only masked" (the API's default is True; the UI's False)
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False
    inpainting_mask_weight: float = 1.0  # inpainting checkpoints: how much of the masked image they see
    color_correction: bool = False  # A1111 img2img_color_correction: outputs keep the init image's colours
    enable_hr: bool = False  # txt2img hires fix (second pass at denoising_strength)
    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_upscaler: str = "Latent"  # a latent mode (pipeline.hires.LATENT_UPSCALE_MODES) or a pixel upscaler
    hr_second_pass_steps: int = 0  # 0: as many as the first pass
    hr_sampler: str | None = None  # None: the first pass's
    hr_scheduler: str | None = None
    hr_prompt: str = ""  # "": the first pass's
    hr_negative_prompt: str = ""
    hr_checkpoint: str | None = None  # another checkpoint of the same family for the second pass; None: same
    emphasis: str = "Original"  # A1111 emphasis option: Original, No norm, Ignore, None
    old_prompt_editing: bool = False  # A1111 use_old_scheduling ("Old prompt editing timelines")
    pad_conds: bool = False  # A1111 pad_cond_uncond: pad prompt/negative to one length with empty chunks
    pad_conds_v0: bool = False  # A1111 pad_cond_uncond_v0: pad by repeating the last vector (pre-1.6)

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None

    def resolved(self) -> GenerationParams:
        """A copy with -1 seeds replaced by recorded random ones and the sampler name split (A1111 accepts
        ``DPM++ 2M Karras``)."""
        self.validate()
        sampler, scheduler = resolve_sampler(self.sampler)
        if scheduler is not None and self.scheduler not in ("Automatic", scheduler):
            raise FieldError("scheduler", f"{self.sampler!r} already names the schedule {scheduler!r}")
        return dataclasses.replace(
            self,
            sampler=sampler,
            scheduler=scheduler or self.scheduler,
            seed=resolve_seed(self.seed),
            subseed=resolve_seed(self.subseed),
        )

    def validate(self) -> None:
        """Raise :class:`FieldError` for the first invalid field."""
        _check_size("width", self.width)
        _check_size("height", self.height)
        _check_int("steps", self.steps, 1, MAX_STEPS)
        _check_int("batch_size", self.batch_size, 1, 64)
        _check_int("n_iter", self.n_iter, 1, 64)
        _check_int("clip_skip", self.clip_skip, 1, 12)
        _check_float("cfg_scale", self.cfg_scale, 0.0, 100.0)
        _check_float("subseed_strength", self.subseed_strength, 0.0, 1.0)
        _check_float("denoising_strength", self.denoising_strength, 0.0, 1.0)
        _check_float("s_noise", self.s_noise, 0.0, 10.0)
        if self.eta is not None:
            _check_float("eta", self.eta, 0.0, 10.0)
        for field in ("seed", "subseed"):
            _check_int(field, getattr(self, field), -1, 2**32 - 1)
        for field in ("seed_resize_from_w", "seed_resize_from_h"):
            _check_int(field, getattr(self, field), 0, MAX_SIDE)
        try:
            resolve_sampler(self.sampler)
        except ValueError as e:
            raise FieldError("sampler", str(e)) from None
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
        if self.enable_hr:
            self._validate_hires()
        if self.mask is not None:
            self._validate_inpainting()
        if self.color_correction and not self.is_img2img:
            raise FieldError(
                "color_correction", "colour correction is an img2img option (it needs an init image)"
            )
        if self.emphasis not in EMPHASIS_MODES:
            raise FieldError("emphasis", f"unknown {self.emphasis!r}; allowed: {', '.join(EMPHASIS_MODES)}")
        if self.scheduler not in SCHEDULERS:
            raise FieldError("scheduler", f"unknown {self.scheduler!r}; allowed: {', '.join(SCHEDULERS)}")

    def _validate_inpainting(self) -> None:
        """The inpainting fields (only with a ``mask``)."""
        if self.init_image is None:
            raise FieldError("mask", "a mask needs an init image (img2img)")
        _check_int("mask_blur", self.mask_blur, 0, 64)
        _check_int("inpainting_fill", self.inpainting_fill, 0, 3)
        _check_int("inpaint_full_res_padding", self.inpaint_full_res_padding, 0, MAX_SIDE)
        _check_float("inpainting_mask_weight", self.inpainting_mask_weight, 0.0, 1.0)

    def _validate_hires(self) -> None:
        """The hires-fix fields (only when ``enable_hr``); the target size obeys the same limits."""
        if self.is_img2img:
            raise FieldError("enable_hr", "hires fix is a txt2img option; img2img has no second pass")
        _check_float("hr_scale", self.hr_scale, 1.0, 8.0)
        for field in ("hr_resize_x", "hr_resize_y"):
            _check_int(field, getattr(self, field), 0, MAX_SIDE)
        _check_int("hr_second_pass_steps", self.hr_second_pass_steps, 0, MAX_STEPS)
        if self.hr_checkpoint is not None and not 0 < len(self.hr_checkpoint.strip()) <= 1000:
            raise FieldError(
                "hr_checkpoint", "a checkpoint name (at most 1000 characters), or None for the same"
            )
        for field, name in (("hr_sampler", self.hr_sampler), ("hr_scheduler", self.hr_scheduler)):
            if name is not None and name not in (SCHEDULERS if field == "hr_scheduler" else SAMPLER_NAMES):
                allowed = SCHEDULERS if field == "hr_scheduler" else SAMPLER_NAMES
                raise FieldError(field, f"unknown {name!r}; allowed: {', '.join(allowed)}")
        for field in ("hr_prompt", "hr_negative_prompt"):
            try:
                check_prompt(getattr(self, field), self.hr_second_pass_steps or self.steps)
            except PromptError as e:
                raise FieldError(field, str(e)) from None
        to_x, to_y, _, _ = target_size(self)
        for field, value in (("hr_scale", to_x), ("hr_scale", to_y)):
            if not 64 <= value <= MAX_SIDE:
                raise FieldError(field, f"the hires target {to_x}x{to_y} must be within [64, {MAX_SIDE}]")


def target_size(params: GenerationParams) -> tuple[int, int, int, int]:
    """The hires fix's upscaled size, A1111 ``calculate_target_resolution``: ``(to_x, to_y, truncate_x,
    truncate_y)``. Here, not in :mod:`~latentstudio.pipeline.hires`, because :meth:`GenerationParams.validate`
    bounds it and hires imports this module."""
    width, height, rx, ry = params.width, params.height, params.hr_resize_x, params.hr_resize_y
    if rx == 0 and ry == 0:
        return int(width * params.hr_scale), int(height * params.hr_scale), 0, 0
    if ry == 0:
        return rx, rx * height // width, 0, 0
    if rx == 0:
        return ry * width // height, ry, 0, 0
    if width / height < rx / ry:
        to_x, to_y = rx, rx * height // width
    else:
        to_x, to_y = ry * width // height, ry
    return to_x, to_y, (to_x - rx) // 8, (to_y - ry) // 8


def _check_size(field: str, value: int) -> None:
    _check_int(field, value, 8, MAX_SIDE)
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
