"""The worker: the one thread per device that owns the models, runs jobs in order and writes their images.

Each job: claim (queued → running) → load the checkpoint through the ModelManager → ``pipeline.run`` with
a StepControl wired to interrupt/skip/cancel → PNGs written atomically into ``images/<job id>/`` → one
store transaction marks the job done and indexes its images → events. A crash anywhere before that
transaction leaves the job ``running`` in the store, which the next start marks failed and cleans up.
An extras job takes the same path with ``postprocess.extras.run_extras`` over its images (one step per
image; interrupt/cancel act between images) and the worker's upscaler registry and face restorers.

Model maintenance that other threads ask for (unload, rescans: :meth:`Worker.call`) is a command the worker
runs between jobs, so nothing but this thread ever touches loaded weights or changes the catalog under a job.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image

from latentstudio.core import FieldError
from latentstudio.jobs.events import EventBus
from latentstudio.jobs.model import (
    EventType,
    ExtrasSpec,
    GenerationFacts,
    ImageRef,
    JobEvent,
    JobRecord,
    JobSpec,
    JobStatus,
    Progress,
)
from latentstudio.jobs.store import JobStore, Outcome, StoredImage
from latentstudio.models.families import Family
from latentstudio.models.files import ModelFileError
from latentstudio.models.loader import Components
from latentstudio.models.manager import ModelManager, ModelNotFoundError
from latentstudio.pipeline.images import png_bytes, write_atomic
from latentstudio.pipeline.infotexts import ModelIdentity, model_identity
from latentstudio.pipeline.run import (
    GenerationResult,
    HiresModel,
    NaNLatentError,
    StepInfo,
    latent_preview,
    run,
)
from latentstudio.postprocess.extras import run_extras
from latentstudio.postprocess.faces import FaceRestorerError, FaceRestorers
from latentstudio.postprocess.safety import SafetyChecker, SafetyCheckerError
from latentstudio.postprocess.upscalers import (
    UpscalerLoadError,
    UpscalerNotFoundError,
    UpscalerRegistry,
    upscale,
)
from latentstudio.prompts.conditioning import ConditioningCache
from latentstudio.samplers.wrappers import StepControl
from latentstudio.storage import private_dir

log = logging.getLogger(__name__)
PREVIEW_SIDE = 128
T = TypeVar("T")


class _Requeue(Exception):  # noqa: N818 - control flow: the server is stopping mid-job
    pass


@dataclass(frozen=True)
class _Output:
    """One image to write: seeds (-1 for extras), the infotext indexed with it, and its PNG text chunks."""

    image: Image.Image
    seed: int
    subseed: int
    infotext: str
    parameters: str | None
    postprocessing: str | None = None


@dataclass(frozen=True)
class _Produced:
    """What a job made before anything is written, and a generation's facts (None for extras)."""

    outputs: list[_Output]
    warnings: Sequence[str] = ()
    interrupted: bool = False
    facts: GenerationFacts | None = None


@dataclass
class _Live:
    """Mutable state of the running job, guarded by :attr:`Worker.lock`."""

    job_id: str
    started: float
    step: int = 0
    total: int = 0
    latent: torch.Tensor | None = None
    family: Family = Family.SD1
    stop: bool = False
    cancel: bool = False
    skips: int = 0


class Worker:
    """Runs queued jobs from the store one at a time on ``manager``'s device."""

    def __init__(
        self,
        store: JobStore,
        manager: ModelManager,
        events: EventBus,
        images_root: Path,
        *,
        preview_every: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.manager = manager
        self.events = events
        self.images_root = images_root
        self.preview_every = preview_every
        self.clock = clock
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.ready_error: str | None = "starting"
        self._live: _Live | None = None
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._commands: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._commands_lock = threading.Lock()
        self._accepting = False  # commands are queued for the thread only while it runs its loop
        self._cache = ConditioningCache()
        # pixel upscalers (hires fix, extras) and face restorers (extras): folders scanned on first use,
        # models loaded on first use; the job service reads their listings to check names at submission
        self.upscalers = UpscalerRegistry(manager.settings.models_dir, device=manager.device)
        self.faces = FaceRestorers(manager.settings.models_dir, device=manager.device)
        self._safety: SafetyChecker | None = None  # built on the first job when the setting is on
        self._thread = threading.Thread(target=self._loop, name=f"latentstudio-worker-{manager.device}")
        self.durations: list[float] = []  # recent job wall times, newest last (for Retry-After)

    # -- control from other threads ------------------------------------------------------------------
    def start(self) -> None:
        with self._commands_lock:
            self._accepting = True
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The worker thread runs."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current step: a running job goes back to the queue, nothing else is claimed."""
        self._stopping.set()
        with self.lock:
            if self._live is not None:
                self._live.stop = True
        self._wakeup.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        """A job was queued."""
        self._wakeup.set()

    def call(self, command: Callable[[], T]) -> Future[T]:
        """Run ``command`` on the worker thread before it claims its next job (after the running one, if
        any; at once when idle); the future gets its result or exception. Without a worker thread (not
        started, or stopped) nothing else touches the models, and the command runs here at once."""
        future: Future[T] = Future()
        with self._commands_lock:
            if self._accepting:
                self._commands.append((command, future))
                self._wakeup.set()
                return future
        _complete(future, command)
        return future

    def request(
        self, job_id: str | None, *, stop: bool = False, cancel: bool = False, skip: bool = False
    ) -> str | None:
        """Ask the running job (``job_id`` or whichever runs, when None) to stop/cancel/skip; returns its
        id, or None when that job is not running."""
        with self.lock:
            live = self._live
            if live is None or (job_id is not None and live.job_id != job_id):
                return None
            live.stop = live.stop or stop or cancel
            live.cancel = live.cancel or cancel
            live.skips += int(skip)
            return live.job_id

    def steps(self, job_id: str) -> tuple[int, int]:
        """``(step, total)`` of ``job_id`` if it is running, else ``(0, 0)`` (no preview rendered)."""
        with self.lock:
            live = self._live
            return (live.step, live.total) if live is not None and live.job_id == job_id else (0, 0)

    def progress(self, queued: int) -> Progress:
        """A snapshot of the running job (with a preview image of its newest latent)."""
        with self.lock:
            live = self._live
            if live is None:
                return Progress(None, queued=queued)
            latent, family = live.latent, live.family
            snapshot = Progress(live.job_id, live.step, live.total, self.clock() - live.started, None, queued)
        if latent is None:
            return snapshot
        return Progress(**{**snapshot.__dict__, "preview": latent_preview(latent, family)})

    # -- the thread ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._warm_up()
            while not self._stopping.is_set():
                self._run_commands()
                record = self.store.claim_next(self.clock())
                if record is None:
                    self._wakeup.wait(timeout=1.0)
                    self._wakeup.clear()
                    continue
                try:
                    self._execute(record)
                except Exception:  # the store failed (disk full, I/O error): keep serving, retry later
                    log.exception("worker: job %s could not be recorded", record.id)
                    self._stopping.wait(1.0)
        finally:
            with self._commands_lock:
                self._accepting = False  # from now on callers run their commands themselves
            self._run_commands()  # and none that was queued is left without an answer

    def _run_commands(self) -> None:
        """Every queued command, in order."""
        while True:
            with self._commands_lock:
                if not self._commands:
                    return
                command, future = self._commands.popleft()
            _complete(future, command)

    def _warm_up(self) -> None:
        """Load the default checkpoint so the first job does not pay for it; sets :attr:`ready`. A file
        that fails to load is logged and skipped (the manager remembers it): the next one becomes the
        default, so one bad file never keeps the server from being ready."""
        for _ in range(len(self.manager.checkpoints()) + 1):
            try:
                self.manager.load(None)
            except ModelFileError as e:
                log.warning("checkpoint skipped: %s", e)
                continue
            except Exception as e:  # no usable checkpoint: the server still answers, /readyz says why
                first_line = str(e).splitlines()[0] if str(e).strip() else repr(e)
                self.ready_error = f"default checkpoint not loaded: {first_line}"
                log.warning("%s", self.ready_error)
                return
            self.ready_error = None
            self.ready.set()
            return
        self.ready_error = "default checkpoint not loaded: every checkpoint failed to load"

    def _execute(self, record: JobRecord) -> None:
        started = self.clock()
        with self.lock:
            self._live = _Live(record.id, started)
        self.events.publish(JobEvent(EventType.STARTED, record.id, started, status=JobStatus.RUNNING))
        try:
            outcome = self._outcome(record)
        except _Requeue:
            self._discard(record.id)
            self.store.requeue(record.id)
            log.info("job %s returned to the queue (server stopping)", record.id)
            return
        finally:
            with self.lock:
                self._live = None
        if outcome.status is not JobStatus.DONE:
            self._discard(record.id)
        self.durations = [*self.durations[-19:], self.clock() - started]
        kind = {JobStatus.DONE: EventType.DONE, JobStatus.CANCELLED: EventType.CANCELLED}
        image_ids = tuple(i.ref.id for i in outcome.images)
        self.events.publish(
            JobEvent(
                kind.get(outcome.status, EventType.FAILED), record.id, outcome.finished_at, step=outcome.step,
                total=outcome.total, status=outcome.status, error=outcome.error, image_ids=image_ids,
            )
        )  # fmt: skip

    def _outcome(self, record: JobRecord) -> Outcome:
        """Run the job and record how it ended (the store transaction is the commit point)."""
        try:
            if self._flag("cancel"):
                outcome = self._ended(JobStatus.CANCELLED, error="cancelled before it started")
            else:
                produced = self._produce(record)
                if self._flag("cancel"):
                    outcome = self._ended(JobStatus.CANCELLED, error="cancelled while running")
                elif self._stopping.is_set() and produced.interrupted:
                    raise _Requeue
                else:
                    images = self._write(record, produced.outputs)
                    outcome = self._ended(
                        JobStatus.DONE,
                        images=images,
                        warnings=produced.warnings,
                        interrupted=produced.interrupted,
                        facts=produced.facts,
                    )
        except _Requeue:
            raise
        except Exception as e:  # any job failure (bad file, OOM, NaN) fails that job, never the worker
            log.exception("job %s failed", record.id)
            outcome = self._ended(JobStatus.FAILED, error=_describe(e, record.id))
        self.store.finish(record.id, outcome)
        return outcome

    def _flag(self, name: str) -> bool:
        with self.lock:
            return self._live is not None and bool(getattr(self._live, name))

    def _ended(
        self,
        status: JobStatus,
        *,
        images: Sequence[StoredImage] = (),
        warnings: Sequence[str] = (),
        interrupted: bool = False,
        error: str | None = None,
        facts: GenerationFacts | None = None,
    ) -> Outcome:
        with self.lock:
            step, total = (self._live.step, self._live.total) if self._live else (0, 0)
        return Outcome(
            status=status,
            finished_at=self.clock(),
            step=total if status is JobStatus.DONE and not interrupted else step,
            total=total,
            images=list(images),
            warnings=list(warnings),
            error=error,
            interrupted=interrupted,
            facts=facts,
        )

    def _produce(self, record: JobRecord) -> _Produced:
        """Run the job's spec: a generation through the pipeline, or extras."""
        spec = record.spec
        if isinstance(spec, ExtrasSpec):
            return self._extras(record.id, spec)
        result, identity = self._generate(record.id, spec)
        outputs = [
            _Output(image, result.seeds[i], result.subseeds[i], text, text)
            for i, (image, text) in enumerate(zip(result.images, result.infotexts, strict=True))
        ]
        facts = GenerationFacts(
            model_name=identity.name, model_hash=identity.shorthash, vae_name=identity.vae_name,
            vae_hash=identity.vae_hash, all_seeds=tuple(result.all_seeds),
            all_subseeds=tuple(result.all_subseeds),
            extra_generation_params=result.extra_generation_params,
            inpainting_conditioning=result.inpainting_conditioning,
        )  # fmt: skip
        return _Produced(outputs, result.warnings, result.interrupted, facts)

    def _extras(self, job_id: str, spec: ExtrasSpec) -> _Produced:
        """Each image through ``run_extras`` in order, one step each; a stop request (interrupt, cancel,
        shutdown) ends the job after the current image."""
        total = len(spec.images)
        with self.lock:
            if self._live is not None:
                self._live.total, self._live.started = total, self.clock()
        outputs: list[_Output] = []
        for image in spec.images:
            if self._flag("stop"):
                break
            result = run_extras(image, spec.options, upscalers=self.upscalers, faces=self.faces)
            text = result.postprocessing
            outputs.append(_Output(result.image, -1, -1, text, result.parameters, text))
            with self.lock:
                if self._live is not None:
                    self._live.step = len(outputs)
            self.events.publish(
                JobEvent(EventType.STEP, job_id, self.clock(), step=len(outputs), total=total)
            )
        return _Produced(outputs, interrupted=len(outputs) < total)

    def _generate(self, job_id: str, spec: JobSpec) -> tuple[GenerationResult, ModelIdentity]:
        """The job through the pipeline (safety-filtered when the setting is on), and the identity of the
        model that ran it."""
        components = self.manager.load(spec.checkpoint, vae=spec.vae)
        info = self.manager.find(spec.checkpoint) if spec.checkpoint else self.manager.default_checkpoint()
        identity = model_identity(self.manager, info, components)
        with self.lock:
            if self._live is not None:
                self._live.family = components.info.family
                self._live.started = self.clock()
        control = StepControl(should_stop=lambda: self._flag("stop"), should_skip=self._take_skip)
        hires_model = self._hires_model(spec)
        result = run(
            spec.params,
            components,
            identity=identity,
            on_step=lambda step: self._on_step(job_id, components, step),
            control=control,
            embeddings=self.manager.embeddings(components),
            cache=self._cache,
            loras=self.manager.lora_networks,
            upscaler=self._upscale,
            hires_model=hires_model,
        )
        return self._safety_filtered(result), identity

    def _hires_model(self, spec: JobSpec) -> HiresModel | None:
        """The hires fix's own checkpoint (A1111 ``hr_checkpoint_name``) with the job's VAE choice, when the
        job names one; the pipeline checks its family."""
        name = spec.params.hr_checkpoint
        if not spec.params.enable_hr or name is None:
            return None
        info = self.manager.find(name)
        components = self.manager.load(info, vae=spec.vae)
        return HiresModel(components, model_identity(self.manager, info))

    def _safety_filtered(self, result: GenerationResult) -> GenerationResult:
        """With the ``safety_checker`` setting, flagged images are blacked out and named in the warnings."""
        folder = self.manager.settings.safety_checker
        if folder is None:
            return result
        if self._safety is None:
            self._safety = SafetyChecker(folder, device=self.manager.device)
        checked = self._safety.check(result.images)
        flagged = [f"image {i + 1} was flagged by the safety checker and blacked out"
                   for i, bad in enumerate(checked.flagged) if bad]  # fmt: skip
        return dataclasses.replace(result, images=checked.images, warnings=[*result.warnings, *flagged])

    def _upscale(self, image: Image.Image, name: str, width: int, height: int) -> Image.Image:
        """The hires fix's pixel upscaler: built-in resamplers or a model from the upscaler folders."""
        return upscale(image, name, size=(width, height), registry=self.upscalers)

    def _take_skip(self) -> bool:
        with self.lock:
            if self._live is None or self._live.skips == 0:
                return False
            self._live.skips -= 1
            return True

    def _on_step(self, job_id: str, components: Components, step: StepInfo) -> None:
        latent = step.latent[:1].detach().to("cpu", torch.float32, copy=True)
        with self.lock:
            if self._live is not None:
                self._live.step, self._live.total, self._live.latent = step.step, step.total, latent
        preview = None
        every = self.preview_every
        if self.events.has_subscribers and every > 0 and (step.step % every == 0 or step.step == step.total):
            image = latent_preview(latent, components.info.family)
            image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
            preview = png_bytes(image, None)
        event = JobEvent(
            EventType.STEP, job_id, self.clock(), step=step.step, total=step.total, preview_png=preview
        )
        self.events.publish(event)

    def _write(self, record: JobRecord, outputs: Sequence[_Output]) -> list[StoredImage]:
        """Each PNG with its text chunks, written whole or not at all, under ``images/<job id>/``."""
        stored = []
        for index, out in enumerate(outputs):
            ref = ImageRef(uuid.uuid4().hex, index, out.seed, out.subseed, out.infotext)
            relative = (
                f"{record.id}/{index:03d}-{out.seed}.png" if out.seed >= 0 else f"{record.id}/{index:03d}.png"
            )
            png = png_bytes(out.image, out.parameters, postprocessing=out.postprocessing)
            private_dir((self.images_root / relative).parent)
            write_atomic(self.images_root / relative, png)  # 0600
            stored.append(StoredImage(ref, relative))
        return stored

    def _discard(self, job_id: str) -> None:
        """Remove whatever images a job that did not finish wrote."""
        shutil.rmtree(self.images_root / job_id, ignore_errors=True)


def _complete(future: Future[T], command: Callable[[], T]) -> None:
    """Run ``command`` into ``future`` (unless the caller gave up on it already)."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = command()
    except BaseException as e:  # the caller gets it; the worker goes on after an Exception
        future.set_exception(e)
        if not isinstance(e, Exception):
            raise
        return
    future.set_result(result)


# Failures whose message is written for the user (a file named with its reason, a missing model, NaN
# latents, a resource limit); anything else is a bug, and its Python message never reaches a client.
_EXPLAINED: tuple[type[BaseException], ...] = (
    ModelFileError, ModelNotFoundError, NaNLatentError, FieldError, UpscalerNotFoundError, UpscalerLoadError,
    FaceRestorerError, SafetyCheckerError, torch.OutOfMemoryError,
)  # fmt: skip
INTERNAL_ERROR = "internal error: the job failed unexpectedly; the server log has the details"


def _describe(error: Exception, job_id: str) -> str:
    """A one-line message for the job record: an explained failure's own message, else a stable text
    (the traceback goes to the server log, under the job's id)."""
    if isinstance(error, _EXPLAINED) and str(error).strip():
        return str(error).strip().splitlines()[0]
    return f"{INTERNAL_ERROR} (job {job_id})"
