"""``/healthz`` (the process answers) and ``/readyz`` (the worker runs and the default model is loaded)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from latentstudio.api.schemas import Health
from latentstudio.api.state import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """Always 200 while the process serves HTTP (no store or model access)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Not ready yet (or no usable checkpoint)."}},
    summary="Readiness",
)
async def readyz(svc: ServicesDep) -> Health | JSONResponse:
    """200 once the default checkpoint is loaded; 503 with the reason before that."""
    if svc.jobs.ready:
        return Health(status="ok")
    body = Health(status="unavailable", detail=svc.jobs.not_ready_reason)
    return JSONResponse(body.model_dump(), status_code=503)
