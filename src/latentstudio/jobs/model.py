"""What a job is: its frozen spec (what to run), its record (what happened) and the events it emits.

No FastAPI here: the API, the UI and tests all speak these types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from PIL import Image

from latentstudio.core import FieldError
from latentstudio.pipeline.params import ResolvedParams
from latentstudio.postprocess.extras import ExtrasOptions

VAE_AUTOMATIC = "Automatic"


class JobStatus(StrEnum):
    """Life cycle: queued → running → done | failed | cancelled (queued → cancelled directly)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for done, failed and cancelled: the job will never change again."""
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


class JobKind(StrEnum):
    """What the worker runs: text to image, image to image (``params.init_image`` is set), or extras
    (upscaling and face restoration of given images: an :class:`ExtrasSpec`)."""

    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    EXTRAS = "extras"


class JobError(Exception):
    """Base of the errors :class:`~latentstudio.jobs.service.JobService` raises to its callers."""


class JobNotFoundError(JobError, LookupError):
    """No job (or image) with this id."""


class NoCheckpointError(JobError):
    """The models folder has no checkpoint to run a job with (answered 503: the server, not the request)."""


class QueueFullError(JobError):
    """``--max-queue`` jobs are already waiting; ``retry_after`` is a whole number of seconds to wait."""

    def __init__(self, limit: int, retry_after: int) -> None:
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(f"the queue is full ({limit} jobs waiting); retry in {retry_after} s")


@dataclass(frozen=True)
class JobSpec:
    """Everything that determines a job's output, with every default and the seed resolved.

    ``params``: made by :meth:`GenerationParams.resolved`, the one place a request is validated.
    ``checkpoint``: a :meth:`ModelManager.find` query among discovered checkpoints, ``None`` = the
    server default. ``vae``: ``Automatic``, ``None`` or a VAE name from ``ModelManager.vaes``.
    Every job's PNGs are written to the data dir and indexed (the A1111 layer reads them back).
    """

    kind: JobKind
    params: ResolvedParams
    checkpoint: str | None = None
    vae: str = VAE_AUTOMATIC
    source: str = "api"  # who submitted it ("api", "sdapi", "ui"): shown in listings only

    def __post_init__(self) -> None:
        if self.kind is JobKind.EXTRAS:
            raise FieldError("kind", "an extras job is an ExtrasSpec")
        if (self.kind is JobKind.IMG2IMG) != self.params.is_img2img:
            raise FieldError(
                "init_image", f"a {self.kind} job {'needs' if self.params.is_img2img else 'has'}"
            )
        if not isinstance(self.params, ResolvedParams):
            raise TypeError("a JobSpec takes GenerationParams.resolved(), not a GenerationParams")


@dataclass(frozen=True)
class ExtrasSpec:
    """An extras job (A1111 ``extra-single-image`` / ``extra-batch-images``): ``options`` applied to each
    image in order by :func:`~latentstudio.postprocess.extras.run_extras` in the worker.

    An image's ``parameters`` infotext (``info``) is kept: stored with it, and written into its result.
    No checkpoint is involved. Names and sizes are checked by the service when the job is submitted.
    """

    options: ExtrasOptions
    images: tuple[Image.Image, ...]
    source: str = "api"

    def __post_init__(self) -> None:
        if not self.images:
            raise FieldError("images", "an extras job needs at least one image")

    @property
    def kind(self) -> JobKind:
        return JobKind.EXTRAS


AnySpec = JobSpec | ExtrasSpec  # what a job runs: a generation or extras


@dataclass(frozen=True)
class ImageRef:
    """One image a job wrote: opaque ``id`` (served by id only), its seeds and infotext.

    Extras images have no seeds (-1 both) and their infotext is the ``postprocessing`` text (the source's
    ``parameters`` stay in the PNG).
    """

    id: str
    index: int
    seed: int
    subseed: int
    infotext: str


@dataclass(frozen=True)
class GenerationFacts:
    """What the worker knew when a generation job ran, stored with the job (responses read these, never the
    infotext back): the checkpoint's infotext name and 10-hex shorthash, the external VAE's file name and
    shorthash (None: the checkpoint's own), the seeds of every image the job planned (A1111's
    ``all_seeds``/``all_subseeds``), the infotext keys beyond the fixed ones (A1111's
    ``extra_generation_params``: JSON values) and whether an inpainting checkpoint got its image
    conditioning."""

    model_name: str | None = None
    model_hash: str | None = None
    vae_name: str | None = None
    vae_hash: str | None = None
    all_seeds: tuple[int, ...] = ()
    all_subseeds: tuple[int, ...] = ()
    extra_generation_params: Mapping[str, object] = field(default_factory=dict)
    inpainting_conditioning: bool = False


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: spec, status, timestamps (Unix seconds), progress and results.

    ``step``/``total`` are live for the running job (sampling steps over all batches; images done for
    extras), final otherwise.
    ``interrupted``: the job was stopped early by :meth:`JobService.interrupt` and kept what it had.
    ``facts``: a finished generation's model, seeds and parameters (None before it finished, for extras
    jobs, and for jobs stored by versions before they were recorded).
    """

    id: str
    status: JobStatus
    spec: AnySpec
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total: int = 0
    images: tuple[ImageRef, ...] = ()
    warnings: tuple[str, ...] = ()
    error: str | None = None
    interrupted: bool = False
    facts: GenerationFacts | None = None

    @property
    def image_ids(self) -> list[str]:
        return [image.id for image in self.images]

    @property
    def pictures(self) -> tuple[ImageRef, ...]:
        """The images a generation made, or an extras job's images: :attr:`images` without the
        :attr:`detected_maps`."""
        if not isinstance(self.spec, JobSpec):
            return self.images
        return tuple(image for image in self.images if image.seed >= 0)

    @property
    def detected_maps(self) -> tuple[ImageRef, ...]:
        """A generation's ControlNet detected maps: stored after its pictures, without seeds (a generated
        image's seed is never negative) or infotext."""
        if not isinstance(self.spec, JobSpec):
            return ()
        return tuple(image for image in self.images if image.seed < 0)

    @property
    def infotexts(self) -> list[str]:
        return [image.infotext for image in self.pictures]

    @property
    def seeds(self) -> list[int]:
        return [image.seed for image in self.pictures]

    @property
    def subseeds(self) -> list[int]:
        return [image.subseed for image in self.pictures]

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]: 1 once terminal, steps done / total while running."""
        if self.status.terminal:
            return 1.0
        return self.step / self.total if self.total else 0.0


@dataclass(frozen=True)
class Progress:
    """The running job's progress (all zero / None when idle). ``eta`` is in seconds.

    ``preview``: a cheap RGB approximation of the newest denoised latent (PIL image), if any step ran.
    """

    job_id: str | None
    step: int = 0
    total: int = 0
    elapsed: float = 0.0
    preview: Image.Image | None = None
    queued: int = 0

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, extrapolated from the time the done steps took (None before the first step)."""
        fraction = self.fraction
        if fraction <= 0.0:
            return None
        left = self.elapsed / fraction - self.elapsed
        return max(0.0, left) if math.isfinite(left) else None


class EventType(StrEnum):
    """Events a subscriber receives."""

    QUEUED = "queued"
    STARTED = "started"
    STEP = "step"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class JobEvent:
    """One event. ``preview_png``: a small PNG of the current latent on some step events."""

    type: EventType
    job_id: str
    time: float
    step: int = 0
    total: int = 0
    status: JobStatus | None = None
    error: str | None = None
    image_ids: tuple[str, ...] = field(default=())
    preview_png: bytes | None = None
