"""What the web UI needs from the server, as a protocol: the UI is a client of the job layer and of these
calls, never of models or pipelines (DESIGN). The server (``latentstudio.server.ui_backend``) implements it
with exactly the conversion the A1111 API uses, so a UI generation and an ``/sdapi/v1`` call with the same
fields and settings make the same job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from PIL import Image

from latentstudio.jobs import JobRecord, JobService

Kind = Literal["txt2img", "img2img"]
# A ControlNet unit the UI sends: its fields by the extension's API names (``module``, ``model``,
# ``weight``…, no image) and its control image (None: the img2img image).
ControlInput = tuple[Mapping[str, Any], Image.Image | None]


@dataclass(frozen=True)
class SliderSpec:
    """One preprocessor slider as the ControlNet extension shows it."""

    label: str
    minimum: float
    maximum: float
    default: float
    step: float


@dataclass(frozen=True)
class ControlModule:
    """A preprocessor the ControlNet units offer, with its ``processor_res``, ``threshold_a`` and
    ``threshold_b`` sliders (None: hidden for this module)."""

    name: str
    processor_res: SliderSpec | None = None
    threshold_a: SliderSpec | None = None
    threshold_b: SliderSpec | None = None


@dataclass(frozen=True)
class OptionField:
    """One setting the Settings tab shows: A1111 key, current value, and its allowed values."""

    key: str
    value: Any
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScriptField:
    """A script the Script dropdown offers: its A1111 title and its arguments as ``/sdapi/v1/script-info``
    describes them (``label``, ``value``, ``minimum``, ``maximum``, ``step``, ``choices``), in order."""

    title: str
    args: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Catalog:
    """Names the dropdowns offer, refreshed on every page load and on the refresh buttons."""

    samplers: Sequence[str]
    schedulers: Sequence[str]
    checkpoints: Sequence[str]  # A1111 titles (``name.safetensors [hash]``)
    current_checkpoint: str | None
    vaes: Sequence[str]  # "Automatic", "None", then the files
    current_vae: str
    upscalers: Sequence[str]  # pixel upscalers (extras, hires)
    latent_upscalers: Sequence[str]
    loras: Sequence[str]
    embeddings: Sequence[str]
    styles: Sequence[str] = field(default_factory=tuple)
    face_restorers: Sequence[str] = field(default_factory=tuple)  # "GFPGAN" / "CodeFormer" with weights
    native_size: int | None = None  # the current checkpoint's training size in pixels (None: unknown)
    control_models: Sequence[str] = ("None",)  # "None", then the current checkpoint's family's files


class Backend(Protocol):
    """The server side of the UI. Every method raises :class:`~latentstudio.core.FieldError` for refused
    input."""

    @property
    def jobs(self) -> JobService: ...

    def catalog(self) -> Catalog: ...

    async def refresh(self) -> None:
        """Rescan the models folders (the job worker does it between jobs; awaited without a thread)."""

    def submit(
        self,
        kind: Kind,
        fields: Mapping[str, Any],
        init: Image.Image | None = None,
        mask: Image.Image | None = None,
        controls: Sequence[ControlInput | None] = (),
    ) -> JobRecord:
        """Queue a generation from A1111 request fields (``/sdapi/v1/txt2img`` / ``img2img`` names) and the
        ControlNet units (None: a disabled unit; refusals name ``alwayson_scripts.controlnet.args.<i>``)."""

    def paste(self, text: str) -> dict[str, Any]:
        """An infotext → the txt2img request fields it sets (A1111's paste), settings included as
        ``override_settings``, and under ``controlnet_units`` each ``ControlNet N`` entry's unit fields by
        ``N`` (the extension's infotext fields; the model named by a listed title where one matches)."""

    def control_modules(self) -> Sequence[ControlModule]:
        """The preprocessors a ControlNet unit may pick (those that need no weights), in the extension's
        order."""

    def control_models(self, checkpoint: str | None) -> list[str]:
        """The ControlNet / T2I-Adapter titles a unit may pick with this checkpoint (by title; None: the
        current one): "None", then the readable files of its family (every readable file when the
        checkpoint's family is unknown)."""

    def detect_control(
        self, fields: Mapping[str, Any], image: Image.Image, size: tuple[int, int]
    ) -> Image.Image:
        """A unit's detected map for ``image`` (its preprocessor and sliders from ``fields``, as
        :meth:`submit` takes them; pixel perfect for a picture of ``size`` ``(height, width)``)."""

    def read_infotext(self, image: Image.Image) -> str:
        """The infotext an image carries ('' if none)."""

    def submit_extras(self, image: Image.Image, fields: Mapping[str, Any]) -> JobRecord:
        """Queue an extras job (upscale / restore faces of one image) from ``/sdapi/v1/extra-single-image``
        fields; the UI waits for it through :attr:`jobs` without holding a thread."""

    def extras_result(self, record: JobRecord) -> tuple[Image.Image, str]:
        """The finished extras job's image and its ``postprocessing`` text (a
        :class:`~latentstudio.core.FieldError` naming ``job`` when it failed, was cancelled or made
        nothing)."""

    def options(self) -> list[OptionField]:
        """The settings that change images, with their current values."""

    def set_options(self, changes: Mapping[str, Any]) -> None:
        """Check and persist settings (the same store as ``/sdapi/v1/options``)."""

    def native_size(self, checkpoint: str) -> int | None:
        """The training size in pixels (64, 512, 768, 1024) of a checkpoint by its title, read without
        loading it; None when the checkpoint is unknown or cannot be identified."""

    def token_count(self, prompt: str, steps: int) -> tuple[int, int]:
        """A1111's token counter: (tokens of the longest scheduled prompt, its 75-token bound)."""

    def delete_job(self, job_id: str) -> None:
        """Remove a finished job and its images from the history."""
