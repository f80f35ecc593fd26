"""``GET /metrics`` on the API port, served only when ``metrics_port`` is 0 (otherwise the metrics
have a port of their own): behind the same check as ``GET /agents``."""

from __future__ import annotations

from fastapi import APIRouter, Response

from agent_registry.facade import metrics
from agent_registry.facade.deps import MayReadMetrics
from agent_registry.facade.errors import documented

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (a token that may list agents in the registry's namespace)",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics"},
        **documented(401, 403, 503),
    },
)
async def prometheus_metrics(_: MayReadMetrics) -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
