"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from service.metrics import CONTENT_TYPE
from service.schemas import HealthResponse
from service.state import ServiceDep, ServiceState

router = APIRouter(tags=["health"])


def model_states(service: ServiceState) -> dict[str, str]:
    return {
        name: "ready" if name in service.models else ("loading" if service.loading == name else "pending")
        for name in service.settings.models
    }


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
async def healthz(service: ServiceDep) -> HealthResponse:
    return HealthResponse(status="alive", models=model_states(service))


@router.get(
    "/readyz",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse}},
    summary="Readiness: 200 once every configured model is loaded and warmed",
)
async def readyz(service: ServiceDep) -> Response:
    if service.ready:
        return JSONResponse(HealthResponse(status="ready", models=model_states(service)).model_dump())
    body = HealthResponse(status="not_ready", models=model_states(service), detail=service.not_ready_reason())
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "2"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)
