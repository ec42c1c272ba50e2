"""Watching one job for the UI: what the progress bar, the live preview and the gallery show over time.

``watch`` is a plain generator over :class:`JobView` snapshots (no Gradio here), polled from the job service
every ``interval`` seconds, so the first progress update reaches the page within a poll of the job starting.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from latentstudio.jobs import JobRecord, JobService, JobSpec, JobStatus

POLL_SECONDS = 0.1


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


def watch(jobs: JobService, job_id: str, *, interval: float = POLL_SECONDS) -> Iterator[JobView]:
    """Snapshots of ``job_id`` until it ends (the last one carries the results or the error).

    A snapshot is yielded only when something visible changed: status, queue position, step, preview.
    """
    shown: tuple[object, ...] | None = None
    preview_step = -1
    while True:
        record = jobs.get(job_id)
        position = jobs.position(job_id) if record.status is JobStatus.QUEUED else None
        elapsed = time.time() - record.started_at if record.started_at else 0.0
        preview = None
        if record.status is JobStatus.RUNNING:
            live = jobs.progress()
            if live.job_id == job_id and live.preview is not None and live.step != preview_step:
                preview, preview_step = live.preview, live.step
        if record.status.terminal:
            yield _final(jobs, record)
            return
        state = (record.status, position, record.step, preview_step)
        if state != shown or preview is not None:
            shown = state
            yield JobView(job_id, record.status, progress_html(record, position, elapsed), preview)
        time.sleep(interval)


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
