"""Builds the FastAPI application."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from agent_registry.facade import errors, metrics
from agent_registry.facade.fastpath import FastReads
from agent_registry.facade.limits import BodySizeLimit, QueryLimit
from agent_registry.facade.metrics import MetricsMiddleware
from agent_registry.facade.routes import agents, events, health, ui
from agent_registry.facade.routes import metrics as metrics_route
from agent_registry.facade.settings import FacadeSettings
from agent_registry.facade.state import Registry

logger = logging.getLogger(__name__)

DESCRIPTION = """\
The original agent registry's REST API over Kubernetes `Agent` objects.

Agents register, heartbeat and unregister; orchestrators discover agents by type and
capability and route to healthy ones. Every agent is an `Agent` custom resource
(`kubectl get agents`); reads come from the operator's Redis index and fall back to the
API server. Errors are always `{"error": "..."}`.
"""


def create_app(settings: FacadeSettings | None = None, registry: Registry | None = None) -> FastAPI:
    """The application; ``registry`` is built from ``settings`` at start-up unless given."""
    settings = settings or FacadeSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = registry or Registry.from_settings(settings)
        app.state.registry = state
        stop_metrics = metrics.serve(settings.metrics_port, settings.host) if settings.metrics_port else None
        if stop_metrics is not None:
            logger.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
        else:
            logger.info("metrics on the API port at /metrics, behind the same check as GET /agents")
        if not settings.auth_enabled:
            logger.warning(
                "AUTHENTICATION IS DISABLED (AGENT_REGISTRY_FACADE_AUTH_ENABLED=false): anyone who reaches "
                "this port can register, heartbeat and delete agents; use this only for local development"
            )
        logger.info(
            "facade serving namespace %r (API server %s, index %s under prefix %r)",
            settings.namespace,
            state.kube.server,
            _redacted(settings.redis_url),
            settings.redis_key_prefix,
        )
        try:
            yield
        finally:
            if stop_metrics is not None:
                await asyncio.to_thread(stop_metrics)
            await state.aclose()

    app = FastAPI(
        title="Agent Registry",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        # Existing agents send JSON; a body without a Content-Type is read as JSON too
        # (``curl -d`` without ``-H``), as the original registry did.
        strict_content_type=False,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(agents.router)
    app.include_router(events.router)
    app.include_router(ui.router)
    if not settings.metrics_port:
        app.include_router(metrics_route.router)
    # Added last runs first: metrics see every answer, including the limits' 413 and 429;
    # the discovery reads are answered past the limits, before the framework's routing.
    app.add_middleware(FastReads)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        QueryLimit,
        max_queries=settings.max_concurrent_queries,
        max_waiting=settings.max_queued_queries,
        max_wait_seconds=settings.query_queue_seconds,
    )
    app.add_middleware(MetricsMiddleware)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, adjusted to say what the API really does: validation errors are
    400 (not FastAPI's 422), and lists the CRD declares as sets have unique items."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    _mark_sets(schema)
    return schema


def _mark_sets(node: Any) -> None:
    # Structural CRD schemas may not use uniqueItems, so the models say
    # x-kubernetes-list-type: set; plain JSON Schema readers need uniqueItems.
    if isinstance(node, dict):
        if node.get("x-kubernetes-list-type") == "set":
            node["uniqueItems"] = True
        for value in node.values():
            _mark_sets(value)
    elif isinstance(node, list):
        for value in node:
            _mark_sets(value)


def _redacted(url: str) -> str:
    # redis://:password@host -> redis://***@host
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
