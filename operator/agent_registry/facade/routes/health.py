"""Liveness (``/health``: the process answers) and readiness (``/ready``: its dependencies do), open to
anyone: probes carry no token."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from agent_registry.facade.deps import RegistryDep
from agent_registry.facade.models import ReadyResponse
from agent_registry.schema.rest import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/health", summary="The process is alive")
async def health(registry: RegistryDep) -> HealthResponse:
    return HealthResponse(status="healthy", service=registry.settings.service_name, timestamp=datetime.now(UTC))


@router.get(
    "/ready",
    summary="The API server and the Redis index are reachable",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Neither the API server nor the index answers"}},
)
async def ready(registry: RegistryDep) -> JSONResponse:
    # Degraded is still ready: with one of the two up the facade answers something useful,
    # and both depend on shared services, so taking every replica out of the Service would
    # turn a partial outage into a total one.
    report = await registry.readiness()
    code = 503 if report.status == "unavailable" else 200
    return JSONResponse(report.model_dump(mode="json"), status_code=code)
