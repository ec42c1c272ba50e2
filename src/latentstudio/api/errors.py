"""Errors as 4xx JSON that name the field: FastAPI's ``{"detail": [{"loc", "msg", "type"}]}`` shape (every
layer's refusal is a :class:`~latentstudio.core.FieldError`; :func:`field_error` answers it).

Validation errors never echo the rejected input back (it may be a 50 MB base64 string).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from latentstudio.core import FieldError
from latentstudio.jobs import JobNotFoundError, NoCheckpointError, QueueFullError


def field_error(error: FieldError) -> JSONResponse:
    """A refused field as FastAPI's 422 for one field of the request body (a dotted field is a nested
    ``loc``): the one place an HTTP answer is made from a :class:`FieldError`."""
    loc = ["body", *error.field.split(".")]
    return JSONResponse(
        {"detail": [{"loc": loc, "msg": error.message, "type": "value_error"}]}, status_code=422
    )


def install_error_handlers(app: FastAPI) -> None:
    """Map validation and job errors to status codes (the worker's own failures live in job records)."""

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(FieldError)
    async def bad_field(_: Request, exc: FieldError) -> JSONResponse:
        return field_error(exc)

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
