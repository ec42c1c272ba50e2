"""Running one claimed job on the worker thread, from its start event to the store transaction recording it.

Each job: load the checkpoint through the ModelManager → ``pipeline.run`` with a StepControl wired to
interrupt/skip/cancel → PNGs written atomically into ``images/<job id>/`` → one store transaction marks the
job done and indexes its images → events. An extras job takes the same path with
``postprocess.extras.run_extras`` over its images (one step per image; interrupt/cancel act between images)
and the runner's upscaler registry and face restorers. A job that fails fails alone, with a message safe
to show (:func:`_describe`); a job interrupted because the server stops goes back to the queue.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from latentstudio.control.library import ControlLibrary, ControlModelNotFoundError
from latentstudio.core import FieldError
from latentstudio.jobs.events import EventBus
from latentstudio.jobs.live import LiveJob
from latentstudio.jobs.model import (
    EventType,
    ExtrasSpec,
    GenerationFacts,
    ImageRef,
    JobEvent,
    JobRecord,
    JobSpec,
    JobStatus,
)
from latentstudio.jobs.store import JobStore, Outcome, StoredImage
from latentstudio.models.files import ModelFileError
from latentstudio.models.loader import Components
from latentstudio.models.manager import ModelManager, ModelNotFoundError
from latentstudio.pipeline.images import png_bytes, write_atomic
from latentstudio.pipeline.infotexts import ModelIdentity, model_identity
from latentstudio.pipeline.params import ResolvedParams
from latentstudio.pipeline.run import (
    GenerationResult,
    HiresModel,
    NaNLatentError,
    StepInfo,
    latent_preview,
    run,
)
from latentstudio.pipeline.scripts import JOB_MODEL, Model, ScriptContext, run_script
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


class JobRunner:
    """Runs claimed jobs one at a time on ``manager``'s device and records how each ended.

    Only the worker thread calls :meth:`execute`; ``live`` is how other threads see and steer the running
    job, and ``stopping`` (set when the server stops) sends an interrupted job back to the queue.
    """

    def __init__(
        self,
        store: JobStore,
        manager: ModelManager,
        events: EventBus,
        images_root: Path,
        *,
        live: LiveJob,
        stopping: threading.Event,
        preview_every: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.manager = manager
        self.events = events
        self.images_root = images_root
        self.live = live
        self.stopping = stopping
        self.preview_every = preview_every
        self.clock = clock
        self._cache = ConditioningCache()
        # pixel upscalers (hires fix, extras) and face restorers (extras): folders scanned on first use,
        # models loaded on first use; the job service reads their listings to check names at submission
        self.upscalers = UpscalerRegistry(manager.settings.models_dir, device=manager.device)
        self.faces = FaceRestorers(manager.settings.models_dir, device=manager.device)
        # ControlNet / T2I-Adapter files: listed anew on each use, loaded once and kept (the service checks
        # units' model names and families against it at submission)
        self.controls = ControlLibrary(
            manager.settings.models_dir, manager.device, manager.dtype, manager.builtin_control_files
        )
        self._safety: SafetyChecker | None = None  # built on the first job when the setting is on
        self.durations: list[float] = []  # recent job wall times, newest last (for Retry-After)

    def execute(self, record: JobRecord) -> None:
        """Run the claimed job ``record`` and record it (done, failed, cancelled, or back in the queue)."""
        started = self.clock()
        self.live.begin(record.id, started)
        self.events.publish(JobEvent(EventType.STARTED, record.id, started, status=JobStatus.RUNNING))
        try:
            outcome = self._outcome(record)
        except _Requeue:
            self._discard(record.id)
            self.store.requeue(record.id)
            log.info("job %s returned to the queue (server stopping)", record.id)
            return
        finally:
            self.live.end()
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
            if self.live.flag("cancel"):
                outcome = self._ended(JobStatus.CANCELLED, error="cancelled before it started")
            else:
                produced = self._produce(record)
                if self.live.flag("cancel"):
                    outcome = self._ended(JobStatus.CANCELLED, error="cancelled while running")
                elif self.stopping.is_set() and produced.interrupted:
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
        """How the running job ended, with its step count as of now (all steps when it is done whole)."""
        step, total = self.live.counts()
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
        # after the images, without seeds or infotext: JobRecord.detected_maps
        outputs += [_Output(image, -1, -1, "", None) for image in result.detected_maps]
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
        with self.live.locked() as live:
            if live is not None:
                live.total, live.started = total, self.clock()
        outputs: list[_Output] = []
        for image in spec.images:
            if self.live.flag("stop"):
                break
            result = run_extras(image, spec.options, upscalers=self.upscalers, faces=self.faces)
            text = result.postprocessing
            outputs.append(_Output(result.image, -1, -1, text, result.parameters, text))
            with self.live.locked() as live:
                if live is not None:
                    live.step = len(outputs)
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
        with self.live.locked() as live:
            if live is not None:
                live.family = components.info.family
                live.started = self.clock()
        control = StepControl(should_stop=lambda: self.live.flag("stop"), should_skip=self.live.take_skip)
        hires_model = self._hires_model(spec)

        def generate(
            params: ResolvedParams, index: int = 0, count: int = 1, model: Model = JOB_MODEL
        ) -> GenerationResult:
            """One generation; progress as generation ``index`` of ``count`` (a script runs several), with
            the job's model or the ``(checkpoint, VAE)`` a script names."""
            used = components
            if model != JOB_MODEL:
                used = self.manager.load(model[0] or spec.checkpoint, vae=model[1] or spec.vae)

            def on_step(step: StepInfo) -> None:
                whole = dataclasses.replace(
                    step, step=index * step.total + step.step, total=count * step.total
                )
                self._on_step(job_id, used, whole)

            named = identity if used is components else self._identity(model, spec, used)
            return run(
                params, used, identity=named, on_step=on_step, control=control,
                embeddings=self.manager.embeddings(used), cache=self._cache,
                loras=self.manager.lora_networks, upscaler=self._upscale, hires_model=hires_model,
                hypernetworks=self.manager.hypernetworks,
                controls=[self.controls.load(self.controls.find(unit.model), used.unet)
                          for unit in params.control],
                annotator_roots=self.controls.annotator_roots,
            )  # fmt: skip

        if spec.params.script is None:
            return self._safety_filtered(generate(spec.params)), identity
        context = ScriptContext(
            generate=generate,
            upscale=lambda image, name, scale: upscale(image, name, scale=scale, registry=self.upscalers),
            upscalers=[u.name for u in self.upscalers.list()],
            stopped=lambda: self.live.flag("stop"),
        )
        return self._safety_filtered(run_script(spec.params, context)), identity

    def _identity(self, model: Model, spec: JobSpec, components: Components) -> ModelIdentity:
        """How the infotext names a model a script chose (its checkpoint, else the job's)."""
        name = model[0] or spec.checkpoint
        info = self.manager.find(name) if name else self.manager.default_checkpoint()
        return model_identity(self.manager, info, components)

    def _hires_model(self, spec: JobSpec) -> HiresModel | None:
        """The hires fix's own checkpoint (A1111 ``hr_checkpoint_name``) with the job's VAE choice, when the
        job names one; the pipeline checks its family."""
        name = spec.params.hires.checkpoint if spec.params.hires is not None else None
        if name is None:
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

    def _on_step(self, job_id: str, components: Components, step: StepInfo) -> None:
        """Keep the step and newest latent for progress; publish a step event (with a preview every
        ``preview_every`` steps and at the last, while anyone listens)."""
        latent = step.latent[:1].detach().to("cpu", torch.float32, copy=True)
        with self.live.locked() as live:
            if live is not None:
                live.step, live.total, live.latent = step.step, step.total, latent
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


# Failures whose message is written for the user (a file named with its reason, a missing model, NaN
# latents, a resource limit); anything else is a bug, and its Python message never reaches a client.
_EXPLAINED: tuple[type[BaseException], ...] = (
    ModelFileError, ModelNotFoundError, NaNLatentError, FieldError, UpscalerNotFoundError, UpscalerLoadError,
    FaceRestorerError, SafetyCheckerError, torch.OutOfMemoryError, ControlModelNotFoundError,
)  # fmt: skip
INTERNAL_ERROR = "internal error: the job failed unexpectedly; the server log has the details"


def _describe(error: Exception, job_id: str) -> str:
    """A one-line message for the job record: an explained failure's own message, else a stable text
    (the traceback goes to the server log, under the job's id)."""
    if isinstance(error, _EXPLAINED) and str(error).strip():
        return str(error).strip().splitlines()[0]
    return f"{INTERNAL_ERROR} (job {job_id})"
