"""``create_app(settings) -> FastAPI``: the HTTP server's one entry point.

App state is built in the lifespan hook (never at import): the model manager, the job service and its
worker, kept in ``app.state.services``. Middleware, outermost first: CORS (only with
``cors_allow_origins``), HTTP Basic auth (only with ``api_auth``), the request-body limit, then whatever
``mount`` added (the web UI's, see :mod:`latentstudio.server`, which passes it; ``api`` never imports ``ui``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from latentstudio.api import health, native, sdapi
from latentstudio.api.errors import install_error_handlers
from latentstudio.api.sdapi.options import tile_upscalers_by_options
from latentstudio.api.security import BasicAuthMiddleware, BodyLimitMiddleware, parse_credentials
from latentstudio.api.state import Services, build_services, get_services
from latentstudio.config import Settings


def create_app(settings: Settings, mount: Callable[[FastAPI], None] | None = None) -> FastAPI:
    """The FastAPI app: native ``/api/v1``, ``/sdapi/v1`` (A1111), health; built per call, no globals.

    ``mount(app)`` runs after the API routes (which keep precedence) and before the server's middleware is
    added, so what it mounts and any middleware it adds sit inside auth and the body limit."""
    credentials = parse_credentials(settings.api_auth.get_secret_value()) if settings.api_auth else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_services(settings)
        tile_upscalers_by_options(state.jobs.worker.upscalers, settings.data_dir)
        state.jobs.start()
        app.state.services = state
        try:
            yield
        finally:
            state.jobs.stop()

    app = FastAPI(
        title="latentstudio",
        version=_version(),
        description="Stable Diffusion server: native job API (/api/v1), A1111-compatible API (/sdapi/v1).",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(native.router)
    app.include_router(sdapi.router)
    app.include_router(sdapi.controlnet_router)
    if mount is not None:
        mount(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if credentials is not None:
        app.add_middleware(BasicAuthMiddleware, credentials=credentials)
        _document_basic_auth(app)
    if settings.cors_allow_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_allow_origins),
            allow_methods=["*"],
            allow_headers=["*"],
            allow_credentials=True,
        )
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("latentstudio")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"


def _document_basic_auth(app: FastAPI) -> None:
    """Declare HTTP Basic on every operation in the OpenAPI schema (the middleware enforces it)."""
    original = app.openapi

    def openapi() -> dict[str, object]:
        schema = original()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["basic"] = {"type": "http", "scheme": "basic"}
        schema["security"] = [{"basic": []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["Services", "build_services", "create_app", "get_services"]
