"""``build_app(settings)``: :func:`latentstudio.api.create_app` plus the web UI (unless ``settings.ui`` is
off), whose :class:`~latentstudio.server.ui_backend.SdapiBackend` reaches the services the lifespan builds."""

from __future__ import annotations

from fastapi import FastAPI

from latentstudio.api import create_app
from latentstudio.api.security import CredentialsError, parse_credentials
from latentstudio.api.state import app_services
from latentstudio.config import Settings


def build_app(settings: Settings) -> FastAPI:
    """The server ``latentstudio serve`` runs: the APIs, and the web UI at ``/`` when ``settings.ui``."""
    if not settings.ui:
        return create_app(settings)
    return create_app(settings, mount=lambda app: _mount_ui(app, settings))


def credentials_problem(settings: Settings) -> str | None:
    """What is wrong with ``settings.api_auth`` (None when it is unset or well formed), checked before
    anything is served."""
    if settings.api_auth is None:
        return None
    try:
        parse_credentials(settings.api_auth.get_secret_value())
    except CredentialsError as e:
        return str(e)
    return None


def _mount_ui(app: FastAPI, settings: Settings) -> None:
    """The web UI at ``/``; its backend reaches the services the lifespan hook builds."""
    from latentstudio.server.ui_backend import SdapiBackend, option_fields, script_fields
    from latentstudio.ui import mount_ui

    backends: dict[int, SdapiBackend] = {}

    def backend() -> SdapiBackend:
        services = app_services(app)
        found = backends.get(id(services))
        if found is None:
            backends.clear()
            found = backends[id(services)] = SdapiBackend(services)
        return found

    mount_ui(
        app,
        backend,
        option_fields(settings),
        settings.data_dir / "images",
        max_image_pixels=settings.max_image_pixels,
        scripts=script_fields(),
    )
