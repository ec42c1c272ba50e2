"""Request and response models of the A1111-compatible ``/sdapi/v1``, written by hand.

Field names, types and defaults are A1111 v1.10.1's API defaults (reference/a1111-compat.md §1.4, §1.5,
§1.9), which differ from its UI's: ``steps`` 50, ``sampler_index`` "Euler", ``inpaint_full_res`` True.
Every field A1111 accepts is accepted here; whether it is honoured, ignored (no effect on the picture) or
refused is decided in :mod:`latentstudio.api.sdapi.convert`. Unknown fields are refused (422 naming them)
instead of A1111's silent ignore. Limits: sides ≤ 2048, steps ≤ 150, batch_size × n_iter ≤ 64, prompts
≤ 20 000 characters, no NaN or infinity.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, model_validator

from latentstudio.api.common import Base64Image, ExtrasBase, Finite, Name, StrictModel
from latentstudio.config import MAX_IMAGES, MAX_SIDE, MAX_STEPS

MAX_PROMPT = 20_000
MAX_NESTING = 32  # free-form JSON (script args, settings, comments): deeper is refused, never serialised

Prompt = Annotated[str, Field(max_length=MAX_PROMPT)]
Seed = Annotated[int, Field(ge=-1, le=2**32 - 1, description="-1: random (info.seed tells the one used).")]
Side = Annotated[int, Field(ge=8, le=MAX_SIDE, description="Pixels, a multiple of 8.")]
Count = Annotated[int, Field(ge=1, le=MAX_IMAGES)]


def _shallow(value: Any) -> Any:
    """Free-form JSON nested at most :data:`MAX_NESTING` deep (A1111's script arguments and settings are
    flat; a deeper document would only exhaust the serialiser)."""
    level, current = 0, [value]
    while current:
        level += 1
        if level > MAX_NESTING:
            raise ValueError(f"nested more than {MAX_NESTING} levels deep")
        current = [
            inner
            for item in current
            if isinstance(item, dict | list)
            for inner in (item.values() if isinstance(item, dict) else item)
        ]
    return value


Json = Annotated[Any, AfterValidator(_shallow)]
Options = dict[Annotated[str, Field(max_length=200)], Json]


class GenerationRequest(StrictModel):
    """Fields A1111's ``StableDiffusionProcessing`` exposes to the API, and the API-only ones."""

    prompt: Prompt = ""
    negative_prompt: Prompt = ""
    styles: Annotated[list[Name], Field(max_length=100)] | None = None
    seed: Seed = -1
    subseed: Seed = -1
    subseed_strength: Finite = Field(default=0.0, ge=0.0, le=1.0)
    seed_resize_from_h: int = Field(default=-1, ge=-1, le=MAX_SIDE)
    seed_resize_from_w: int = Field(default=-1, ge=-1, le=MAX_SIDE)
    sampler_name: Name | None = None
    scheduler: Name | None = None
    batch_size: Count = 1
    n_iter: Count = 1
    steps: int = Field(default=50, ge=1, le=MAX_STEPS)
    cfg_scale: Finite = Field(default=7.0, ge=0.0, le=100.0)
    width: Side = 512
    height: Side = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: Finite | None = Field(default=None, ge=0.0, le=10.0)
    s_min_uncond: Finite | None = None
    s_churn: Finite | None = None
    s_tmax: Finite | None = None
    s_tmin: Finite | None = None
    s_noise: Finite | None = Field(default=None, ge=0.0, le=10.0)
    override_settings: Options | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: Name | None = None
    refiner_switch_at: Finite | None = None
    disable_extra_networks: bool = False
    firstpass_image: Base64Image | None = None
    comments: Options | None = None
    force_task_id: Name | None = None
    sampler_index: Name = "Euler"
    script_name: Name | None = None
    script_args: Annotated[list[Json], Field(max_length=1000)] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: Options = Field(default_factory=dict)
    infotext: Annotated[str, Field(max_length=2 * MAX_PROMPT + 10_000)] | None = None

    @model_validator(mode="after")
    def _images_per_request(self) -> GenerationRequest:
        if self.batch_size * self.n_iter > MAX_IMAGES:
            raise ValueError(f"batch_size × n_iter must be at most {MAX_IMAGES}")
        return self


class Txt2ImgRequest(GenerationRequest):
    """``POST /sdapi/v1/txt2img`` (A1111 ``StableDiffusionTxt2ImgProcessingAPI``)."""

    enable_hr: bool = False
    denoising_strength: Finite | None = Field(default=0.75, ge=0.0, le=1.0)
    firstphase_width: int = Field(default=0, ge=0, le=MAX_SIDE)
    firstphase_height: int = Field(default=0, ge=0, le=MAX_SIDE)
    hr_scale: Finite = Field(default=2.0, ge=0.0, le=8.0)
    hr_upscaler: Name | None = None
    hr_second_pass_steps: int = Field(default=0, ge=0, le=MAX_STEPS)
    hr_resize_x: int = Field(default=0, ge=0, le=MAX_SIDE)
    hr_resize_y: int = Field(default=0, ge=0, le=MAX_SIDE)
    hr_checkpoint_name: Name | None = None
    hr_sampler_name: Name | None = None
    hr_scheduler: Name | None = None
    hr_prompt: Prompt = ""
    hr_negative_prompt: Prompt = ""


class Img2ImgRequest(GenerationRequest):
    """``POST /sdapi/v1/img2img`` (A1111 ``StableDiffusionImg2ImgProcessingAPI``)."""

    init_images: Annotated[list[Base64Image], Field(max_length=MAX_IMAGES)] | None = None
    resize_mode: int = Field(default=0, ge=0, le=3, description="0 resize, 1 crop, 2 fill, 3 latent.")
    denoising_strength: Finite = Field(default=0.75, ge=0.0, le=1.0)
    image_cfg_scale: Finite | None = None
    mask: Base64Image | None = None
    mask_blur_x: int = Field(default=4, ge=0, le=256)
    mask_blur_y: int = Field(default=4, ge=0, le=256)
    mask_blur: int | None = Field(default=None, ge=0, le=256)
    mask_round: bool = True
    inpainting_fill: int = Field(default=0, ge=0, le=3)
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = Field(default=0, ge=0, le=MAX_SIDE)
    inpainting_mask_invert: int = Field(default=0, ge=0, le=1)
    initial_noise_multiplier: Finite | None = None
    latent_mask: Base64Image | None = None
    include_init_images: bool = False


class GenerationResponse(BaseModel):
    """``{images, parameters, info}``: base64 PNGs with infotext, the request echo, ``Processed.js()``."""

    images: list[str] | None = Field(description="Base64 PNGs (no data: prefix), each with its infotext.")
    parameters: dict[str, Any] = Field(
        description="The request with every default filled in (seed -1 stays)."
    )
    info: str = Field(description="A JSON string: A1111's Processed.js() keys (seed, all_seeds, infotexts…).")


class ExtrasSingleRequest(ExtrasBase):
    image: Base64Image = ""
    # accepted and ignored: A1111's own test_interrogate_performed posts {image, model} here (A1111 ignores
    # unknown fields); interrogation itself is /sdapi/v1/interrogate
    model: Name | None = None


class FileData(StrictModel):
    data: Base64Image
    name: Name = ""


class ExtrasBatchRequest(ExtrasBase):
    imageList: Annotated[list[FileData], Field(max_length=MAX_IMAGES)]  # noqa: N815 - A1111's name


class ExtrasSingleResponse(BaseModel):
    html_info: str
    image: str


class ExtrasBatchResponse(BaseModel):
    html_info: str
    images: list[str]


class PngInfoRequest(StrictModel):
    image: Base64Image


class PngInfoResponse(BaseModel):
    info: str = Field(description="The raw infotext ('' when the image has none).")
    items: dict[str, Any] = Field(description="Other text entries of the image.")
    parameters: dict[str, Any] = Field(description="parse_generation_parameters(info).")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float = Field(ge=0.0, le=1.0)
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None
