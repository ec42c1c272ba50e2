"""The app state request handlers reach: :class:`Services`, built in the lifespan hook."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from latentstudio.config import Settings
from latentstudio.jobs import JobService
from latentstudio.models.manager import ModelManager
from latentstudio.storage import private_dir


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


def get_services(request: Request) -> Services:
    """The app's :class:`Services` (a FastAPI dependency)."""
    return app_services(request.app)


ServicesDep = Annotated[Services, Depends(get_services)]
