"""The app state request handlers reach: :class:`Services`, built in the lifespan hook."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from anyio import CapacityLimiter
from fastapi import Depends, FastAPI, Request

from latentstudio.config import Settings
from latentstudio.jobs import JobService
from latentstudio.models.manager import ModelManager
from latentstudio.storage import private_dir

JOB_CALL_THREADS = 4  # the blocking parts of calls that wait on jobs: more would only contend for the GIL


def _job_call_limiter() -> CapacityLimiter:
    return CapacityLimiter(JOB_CALL_THREADS)


@dataclass
class Services:
    """What request handlers reach through ``request.app.state.services``.

    ``manager`` is for listing files only (checkpoints, VAEs, embeddings): handlers never load models,
    the job worker does. Other routers may add fields (with defaults) and build them in
    :func:`build_services`.
    """

    settings: Settings
    manager: ModelManager
    jobs: JobService
    job_calls: CapacityLimiter = field(default_factory=_job_call_limiter)
    """Pool threads for the blocking parts (queueing, building the answer) of calls that wait on a job
    (``/sdapi/v1`` txt2img, img2img, extras): a burst of them waits here, never in front of progress,
    health or the UI in the shared thread pool."""


def build_services(settings: Settings) -> Services:
    """Model manager + job service for ``settings`` (the worker is started by the lifespan hook); the data
    dir is owner-only."""
    private_dir(settings.data_dir)
    manager = ModelManager(settings)
    return Services(settings=settings, manager=manager, jobs=JobService(settings, manager))


def app_services(app: FastAPI) -> Services:
    """``app.state.services``, set by the lifespan hook."""
    found = app.state.services
    if not isinstance(found, Services):
        raise RuntimeError("app.state.services is not set: was the app started with its lifespan?")
    return found


async def get_services(request: Request) -> Services:
    """The app's :class:`Services` (a FastAPI dependency; ``async`` so that resolving it never waits for a
    thread of the pool)."""
    return app_services(request.app)


ServicesDep = Annotated[Services, Depends(get_services)]
