"""Request and response models of the native ``/api/v1``, written by hand (never generated from the
internals), with the server's limits as field constraints.

Requests are strict: ``"steps": "4"`` or ``"steps": true`` are refused, not coerced (an integer is still
accepted for a float). ``/sdapi/v1`` coerces them as A1111's pydantic v1 models do (``true`` is 1 step
there), because A1111 clients send such values and rely on it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from latentstudio.api.common import Base64Image, ExtrasBase
from latentstudio.api.control_units import NativeControlUnit
from latentstudio.config import MAX_IMAGES, MAX_SIDE, MAX_STEPS
from latentstudio.control.units import MAX_UNITS
from latentstudio.jobs import JobKind, JobStatus

MAX_PROMPT = 20_000
Side = Annotated[int, Field(ge=8, le=MAX_SIDE, multiple_of=8, description="Pixels, a multiple of 8.")]
# A size left out (or null) is the checkpoint's native one: 64 for the built-in model, 512 for SD1, 768 for
# SD2-v, 1024 for SDXL (A1111's /sdapi/v1 keeps its fixed 512 default; clients depend on it).
Seed = Annotated[int, Field(ge=-1, le=2**32 - 1, description="-1: random (the job records the one used).")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Name = Annotated[str, Field(max_length=200)]


class GenerationFields(BaseModel):
    """Fields shared by txt2img and img2img (A1111 names, A1111 UI defaults)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no "4" or true for a number: see the module doc

    prompt: str = Field(default="", max_length=MAX_PROMPT)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT)
    sampler: Name = Field(default="DPM++ 2M", description="A1111 sampler name, e.g. 'Euler a'.")
    scheduler: Name = Field(default="Automatic", description="A1111 schedule type, e.g. 'Karras'.")
    steps: int = Field(default=20, ge=1, le=MAX_STEPS)
    cfg_scale: Finite = Field(default=7.0, ge=0.0, le=100.0)
    seed: Seed = -1
    subseed: Seed = -1
    subseed_strength: Finite = Field(default=0.0, ge=0.0, le=1.0)
    seed_resize_from_w: int = Field(default=0, ge=0, le=MAX_SIDE)
    seed_resize_from_h: int = Field(default=0, ge=0, le=MAX_SIDE)
    width: Side | None = Field(default=None, description="null: the checkpoint's native size.")
    height: Side | None = Field(default=None, description="null: the checkpoint's native size.")
    batch_size: int = Field(default=1, ge=1, le=MAX_IMAGES)
    n_iter: int = Field(default=1, ge=1, le=MAX_IMAGES)
    clip_skip: int = Field(default=1, ge=1, le=12)
    eta: Finite | None = Field(default=None, ge=0.0, le=10.0)
    s_noise: Finite = Field(default=1.0, ge=0.0, le=10.0)
    rng: Literal["CPU", "GPU", "NV"] = "CPU"
    eta_noise_seed_delta: int = Field(default=0, ge=0, le=2**32 - 1)
    emphasis: Literal["Original", "No norm", "Ignore", "None"] = "Original"
    checkpoint: Name | None = Field(
        default=None, description="Checkpoint title, name or hash among the server's models; null: default."
    )
    vae: Name = Field(default="Automatic", description="'Automatic', 'None' or a VAE file name.")
    control: list[NativeControlUnit] = Field(
        default_factory=list, max_length=MAX_UNITS,
        description="ControlNet / T2I-Adapter units: sd-webui-controlnet's unit fields (enabled by default).",
    )  # fmt: skip

    @model_validator(mode="after")
    def _images_per_job(self) -> GenerationFields:
        if self.batch_size * self.n_iter > MAX_IMAGES:
            raise ValueError(f"batch_size × n_iter must be at most {MAX_IMAGES}")
        return self


class HiresFields(BaseModel):
    """The hires fix: a second img2img pass at a larger size (A1111 semantics; see the README)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no "4" or true for a number: see the module doc

    scale: Finite = Field(
        default=2.0, ge=1.0, le=8.0, description="Upscale by (ignored when resize_x/y set)."
    )
    resize_x: int = Field(
        default=0, ge=0, le=MAX_SIDE, description="Target width (0: from the aspect ratio)."
    )
    resize_y: int = Field(
        default=0, ge=0, le=MAX_SIDE, description="Target height (0: from the aspect ratio)."
    )
    upscaler: Name = Field(default="Latent", description="A latent mode ('Latent', …) or a pixel upscaler.")
    steps: int = Field(default=0, ge=0, le=MAX_STEPS, description="Second-pass steps (0: as the first pass).")
    sampler: Name | None = Field(default=None, description="Second-pass sampler (null: the first pass's).")
    scheduler: Name | None = Field(default=None, description="Second-pass schedule (null: the first's).")
    prompt: str = Field(default="", max_length=MAX_PROMPT, description="'' means the first pass's prompt.")
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT)
    denoising_strength: Finite = Field(default=0.7, ge=0.0, le=1.0)
    checkpoint: Name | None = Field(
        default=None,
        description="Another checkpoint of the same family for the second pass (title, name or hash); "
        "null: the first pass's.",
    )


class Txt2ImgJob(GenerationFields):
    """A text-to-image job, optionally with the hires fix."""

    kind: Literal["txt2img"] = "txt2img"
    hires: HiresFields | None = None


class Img2ImgJob(GenerationFields):
    """An image-to-image job: ``init_image`` is base64 (PNG, JPEG, WebP; no URLs)."""

    kind: Literal["img2img"]
    init_image: str = Field(max_length=70_000_000, description="Base64 image, optionally a data: URL.")
    denoising_strength: Finite = Field(default=0.75, ge=0.0, le=1.0)
    resize_mode: int = Field(default=0, ge=0, le=3, description="0 resize, 1 crop, 2 fill, 3 latent.")
    mask: str | None = Field(
        default=None,
        max_length=70_000_000,
        description="Inpainting: base64 mask, white = repaint (or alpha).",
    )
    mask_blur: int = Field(default=4, ge=0, le=64)
    inpainting_fill: int = Field(default=1, ge=0, le=3, description="0 fill, 1 original, 2 noise, 3 nothing.")
    inpaint_full_res: bool = Field(default=False, description="Only masked: process the mask's crop.")
    inpaint_full_res_padding: int = Field(default=32, ge=0, le=MAX_SIDE)
    inpainting_mask_invert: bool = False
    color_correction: bool = Field(
        default=False, description="Match the output's colours to the init image's (A1111 colour correction)."
    )


class ExtrasJob(ExtrasBase):
    """An extras job: each of ``images`` (base64, no URLs) through the upscalers and face restorers, with
    A1111's ``extra-single-image`` fields."""

    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["extras"]
    images: Annotated[list[Base64Image], Field(min_length=1, max_length=MAX_IMAGES)]


def _kind(value: object) -> str:
    """The ``kind`` of a job payload; txt2img when absent."""
    kind = value.get("kind", "txt2img") if isinstance(value, dict) else getattr(value, "kind", "txt2img")
    return str(kind)


JobRequest = Annotated[
    Annotated[Txt2ImgJob, Tag("txt2img")] | Annotated[Img2ImgJob, Tag("img2img")]
    | Annotated[ExtrasJob, Tag("extras")],
    Discriminator(_kind, custom_error_type="kind",
                  custom_error_message="kind must be txt2img, img2img or extras"),
]  # fmt: skip


class JobCreated(BaseModel):
    """The id of a queued job and where to watch it."""

    id: str
    status: JobStatus
    url: str


class ImageView(BaseModel):
    """One result image: fetch it from ``url`` (by id only). ``detected_map``: a ControlNet unit's detected
    map (after the generated images; seeds -1, no infotext)."""

    id: str
    url: str
    seed: int
    subseed: int
    infotext: str
    detected_map: bool = False


class JobParameters(BaseModel):
    """The resolved parameters a job runs with (seeds fixed)."""

    prompt: str
    negative_prompt: str
    sampler: str
    scheduler: str
    steps: int
    cfg_scale: float
    seed: int
    subseed: int
    subseed_strength: float
    width: int
    height: int
    batch_size: int
    n_iter: int
    clip_skip: int
    denoising_strength: float | None = None
    checkpoint: str | None
    vae: str


class ExtrasParameters(BaseModel):
    """What an extras job does to each of its images (A1111's ``extra-single-image`` field names)."""

    images: int = Field(description="How many images it processes.")
    resize_mode: int
    upscaling_resize: float
    upscaling_resize_w: int
    upscaling_resize_h: int
    upscaling_crop: bool
    upscaler_1: str
    upscaler_2: str
    extras_upscaler_2_visibility: float
    gfpgan_visibility: float
    codeformer_visibility: float
    codeformer_weight: float
    upscale_first: bool = Field(description="Accepted and ignored, as in A1111.")


class JobView(BaseModel):
    """A job: status, progress, ETA, results (image URLs and infotexts), warnings, error.

    ``params`` for txt2img / img2img jobs, ``extras`` for extras jobs (the other is null). An extras job's
    step counts images; its images have seed -1 and their ``postprocessing`` text as infotext.
    """

    id: str
    kind: JobKind
    status: JobStatus
    source: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    queue_position: int | None = Field(description="0-based place in the queue while queued.")
    step: int
    total: int
    progress: float = Field(ge=0.0, le=1.0)
    eta_seconds: float | None
    interrupted: bool
    images: list[ImageView]
    infotexts: list[str]
    warnings: list[str]
    error: str | None
    params: JobParameters | None
    extras: ExtrasParameters | None = None


class JobPage(BaseModel):
    """A page of jobs, newest first."""

    items: list[JobView]
    total: int
    offset: int
    limit: int


class Health(BaseModel):
    """Liveness / readiness."""

    status: Literal["ok", "unavailable"]
    detail: str | None = None
