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
    ) -> JobRecord:
        """Queue a generation from A1111 request fields (``/sdapi/v1/txt2img`` / ``img2img`` names)."""

    def paste(self, text: str) -> dict[str, Any]:
        """An infotext → the txt2img request fields it sets (A1111's paste), settings included as
        ``override_settings``."""

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
