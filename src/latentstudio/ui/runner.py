"""Watching one job for the UI: what the progress bar, the live preview and the gallery show over time.

``watch`` is an async generator over :class:`JobView` snapshots (no Gradio here) driven by the job event
bus: each event (a step of this job, any job queued, starting or ending, which moves the queue) leads to one
read of the job in a pool thread, so a page follows its job as the events come and holds no thread while it
waits for them.
"""

from __future__ import annotations

import html
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from anyio import to_thread
from PIL import Image

from latentstudio.jobs import EventType, JobRecord, JobService, JobSpec, JobStatus, Progress, Subscription

RECHECK_SECONDS = 1.0  # without events, the job is read again this often (the store stays the truth)


@dataclass(frozen=True)
class ResultImage:
    """One finished image: its PNG (with the infotext), seeds, infotext and its id in the image store."""

    path: str
    seed: int
    subseed: int
    infotext: str
    image_id: str


@dataclass(frozen=True)
class JobView:
    """One snapshot of a job for the page: ``progress_html`` for the bar, ``preview`` when a new one came."""

    job_id: str
    status: JobStatus
    progress_html: str
    preview: Image.Image | None = None
    results: tuple[ResultImage, ...] = ()
    message: str = ""  # warnings or the error, for the message box
    seed: int | None = None


def progress_html(record: JobRecord, position: int | None, elapsed: float) -> str:
    """The progress bar's HTML: queue position, or step/total with percent and ETA, or the outcome."""
    fraction = record.fraction
    if record.status is JobStatus.QUEUED:
        where = "next" if not position else f"position {position + 1}"
        text = f"Queued ({where})"
    elif record.status is JobStatus.RUNNING and record.total == 0:
        text = "Starting (loading the model)…"
    elif record.status is JobStatus.RUNNING:
        eta = elapsed / fraction - elapsed if fraction > 0 else None
        eta_text = f", ETA {eta:.1f} s" if eta is not None else ""
        text = f"Step {record.step}/{record.total} · {fraction * 100:.0f}%{eta_text}"
    elif record.status is JobStatus.DONE:
        took = (record.finished_at or 0) - (record.started_at or record.created_at)
        text = f"Done in {took:.1f} s" + (" (interrupted)" if record.interrupted else "")
        fraction = 1.0
    else:
        text = str(record.status.value).capitalize()
    percent = max(0.0, min(1.0, fraction)) * 100
    return (
        f'<div class="ls-progress" data-status="{record.status.value}" data-step="{record.step}" '
        f'data-total="{record.total}">'
        f'<div class="ls-progress-bar" style="width:{percent:.1f}%"></div>'
        f'<span class="ls-progress-text">{html.escape(text)}</span></div>'
    )


def results(jobs: JobService, record: JobRecord) -> tuple[ResultImage, ...]:
    """The images of a finished job, as PNG paths inside the images folder."""
    return tuple(
        ResultImage(str(jobs.image_path(image.id)), image.seed, image.subseed, image.infotext, image.id)
        for image in record.images
    )


async def watch(jobs: JobService, job_id: str, *, recheck: float = RECHECK_SECONDS) -> AsyncIterator[JobView]:
    """Snapshots of ``job_id`` until it ends (the last one carries the results or the error).

    A snapshot is yielded only when something visible changed: status, queue position, step, preview.
    Events that arrive together are read as one; without any, the job is read every ``recheck`` seconds.
    """
    shown: tuple[object, ...] | None = None
    preview_step = -1
    async with jobs.subscribe() as events:  # before the first read: no event is missed
        while True:
            record, position, live = await to_thread.run_sync(_read, jobs, job_id)
            if record.status.terminal:
                yield await to_thread.run_sync(_final, jobs, record)
                return
            preview = None
            if live is not None and live.preview is not None and live.step != preview_step:
                preview, preview_step = live.preview, live.step
            state = (record.status, position, record.step, preview_step)
            if state != shown or preview is not None:
                shown = state
                elapsed = time.time() - record.started_at if record.started_at else 0.0
                yield JobView(job_id, record.status, progress_html(record, position, elapsed), preview)
            await _next_change(events, job_id, recheck)


async def _next_change(events: Subscription, job_id: str, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for an event that may change what the page shows: one of this job,
    or any job queued, starting or ending (the queue moves); other jobs' steps are skipped."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        event = await events.get(left)
        if event is None:
            return
        if event.job_id == job_id or event.type is not EventType.STEP:
            events.drain()  # read once for all that came together
            return


def _read(jobs: JobService, job_id: str) -> tuple[JobRecord, int | None, Progress | None]:
    """The job, its queue position when queued, and the live progress (with a preview) when it runs."""
    record = jobs.get(job_id)
    position = jobs.position(job_id) if record.status is JobStatus.QUEUED else None
    live = None
    if record.status is JobStatus.RUNNING:
        progress = jobs.progress()
        live = progress if progress.job_id == job_id else None
    return record, position, live


def _final(jobs: JobService, record: JobRecord) -> JobView:
    bar = progress_html(record, None, 0.0)
    if record.status is JobStatus.DONE:
        seed = record.spec.params.seed if isinstance(record.spec, JobSpec) else None
        return JobView(
            record.id, record.status, bar, None, results(jobs, record), "\n".join(record.warnings), seed
        )
    message = record.error or ("Cancelled" if record.status is JobStatus.CANCELLED else "Failed")
    return JobView(record.id, record.status, bar, message=message)


def image_file(path: Path) -> Image.Image:
    """A result PNG from the image store (``JobService.image_path``), loaded for the "send to" buttons."""
    with Image.open(path) as image:
        image.load()
        return image.copy()
