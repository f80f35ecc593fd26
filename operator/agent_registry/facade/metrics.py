"""Prometheus metrics of the facade, served at ``GET /metrics`` on their own port (``metrics_port``),
or on the API port behind authentication when that is 0.

Requests are labelled by route template (``/agents/{agent_id}``), never by the raw path,
so the number of series does not grow with the number of agents.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_NS = "agent_registry_facade"

REGISTRY = CollectorRegistry(auto_describe=True)
"""The facade's own registry, as the operator has one: the scrape shows the facade's series,
never whatever a library in the process registers on prometheus_client's global one."""

# The process, platform and GC series the global registry carried before (RSS, CPU, open
# files, GC counts) stay in the scrape.
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

REQUESTS = Counter(f"{_NS}_requests_total", "HTTP requests answered.", ["method", "route", "status"], registry=REGISTRY)
LATENCY = Histogram(
    f"{_NS}_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(f"{_NS}_requests_in_flight", "HTTP requests being answered.", registry=REGISTRY)
OPERATIONS = Counter(
    f"{_NS}_operations_total", "Registry operations by outcome.", ["operation", "outcome"], registry=REGISTRY
)
HEARTBEAT_WRITES = Counter(
    f"{_NS}_heartbeat_writes_total",
    "What REST heartbeats wrote: the agent's Lease (a renewal), or the Agent's status (its "
    "report changed, or the Lease could not be used).",
    ["write"],
    registry=REGISTRY,
)
READS = Counter(
    f"{_NS}_reads_total",
    "Where reads were answered from: the index, the API server (index unavailable or missing "
    "the agent), or this process's own recent writes.",
    ["source"],
    registry=REGISTRY,
)
FALLBACK_LISTS = Counter(
    f"{_NS}_fallback_lists_total",
    "LISTs of every agent of a namespace, shared by the queries that fell back to them.",
    registry=REGISTRY,
)
QUERIES_REJECTED = Counter(
    f"{_NS}_queries_rejected_total",
    "Reads answered 429: the queue for a turn was full, or the wait for one too long.",
    registry=REGISTRY,
)
INDEX_ERRORS = Counter(f"{_NS}_index_errors_total", "Reads the Redis index could not answer.", registry=REGISTRY)
KUBE_ERRORS = Counter(f"{_NS}_kube_unavailable_total", "API-server calls that got no useful answer.", registry=REGISTRY)
AUTH = Counter(f"{_NS}_auth_total", "Authentication and authorisation outcomes.", ["result"], registry=REGISTRY)
WATCHES_OPEN = Gauge(f"{_NS}_watches_open", "Watch streams (GET /agents/watch) open.", registry=REGISTRY)
WATCHES_REJECTED = Counter(
    f"{_NS}_watches_rejected_total", "Watches answered 429: as many were open as allowed.", registry=REGISTRY
)
WATCHES_DROPPED = Counter(
    f"{_NS}_watches_dropped_total",
    "Watch streams ended because their client took in changes too slowly (it resumes with Last-Event-ID).",
    registry=REGISTRY,
)
WATCH_CHANGES = Counter(
    f"{_NS}_watch_changes_total", "Changes read from the change feed, by kind.", ["kind"], registry=REGISTRY
)
DEPENDENCY_UP = Gauge(
    f"{_NS}_dependency_up",
    "Whether a dependency answered the last readiness check.",
    ["dependency"],
    registry=REGISTRY,
)


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve(port: int, host: str) -> Callable[[], None]:
    """Serve the metrics on ``host:port`` from a thread of their own; returns what stops it.

    A thread rather than a second server on the event loop: a scrape then costs the API
    nothing but the rendering, and a slow scraper holds no connection slot of the API.
    Raises ``OSError`` when the port is taken, which fails the start-up.
    """
    server, thread = start_http_server(port, host, registry=REGISTRY)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


class MetricsMiddleware:
    """Counts and times every request, including those answered by error handlers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            IN_FLIGHT.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = str(scope.get("method", ""))
            REQUESTS.labels(method=method, route=template, status=str(status)).inc()
            LATENCY.labels(method=method, route=template).observe(time.perf_counter() - started)
