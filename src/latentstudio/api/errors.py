"""Errors as 4xx JSON that name the field: FastAPI's ``{"detail": [{"loc", "msg", "type"}]}`` shape.

Validation errors never echo the rejected input back (it may be a 50 MB base64 string).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from latentstudio.jobs import JobNotFoundError, JobSpecError, NoCheckpointError, QueueFullError
from latentstudio.pipeline.params import ParamError


class InputError(ValueError):
    """A request field the handler rejected after schema validation (bad image data, size limits)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def field_error(field: str, message: str, status: int = 422) -> JSONResponse:
    """The 422 body for one field of the request body."""
    loc = ["body", *field.split(".")]
    return JSONResponse({"detail": [{"loc": loc, "msg": message, "type": "value_error"}]}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Map validation and job errors to status codes (the worker's own failures live in job records)."""

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(InputError)
    async def bad_input(_: Request, exc: InputError) -> JSONResponse:
        return field_error(exc.field, exc.message)

    @app.exception_handler(ParamError)
    async def bad_param(_: Request, exc: ParamError) -> JSONResponse:
        return field_error(exc.field, str(exc).split(": ", 1)[-1])

    @app.exception_handler(JobSpecError)
    async def bad_spec(_: Request, exc: JobSpecError) -> JSONResponse:
        return field_error(exc.field, str(exc).split(": ", 1)[-1])

    @app.exception_handler(JobNotFoundError)
    async def not_found(_: Request, exc: JobNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(NoCheckpointError)
    async def no_checkpoint(_: Request, exc: NoCheckpointError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"{exc}; add one and call /sdapi/v1/refresh-checkpoints"}, status_code=503
        )

    @app.exception_handler(QueueFullError)
    async def queue_full(_: Request, exc: QueueFullError) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)}
        )
