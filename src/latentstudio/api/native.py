"""The native job API, ``/api/v1``: submit, watch, cancel and page through jobs, fetch images by id, and
stream events (Server-Sent Events).

Handlers are plain ``def`` (FastAPI runs them in its thread pool), so store reads never block the
event loop; the ones that wait for a job (the long poll, cancel, interrupt) and the event stream are
``async`` and hold no thread while they wait.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import FileResponse, StreamingResponse

from latentstudio.api.common import INPAINT_FIELDS, extras_spec
from latentstudio.api.control_units import enabled_units
from latentstudio.api.imageio import decode_image
from latentstudio.api.schemas import (
    ExtrasJob,
    ExtrasParameters,
    ImageView,
    Img2ImgJob,
    JobCreated,
    JobPage,
    JobParameters,
    JobRequest,
    JobView,
    Txt2ImgJob,
)
from latentstudio.api.state import Services, ServicesDep
from latentstudio.core import FieldError
from latentstudio.jobs import ExtrasSpec, JobEvent, JobKind, JobRecord, JobSpec, JobStatus
from latentstudio.pipeline.params import GenerationParams, Hires, Inpaint, Policy, ResizeMode
from latentstudio.samplers.noise import RngSource

router = APIRouter(prefix="/api/v1", tags=["jobs"])
KEEPALIVE_SECONDS = 15.0
CANCEL_WAIT_SECONDS = 10.0


def job_spec(
    payload: Txt2ImgJob | Img2ImgJob, max_side: int, max_pixels: int, native_size: int, source: str = "api"
) -> JobSpec:
    """A validated request → a frozen spec with every default and both seeds resolved; a size left out is
    ``native_size`` (the checkpoint's)."""
    width, height = payload.width or native_size, payload.height or native_size
    init = None
    extra: dict[str, object] = {}
    if isinstance(payload, Img2ImgJob):
        init = decode_image(payload.init_image, "init_image", max_pixels=max_pixels)
        extra = {
            "denoising_strength": payload.denoising_strength,
            "resize_mode": ResizeMode(payload.resize_mode),
            "color_correction": payload.color_correction,
        }
        if payload.mask is not None:
            extra["inpaint"] = Inpaint(
                decode_image(payload.mask, "mask", max_pixels=max_pixels), blur=payload.mask_blur,
                fill=payload.inpainting_fill, only_masked=payload.inpaint_full_res,
                padding=payload.inpaint_full_res_padding, invert=payload.inpainting_mask_invert,
            )  # fmt: skip
    elif payload.hires is not None:
        extra["hires"] = Hires(**payload.hires.model_dump())
    units, indices = enabled_units(
        payload.control, "control", lambda data, field: decode_image(data, field, max_pixels=max_pixels)
    )
    params = GenerationParams(
        prompt=payload.prompt, negative_prompt=payload.negative_prompt, sampler=payload.sampler,
        scheduler=payload.scheduler, steps=payload.steps, cfg_scale=payload.cfg_scale, seed=payload.seed,
        subseed=payload.subseed, subseed_strength=payload.subseed_strength,
        seed_resize_from_w=payload.seed_resize_from_w, seed_resize_from_h=payload.seed_resize_from_h,
        width=width, height=height, batch_size=payload.batch_size, n_iter=payload.n_iter,
        clip_skip=payload.clip_skip, eta=payload.eta, s_noise=payload.s_noise, rng=RngSource(payload.rng),
        eta_noise_seed_delta=payload.eta_noise_seed_delta, emphasis=payload.emphasis, init_image=init,
        control=units, **extra,  # type: ignore[arg-type]
    )  # fmt: skip
    try:
        resolved = params.resolved(Policy(max_side=max_side))
    except FieldError as e:  # the img2img mask fields are flat in this API; units by their list index
        raise FieldError(native_field(e.field, indices), e.message) from None
    kind = JobKind.IMG2IMG if init is not None else JobKind.TXT2IMG
    return JobSpec(kind, resolved, checkpoint=payload.checkpoint, vae=payload.vae, source=source)


def native_field(field: str, indices: Sequence[int]) -> str:
    """This API's name of a :class:`GenerationParams` field: flat mask fields; ``control.<i>`` is the
    i-th enabled unit, named by its place in the request's ``control`` list."""
    head, _, rest = field.partition(".")
    index, _, inner = rest.partition(".")
    if head == "control" and index.isdigit() and int(index) < len(indices):
        return f"control.{indices[int(index)]}" + (f".{inner}" if inner else "")
    return INPAINT_FIELDS.get(field, field)


def job_view(record: JobRecord, position: int | None = None, now: float | None = None) -> JobView:
    """The API view of a job record."""
    eta = None
    if record.status is JobStatus.RUNNING and record.started_at is not None and record.step > 0:
        elapsed = (now or time.time()) - record.started_at
        fraction = record.fraction
        eta = max(0.0, elapsed / fraction - elapsed)
    maps = set(record.detected_maps)
    images = [
        ImageView(
            id=i.id,
            url=f"/api/v1/images/{i.id}",
            seed=i.seed,
            subseed=i.subseed,
            infotext=i.infotext,
            detected_map=i in maps,
        )
        for i in record.images
    ]
    spec = record.spec
    return JobView(
        id=record.id, kind=spec.kind, status=record.status, source=spec.source,
        created_at=record.created_at, started_at=record.started_at, finished_at=record.finished_at,
        queue_position=position, step=record.step, total=record.total, progress=record.fraction,
        eta_seconds=eta, interrupted=record.interrupted, images=images, infotexts=record.infotexts,
        warnings=list(record.warnings), error=record.error,
        params=_parameters(spec) if isinstance(spec, JobSpec) else None,
        extras=ExtrasParameters(
            images=len(spec.images), **dataclasses.asdict(spec.options)
        ) if isinstance(spec, ExtrasSpec) else None,
    )  # fmt: skip


def _parameters(spec: JobSpec) -> JobParameters:
    params = spec.params
    return JobParameters(
        prompt=params.prompt, negative_prompt=params.negative_prompt, sampler=params.sampler,
        scheduler=params.scheduler, steps=params.steps, cfg_scale=params.cfg_scale, seed=params.seed,
        subseed=params.subseed, subseed_strength=params.subseed_strength, width=params.width,
        height=params.height, batch_size=params.batch_size, n_iter=params.n_iter, clip_skip=params.clip_skip,
        denoising_strength=params.denoising_strength if params.is_img2img else None,
        checkpoint=spec.checkpoint, vae=spec.vae,
    )  # fmt: skip


@router.post(
    "/jobs", status_code=202, response_model=JobCreated, summary="Queue a txt2img, img2img or extras job"
)
def create_job(payload: Annotated[JobRequest, Body()], svc: ServicesDep) -> JobCreated:
    """Validate, resolve the seeds and queue; 429 with Retry-After when the queue is full. An extras job
    (upscalers, face restorers) takes the fields of A1111's ``extra-single-image`` and a list of images."""
    settings = svc.settings
    spec: JobSpec | ExtrasSpec
    if isinstance(payload, ExtrasJob):
        limit = settings.max_image_pixels
        images = [decode_image(b64, f"images.{i}", max_pixels=limit) for i, b64 in enumerate(payload.images)]
        spec = extras_spec(payload, images, source="api")
    else:
        spec = job_spec(payload, settings.max_side, settings.max_image_pixels, _native_size(svc, payload))
    try:
        record = svc.jobs.submit(spec)  # a FieldError names the request's field (hires.checkpoint…)
    except FieldError as e:
        enabled = (
            [] if isinstance(payload, ExtrasJob) else [i for i, u in enumerate(payload.control) if u.enabled]
        )
        raise FieldError(native_field(e.field, enabled), e.message) from None
    return JobCreated(id=record.id, status=record.status, url=f"/api/v1/jobs/{record.id}")


def _native_size(svc: Services, payload: Txt2ImgJob | Img2ImgJob) -> int:
    """The requested checkpoint's native side, when the request leaves a side out (read from the file's
    header; nothing is loaded)."""
    if payload.width is not None and payload.height is not None:
        return 0
    return svc.jobs.native_size(payload.checkpoint)


@router.get("/jobs/{job_id}", response_model=JobView, summary="A job: status, progress, ETA, results")
async def get_job(
    job_id: str,
    svc: ServicesDep,
    wait: Annotated[
        float, Query(ge=0.0, le=60.0, description="Long poll: wait up to this many seconds for the end.")
    ] = 0.0,
) -> JobView:
    if wait > 0:
        await svc.jobs.wait_async(job_id, wait)
    return await to_thread.run_sync(_current_view, svc, job_id)


def _current_view(svc: Services, job_id: str) -> JobView:
    """The job as it is now, with its queue position when queued."""
    record = svc.jobs.get(job_id)
    position = svc.jobs.position(job_id) if record.status is JobStatus.QUEUED else None
    return job_view(record, position)


@router.delete("/jobs/{job_id}", response_model=JobView, summary="Cancel a queued or running job")
async def cancel_job(job_id: str, svc: ServicesDep) -> JobView:
    """A queued job is cancelled at once; a running one stops at its next step (waited for up to 10 s;
    ``status`` says whether it has stopped yet). Finished jobs are returned unchanged."""
    record = await to_thread.run_sync(svc.jobs.cancel, job_id)
    if record.status is JobStatus.RUNNING:
        record = await svc.jobs.wait_async(job_id, CANCEL_WAIT_SECONDS)
    return job_view(record)


@router.post("/jobs/{job_id}/interrupt", response_model=JobView, summary="Stop a running job early")
async def interrupt_job(job_id: str, svc: ServicesDep) -> JobView:
    """A1111's interrupt for one job: it stops after the current step, decodes what it has and ends
    ``done`` with ``interrupted: true`` (waited for up to 10 s). Other states are returned unchanged."""
    record = await to_thread.run_sync(svc.jobs.get, job_id)
    if svc.jobs.interrupt(job_id) is not None:
        record = await svc.jobs.wait_async(job_id, CANCEL_WAIT_SECONDS)
    return job_view(record)


@router.get("/jobs", response_model=JobPage, summary="Job history, newest first")
def list_jobs(
    svc: ServicesDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobPage:
    records = svc.jobs.list(status, offset, limit)
    items = [job_view(r) for r in records]
    return JobPage(items=items, total=svc.jobs.count(status), offset=offset, limit=limit)


@router.get(
    "/images/{image_id}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}, "description": "The PNG, with its infotext."}},
    summary="An image by id (never by path)",
)
def get_image(image_id: str, svc: ServicesDep) -> FileResponse:
    path = svc.jobs.image_path(image_id)
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=31536000, immutable"}
    return FileResponse(path, media_type="image/png", headers=headers)


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events."}},
    summary="Event stream: queued, started, step (with a small preview every N steps), done, failed",
)
async def events(
    request: Request,
    svc: ServicesDep,
    job_id: Annotated[
        str | None, Query(max_length=64, description="Only this job; ends after it ends.")
    ] = None,
) -> StreamingResponse:
    """Each event is ``event: <type>`` with a JSON ``data`` line (``preview`` is a base64 PNG)."""
    subscription = svc.jobs.subscribe()
    try:
        record = svc.jobs.get(job_id) if job_id is not None else None
    except Exception:
        subscription.close()
        raise

    async def stream() -> AsyncIterator[str]:
        try:
            yield ": connected\n\n"
            if record is not None and record.status.terminal:
                yield _terminal_event(record)
                return
            while not await request.is_disconnected():
                event = await subscription.get(KEEPALIVE_SECONDS)
                if event is None:
                    yield ": keep-alive\n\n"
                elif job_id is None or event.job_id == job_id:
                    yield _sse(event)
                    if job_id is not None and event.status is not None and event.status.terminal:
                        return
        finally:
            subscription.close()

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def _sse(event: JobEvent) -> str:
    data = {
        "type": event.type.value, "job_id": event.job_id, "time": event.time, "step": event.step,
        "total": event.total, "status": event.status.value if event.status else None, "error": event.error,
        "image_ids": list(event.image_ids),
        "preview": base64.b64encode(event.preview_png).decode() if event.preview_png else None,
    }  # fmt: skip
    return f"event: {event.type.value}\ndata: {json.dumps(data)}\n\n"


def _terminal_event(record: JobRecord) -> str:
    from latentstudio.jobs import EventType

    kind = {JobStatus.DONE: EventType.DONE, JobStatus.CANCELLED: EventType.CANCELLED}
    event = JobEvent(
        kind.get(record.status, EventType.FAILED), record.id, record.finished_at or time.time(),
        step=record.step, total=record.total, status=record.status, error=record.error,
        image_ids=tuple(record.image_ids),
    )  # fmt: skip
    return _sse(event)
