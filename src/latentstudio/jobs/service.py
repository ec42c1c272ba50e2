"""JobService: the one object request handlers (native API, A1111 layer, UI) use to run generations.

Thread-safe throughout; nothing here touches model weights (the :class:`Worker` does: unloading and
rescanning models are commands it runs between jobs, answered through a future). Restart policy:
a job found ``running`` at start-up was cut off by a crash; it is marked failed ("interrupted by a server
restart") and its partial images are removed. It is not retried: a job that crashed the process would
crash it again on every start (InvokeAI's poison-pill lesson). Queued jobs resume in submission order.
A clean stop (``stop()``) puts the running job back at the head of the queue instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from anyio import CapacityLimiter, to_thread

from latentstudio.config import Settings
from latentstudio.control import preprocessors
from latentstudio.control.library import ControlModelNotFoundError
from latentstudio.core import FieldError
from latentstudio.jobs.codec import extras_input_pngs, input_pngs
from latentstudio.jobs.events import EventBus, Subscription
from latentstudio.jobs.extras import check_extras, find_upscaler
from latentstudio.jobs.model import (
    AnySpec,
    EventType,
    ExtrasSpec,
    JobEvent,
    JobNotFoundError,
    JobRecord,
    JobSpec,
    JobStatus,
    NoCheckpointError,
    Progress,
    QueueFullError,
)
from latentstudio.jobs.store import JobStore
from latentstudio.jobs.worker import Worker
from latentstudio.models.discovery import CheckpointInfo
from latentstudio.models.families import Family
from latentstudio.models.files import ModelFileError
from latentstudio.models.manager import VAE_AUTOMATIC, VAE_NONE, ModelManager, ModelNotFoundError
from latentstudio.pipeline.hires import LATENT_UPSCALE_MODES
from latentstudio.postprocess.faces import FaceRestorerInfo
from latentstudio.postprocess.upscalers import UpscalerInfo, UpscalerNotFoundError
from latentstudio.storage import private_dir

RESTART_ERROR = "interrupted by a server restart"
_ID = re.compile(r"^[0-9a-f]{32}$")
_TERMINAL_EVENTS = frozenset({EventType.DONE, EventType.FAILED, EventType.CANCELLED})


class JobService:
    """Submit, watch, cancel and page through jobs; owns the store, the event bus and the worker."""

    def __init__(
        self, settings: Settings, manager: ModelManager, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.clock = clock
        self.images_root = private_dir(settings.data_dir / "images")
        self.store = JobStore(settings.data_dir / "jobs.sqlite3")
        self.events = EventBus()
        self.worker = Worker(
            self.store,
            manager,
            self.events,
            self.images_root,
            preview_every=settings.preview_every,
            clock=clock,
        )
        self._started = False

    # -- life cycle ------------------------------------------------------------------------------------
    def start(self) -> list[str]:
        """Recover from a crash, then start the worker; returns the ids of jobs marked failed."""
        failed = self.store.fail_running(self.clock(), RESTART_ERROR)
        for job_id in failed:
            shutil.rmtree(self.images_root / job_id, ignore_errors=True)
        if self.images_root.is_dir():  # temp files of writes cut off by the crash
            for tmp in self.images_root.glob("*/.*.tmp"):
                tmp.unlink(missing_ok=True)
        self.worker.start()
        self._started = True
        return failed

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker (a running job is re-queued) and close the store."""
        if self._started:
            self.worker.stop(timeout)
        self.store.close()

    @property
    def ready(self) -> bool:
        """The worker runs and the default checkpoint is loaded."""
        return self.worker.alive and self.worker.ready.is_set()

    @property
    def not_ready_reason(self) -> str | None:
        """Why :attr:`ready` is False (None when ready)."""
        if self.ready:
            return None
        return self.worker.ready_error if self.worker.alive else "the job worker is not running"

    # -- submitting ------------------------------------------------------------------------------------
    def submit(self, spec: AnySpec) -> JobRecord:
        """Queue a job; raises :class:`FieldError` (unknown checkpoint/VAE/upscaler, a
        too large extras result) or :class:`QueueFullError`. The job is durable once this returns."""
        if isinstance(spec, ExtrasSpec):
            check_extras(
                spec,
                upscalers=self.worker.upscalers,
                faces=self.worker.faces,
                max_pixels=self.settings.max_image_pixels,
            )
            inputs = extras_input_pngs(spec.images)
        else:
            self._check_models(spec)  # the parameters themselves were checked by GenerationParams.resolved
            inputs = input_pngs(spec.params)
        record = JobRecord(uuid.uuid4().hex, JobStatus.QUEUED, spec, self.clock())
        if not self.store.insert(record, inputs, max_queued=self.settings.max_queue):
            raise QueueFullError(self.settings.max_queue, self._retry_after())
        self.events.publish(JobEvent(EventType.QUEUED, record.id, record.created_at, status=JobStatus.QUEUED))
        self.worker.wake()
        return record

    def _checkpoint(self, name: str | None) -> CheckpointInfo:
        """A discovered checkpoint by name (None: the default): never a path a client made up."""
        if name is None:
            try:
                return self.manager.default_checkpoint()
            except ModelNotFoundError as e:
                raise NoCheckpointError(str(e)) from None
        try:
            info = self.manager.find(name)
        except ModelNotFoundError as e:
            raise FieldError("checkpoint", str(e)) from None
        if info.path not in {c.path for c in self.manager.checkpoints()}:
            raise FieldError("checkpoint", f"{name!r} is not a checkpoint in the models folder")
        return info

    def native_size(self, checkpoint: str | None) -> int:
        """The native side of ``checkpoint`` (None: the default one) from its header, nothing loaded:
        what a request that leaves the size out gets. Raises :class:`FieldError` naming ``checkpoint``
        or :class:`NoCheckpointError`."""
        info = self._checkpoint(checkpoint)
        try:
            return self.manager.family(info).native_size
        except (ModelFileError, OSError, ValueError) as e:
            raise FieldError("checkpoint", f"{info.name!r} cannot be read: {e}") from None

    def _check_models(self, spec: JobSpec) -> None:
        """Only discovered checkpoints and VAEs by name: never a path a client made up."""
        self._checkpoint(spec.checkpoint)
        if spec.vae not in (VAE_AUTOMATIC, VAE_NONE):
            names = [v.name for v in self.manager.vaes()]
            if spec.vae not in names:
                allowed = ", ".join([VAE_AUTOMATIC, VAE_NONE, *names])
                raise FieldError("vae", f"unknown VAE {spec.vae!r}; allowed: {allowed}")
        self._check_control(spec)
        hires = spec.params.hires
        if hires is not None:
            self._check_hires_upscaler(hires.upscaler)
        if hires is not None and hires.checkpoint is not None:
            self._check_hires_checkpoint(hires.checkpoint, spec.checkpoint)

    def _check_control(self, spec: JobSpec) -> None:
        """Each ControlNet unit's model: a listed file we can load, of the checkpoint's family; its
        preprocessor's annotator files, where it needs some, installed."""
        if not spec.params.control:
            return
        try:
            base = self._checkpoint(spec.checkpoint)
            family: Family | None = self.manager.family(base).family
        except (ModelFileError, OSError, ValueError):
            family = None  # the job fails on loading its own checkpoint, with that error
        for i, unit in enumerate(spec.params.control):
            missing = preprocessors.missing_files(unit.module, self.worker.controls.annotator_roots)
            if missing is not None:
                raise FieldError(f"control.{i}.module", missing)
            try:
                self.worker.controls.resolve(unit.model, family, base.name)
            except (ControlModelNotFoundError, ModelFileError, OSError) as e:
                raise FieldError(f"control.{i}.model", str(e)) from None

    def _check_hires_upscaler(self, name: str) -> None:
        """A latent mode or an upscaler from the folders (rescanned once on a miss), before queueing."""
        if name in LATENT_UPSCALE_MODES:
            return
        try:
            find_upscaler(self.worker.upscalers, name)
        except UpscalerNotFoundError as e:
            latent = ", ".join(LATENT_UPSCALE_MODES)
            raise FieldError("hires.upscaler", f"{e}; or a latent mode: {latent}") from None

    def _check_hires_checkpoint(self, name: str, first: str | None) -> None:
        """The hires fix's own checkpoint: discovered, and of the first pass's family (latents carry over)."""
        try:
            info = self.manager.find(name)
        except ModelNotFoundError as e:
            raise FieldError("hires.checkpoint", str(e)) from None
        if info.path not in {c.path for c in self.manager.checkpoints()}:
            raise FieldError("hires.checkpoint", f"{name!r} is not a checkpoint in the models folder")
        try:
            family = self.manager.family(info)
        except (ModelFileError, OSError, ValueError) as e:
            raise FieldError("hires.checkpoint", f"{name!r} cannot be read: {e}") from None
        try:
            base = self.manager.find(first) if first is not None else self.manager.default_checkpoint()
            first_family = self.manager.family(base)
        except (ModelFileError, OSError, ValueError, ModelNotFoundError):
            return  # the job fails on loading its own checkpoint, with that error
        if family.family is not first_family.family:
            raise FieldError(
                "hires.checkpoint",
                f"{name!r} is {family.label} but the first pass runs {base.name} ({first_family.label}): "
                "the hires checkpoint must be of the same family",
            )

    def upscalers(self) -> list[UpscalerInfo]:
        """The built-in upscalers and the model files in the upscaler folders (rescanned: a directory
        listing, nothing loaded)."""
        return self.worker.upscalers.refresh()

    def face_restorers(self) -> list[FaceRestorerInfo]:
        """The face restorers extras jobs can use (weights present; nothing loaded)."""
        return list(self.worker.faces.usable())

    # -- model maintenance (run by the worker between jobs) ---------------------------------------------
    def unload_models(self) -> Future[None]:
        """Drop every loaded checkpoint and VAE (A1111's unload-checkpoint): done by the worker after the
        running job, if any; the next job loads its checkpoint again."""
        return self.worker.call(self.manager.unload)

    def refresh_models(self) -> Future[None]:
        """Rescan checkpoints, VAEs, embeddings and LoRAs (A1111's refresh-checkpoints / -vae /
        -embeddings): done by the worker between jobs, so no job sees its catalog change under it."""
        return self.worker.call(self.manager.refresh)

    def refresh_loras(self) -> Future[None]:
        """Rescan the LoRA folders (A1111's refresh-loras), by the worker between jobs."""
        return self.worker.call(self.manager.lora_library.refresh)

    def _retry_after(self) -> int:
        """Seconds until a queue slot is likely free: the mean recent job time, at least 1."""
        durations = self.worker.durations
        mean = sum(durations) / len(durations) if durations else 5.0
        return max(1, min(3600, round(mean)))

    # -- reading ---------------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        """The job with live progress if it runs; :class:`JobNotFoundError` for unknown ids."""
        record = self.store.get(job_id) if _ID.match(job_id) else None
        if record is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return self._live(record)

    def _live(self, record: JobRecord) -> JobRecord:
        """The record with the worker's live step count if it is the running job."""
        if record.status is not JobStatus.RUNNING:
            return record
        step, total = self.worker.steps(record.id)
        return replace(record, step=step, total=total)

    def list(self, status: JobStatus | None = None, offset: int = 0, limit: int = 50) -> list[JobRecord]:
        """Jobs newest first (``limit`` ≤ 500)."""
        if offset < 0 or not 1 <= limit <= 500:
            raise FieldError("limit", "offset must be ≥ 0 and limit in [1, 500]")
        return [self._live(r) for r in self.store.list(status, offset, limit)]

    def count(self, status: JobStatus | None = None) -> int:
        return self.store.count(status)

    def position(self, job_id: str) -> int | None:
        """0-based place in the queue of a queued job."""
        return self.store.position(job_id)

    def progress(self) -> Progress:
        """The running job's step/total/ETA and a preview image (``job_id`` None when idle)."""
        return self.worker.progress(self.store.count(JobStatus.QUEUED))

    def image_path(self, image_id: str) -> Path:
        """The PNG of an image id, always inside the images folder; :class:`JobNotFoundError` otherwise."""
        stored = self.store.image(image_id) if _ID.match(image_id) else None
        if stored is None:
            raise JobNotFoundError(f"no image {image_id!r}")
        root = self.images_root.resolve()
        path = (root / stored.path).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise JobNotFoundError(f"no image {image_id!r}")
        return path

    # -- waiting ---------------------------------------------------------------------------------------
    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Block until the job is terminal or ``timeout`` seconds pass; returns its record either way."""
        finished = threading.Event()

        def listener(event: JobEvent) -> None:
            if event.job_id == job_id and event.type in _TERMINAL_EVENTS:
                finished.set()

        remove = self.events.add_listener(listener)
        try:
            record = self.get(job_id)
            if not record.status.terminal:
                finished.wait(timeout)
        finally:
            remove()
        return self.get(job_id)

    async def wait_async(
        self, job_id: str, timeout: float | None = None, *, limiter: CapacityLimiter | None = None
    ) -> JobRecord:
        """:meth:`wait` for async code: holds no thread while it waits. The store is read (before and after
        the wait) in a pool thread of ``limiter`` (None: AnyIO's default one), never on the event loop."""
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()

        def listener(event: JobEvent) -> None:
            if event.job_id == job_id and event.type in _TERMINAL_EVENTS:
                loop.call_soon_threadsafe(finished.set)

        remove = self.events.add_listener(listener)
        try:
            record = await to_thread.run_sync(self.get, job_id, limiter=limiter)
            if not record.status.terminal:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), timeout)
        finally:
            remove()
        return await to_thread.run_sync(self.get, job_id, limiter=limiter)

    def subscribe(self) -> Subscription:
        """An async stream of every job's events (call inside the event loop; close when done)."""
        return self.events.subscribe()

    # -- control ---------------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> JobRecord:
        """queued → cancelled now; running → stopped at the next step, then cancelled (no images kept).
        Terminal jobs are returned unchanged."""
        record = self.get(job_id)
        if record.status is JobStatus.QUEUED and self.store.cancel_queued(job_id, self.clock()):
            self.events.publish(
                JobEvent(EventType.CANCELLED, job_id, self.clock(), status=JobStatus.CANCELLED)
            )
            return self.get(job_id)
        self.worker.request(job_id, cancel=True)
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Remove a finished job from the history with its images (row first, then the files: an image
        is never indexed without its file). A queued or running job is a :class:`FieldError`."""
        self.get(job_id)
        if not self.store.delete_finished(job_id):
            raise FieldError("job_id", "only a finished job can be deleted; cancel it first")
        shutil.rmtree(self.images_root / job_id, ignore_errors=True)

    def interrupt(self, job_id: str | None = None) -> str | None:
        """A1111 interrupt: the running job (``job_id`` only if it is the one running) stops after its
        current step and keeps what it has (done, ``interrupted``). Returns its id, None when idle."""
        return self.worker.request(job_id, stop=True)

    def skip(self, job_id: str | None = None) -> str | None:
        """A1111 skip: end the running job's current batch (``n_iter``) and go on with the next."""
        return self.worker.request(job_id, skip=True)
