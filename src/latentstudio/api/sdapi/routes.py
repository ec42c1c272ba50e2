"""The ``/sdapi/v1`` generation, extras, progress, control and options endpoints.

Synchronous like A1111's: txt2img / img2img / extras queue a job on the shared job service and answer when
it ends. The waiting holds no thread (``async`` handlers await the job's terminal event; only the short
queueing and response building run in the thread pool), so any number of waiting calls leave progress /
interrupt / skip, health and the UI answering. A client that disconnects leaves its job running, as in
A1111. Unlike A1111, overlapping calls queue instead of racing, and each call gets its own job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import partial
from typing import Annotated, Any, TypeVar

from anyio import to_thread
from fastapi import APIRouter, Body, HTTPException, Query
from fastapi.responses import JSONResponse
from PIL import Image

from latentstudio.api.common import ExtrasBase, extras_spec
from latentstudio.api.control_units import parse_units
from latentstudio.api.imageio import decode_image, encode_png_base64
from latentstudio.api.sdapi import extras, listing, response
from latentstudio.api.sdapi import options as opts
from latentstudio.api.sdapi.convert import Prepared, control_args, prepare
from latentstudio.api.sdapi.models import (
    ExtrasBatchRequest,
    ExtrasBatchResponse,
    ExtrasSingleRequest,
    ExtrasSingleResponse,
    GenerationRequest,
    GenerationResponse,
    Img2ImgRequest,
    ProgressResponse,
    ProgressState,
    Txt2ImgRequest,
)
from latentstudio.api.sdapi.pasting import apply_infotext
from latentstudio.api.state import Services, ServicesDep
from latentstudio.core import FieldError
from latentstudio.jobs import ImageRef, JobRecord, JobSpec, JobStatus

router = APIRouter(tags=["A1111 compatible"])
T = TypeVar("T")
WAIT_SECONDS = 6 * 3600.0
_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"description": "A field was refused; `detail[].loc` names it."},
    429: {"description": "The queue is full (Retry-After)."},
    500: {"description": "The job failed (A1111's error envelope)."},
}


async def _in_thread(svc: Services, work: Callable[[], T]) -> T:
    """``work()`` in a pool thread of the job calls' own limiter (:attr:`Services.job_calls`)."""
    return await to_thread.run_sync(work, limiter=svc.job_calls)


def _failure(status: int, error: str, detail: str) -> JSONResponse:
    """A1111's error envelope ``{error, detail, body, errors}``."""
    return JSONResponse({"error": error, "detail": detail, "body": "", "errors": detail}, status_code=status)


async def _generate(
    svc: Services, req: GenerationRequest, decode_init: bool = False
) -> GenerationResponse | JSONResponse:
    """Options → infotext → checks → queue (in a pool thread) → wait (no thread) → A1111's response."""
    prepared, job_id, req = await _in_thread(svc, lambda: _queue(svc, req, decode_init))
    done = await _finished(svc, job_id)
    if isinstance(done, JSONResponse):
        return done
    maps = done.detected_maps
    return await _in_thread(
        svc, lambda: response.build(prepared, done, _pngs(svc, done.pictures), req, _pngs(svc, maps))
    )


def _decode(svc: Services, data: str, field: str) -> Image.Image:
    return decode_image(data, field, max_pixels=svc.settings.max_image_pixels)


def _queue(
    svc: Services, req: GenerationRequest, decode_init: bool
) -> tuple[Prepared, str, GenerationRequest]:
    """Options → infotext → checks → queue: the prepared request, its job's id and the request with the
    pasted infotext applied."""
    store = opts.OptionsStore(svc.settings.data_dir)
    stored = store.load()
    req = apply_infotext(req, stored)
    images = []
    if decode_init and isinstance(req, Img2ImgRequest) and req.init_images:
        images = [decode_image(req.init_images[0], "init_images.0", max_pixels=svc.settings.max_image_pixels)]
    mask = latent_mask = None
    if decode_init and isinstance(req, Img2ImgRequest) and req.mask:
        mask = decode_image(req.mask, "mask", max_pixels=svc.settings.max_image_pixels)
        if req.latent_mask:  # A1111 ignores a latent mask without a mask
            latent_mask = _decode(svc, req.latent_mask, "latent_mask")
    firstpass = None  # A1111 reads it only with enable_hr
    if isinstance(req, Txt2ImgRequest) and req.enable_hr and req.firstpass_image:
        firstpass = _decode(svc, req.firstpass_image, "firstpass_image")
    where, args = control_args(req)
    units, indices = parse_units(args, where, partial(_decode, svc))
    upscalers = [u.name for u in svc.jobs.upscalers()] if req.script_name else []
    catalog = listing.catalog(svc.manager, svc.settings, upscalers)
    control = (units, indices, where)
    prepared = prepare(
        req, stored, catalog, images, mask, control=control, latent_mask=latent_mask, firstpass=firstpass
    )
    try:
        record = svc.jobs.submit(prepared.spec)
    except FieldError as e:  # the models the spec names, checked by the service: A1111's field names
        raise FieldError(prepared.request_field(e.field), e.message) from None
    store.update(prepared.persist)
    return prepared, record.id, req


async def _finished(svc: Services, job_id: str) -> JobRecord | JSONResponse:
    """Wait for the job without a thread: its record once done, else A1111's error envelope (failed,
    cancelled, timeout)."""
    record = await svc.jobs.wait_async(job_id, WAIT_SECONDS, limiter=svc.job_calls)
    if record.status is JobStatus.FAILED:
        return _failure(500, "JobFailed", record.error or "the job failed")
    if record.status is JobStatus.CANCELLED:
        return _failure(409, "JobCancelled", f"job {record.id} was cancelled")
    if record.status is not JobStatus.DONE:
        return _failure(
            504, "Timeout", f"job {record.id} is still {record.status}; see /api/v1/jobs/{record.id}"
        )
    return record


def _pngs(svc: Services, images: Sequence[ImageRef]) -> list[bytes]:
    return [svc.jobs.image_path(image.id).read_bytes() for image in images]


@router.post("/txt2img", response_model=GenerationResponse, responses=_ERRORS, summary="Text to image")
async def txt2img(req: Txt2ImgRequest, svc: ServicesDep) -> GenerationResponse | JSONResponse:
    return await _generate(svc, req)


@router.post(
    "/img2img",
    response_model=GenerationResponse,
    responses={**_ERRORS, 404: {"description": "Init image not found"}},
    summary="Image to image",
)
async def img2img(req: Img2ImgRequest, svc: ServicesDep) -> GenerationResponse | JSONResponse:
    if not req.init_images:
        raise HTTPException(404, "Init image not found")
    return await _generate(svc, req, decode_init=True)


async def _extras(
    svc: Services, req: ExtrasBase, decode: Callable[[], list[Image.Image]]
) -> JobRecord | JSONResponse:
    """Decode the images and queue the extras job in a pool thread (names and sizes are checked there:
    422 naming the field), then wait for it without one."""

    def queue() -> str:
        return svc.jobs.submit(extras_spec(req, decode())).id

    done = await _finished(svc, await _in_thread(svc, queue))
    if isinstance(done, JobRecord) and not done.images:
        return _failure(409, "JobInterrupted", f"job {done.id} was interrupted before its first image")
    return done


@router.post(
    "/extra-single-image", response_model=ExtrasSingleResponse, responses=_ERRORS, summary="Upscale an image"
)
async def extra_single_image(
    req: ExtrasSingleRequest, svc: ServicesDep
) -> ExtrasSingleResponse | JSONResponse:
    """An extras job: upscalers (built-in or model files), then GFPGAN / CodeFormer when their visibility
    is > 0. The PNG keeps its ``parameters`` and gains a ``postprocessing`` entry."""
    limit = svc.settings.max_image_pixels
    done = await _extras(svc, req, lambda: [decode_image(req.image, "image", max_pixels=limit)])
    if isinstance(done, JSONResponse):
        return done
    image_b64 = await _in_thread(svc, lambda: extras.encode(_pngs(svc, done.images)[0]))
    return ExtrasSingleResponse(html_info=extras.html_info(done.infotexts), image=image_b64)


@router.post(
    "/extra-batch-images", response_model=ExtrasBatchResponse, responses=_ERRORS, summary="Upscale images"
)
async def extra_batch_images(req: ExtrasBatchRequest, svc: ServicesDep) -> ExtrasBatchResponse | JSONResponse:
    """One extras job for all the images, processed in order with the same options."""
    if not req.imageList:
        raise FieldError("imageList", "no images to process")
    limit = svc.settings.max_image_pixels

    def decode() -> list[Image.Image]:
        return [
            decode_image(f.data, f"imageList.{i}.data", max_pixels=limit) for i, f in enumerate(req.imageList)
        ]

    done = await _extras(svc, req, decode)
    if isinstance(done, JSONResponse):
        return done
    images = await _in_thread(svc, lambda: [extras.encode(png) for png in _pngs(svc, done.images)])
    return ExtrasBatchResponse(html_info=extras.html_info(done.infotexts), images=images)


def _progress_state(svc: Services, skip_image: bool) -> ProgressResponse:
    """A1111's progress arithmetic over the running job's batches (``n_iter``)."""
    progress = svc.jobs.progress()
    if progress.job_id is None:
        return ProgressResponse(progress=0.0, eta_relative=0.0, state=ProgressState())
    record = svc.jobs.get(progress.job_id)
    n_iter = record.spec.params.n_iter if isinstance(record.spec, JobSpec) else 1
    per_batch = progress.total // n_iter if progress.total else 0
    job_no = min((progress.step - 1) // per_batch, n_iter - 1) if per_batch and progress.step > 0 else 0
    step = progress.step - job_no * per_batch
    fraction = 0.01 + job_no / n_iter + (step / per_batch / n_iter if per_batch else 0.0)
    fraction = min(fraction, 1.0)
    eta = progress.elapsed / fraction - progress.elapsed
    state = ProgressState(
        job=f"Batch {job_no + 1} out of {n_iter}" if n_iter > 1 else "",
        job_count=n_iter,
        job_timestamp=response.timestamp(record.started_at),
        job_no=job_no,
        sampling_step=step,
        sampling_steps=per_batch,
    )
    image = None
    if progress.preview is not None and not skip_image:
        image = encode_png_base64(progress.preview, None)
    return ProgressResponse(progress=fraction, eta_relative=max(0.0, eta), state=state, current_image=image)


@router.get("/progress", response_model=ProgressResponse, summary="Progress of the running job")
def progress(
    svc: ServicesDep,
    skip_current_image: Annotated[bool, Query(description="Leave out the preview image.")] = False,
) -> ProgressResponse:
    """``progress`` 0–1, ``eta_relative`` seconds, A1111's ``state``, a preview (base64 PNG)."""
    return _progress_state(svc, skip_current_image)


@router.post("/interrupt", summary="Stop the running job after its current step (it keeps its images)")
def interrupt(svc: ServicesDep) -> dict[str, Any]:
    svc.jobs.interrupt()
    return {}


@router.post("/skip", summary="End the running job's current batch")
def skip(svc: ServicesDep) -> None:
    svc.jobs.skip()


@router.get("/options", summary="Every setting with its current value")
def get_options(svc: ServicesDep) -> dict[str, Any]:
    return listing.option_view(opts.OptionsStore(svc.settings.data_dir).load(), svc.manager)


@router.post("/options", responses={422: _ERRORS[422]}, summary="Change settings (persisted)")
def set_options(body: Annotated[dict[str, Any], Body()], svc: ServicesDep) -> None:
    """Checked key by key: unknown keys, wrong types, unknown checkpoints / VAEs and values of settings this
    server does not implement are refused with 422 (nothing is stored then). ``sd_checkpoint_hash`` is
    read-only and ignored."""
    values = {k: v for k, v in body.items() if k != "sd_checkpoint_hash"}
    checked = opts.check(values)
    checked = listing.catalog(svc.manager, svc.settings).check_models(checked, "")
    opts.OptionsStore(svc.settings.data_dir).update(checked)


@router.get("/cmd-flags", summary="Start-up flags (never credentials)")
def cmd_flags(svc: ServicesDep) -> dict[str, Any]:
    return listing.cmd_flags(svc.settings)


@router.post("/unload-checkpoint", summary="Drop loaded checkpoints from memory")
async def unload_checkpoint(svc: ServicesDep) -> dict[str, Any]:
    """The next job loads its checkpoint again. The worker unloads after the running job, if any (it keeps
    the one it has); the call answers then, holding no thread meanwhile."""
    await asyncio.wrap_future(svc.jobs.unload_models())
    return {}


@router.post("/reload-checkpoint", summary="No-op: the next job loads its checkpoint")
def reload_checkpoint() -> dict[str, Any]:
    return {}


@router.get("/memory", summary="RAM and CUDA memory")
def memory() -> dict[str, Any]:
    return listing.memory()
