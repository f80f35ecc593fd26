"""The discovery reads without the framework's per-request work.

``GET /agents``, ``/agents/healthy``, ``/agents/route``, ``/agents/type/{type}`` and
``/agents/{id}`` are what orchestrators call on every task. Answered through FastAPI, most
of each one's CPU went to resolving its dependencies and parameters, not to the lookup
(docs/performance.md). This middleware answers them directly when the request is one the
routes would accept as it is: known parameters only, each within the routes' limits.
Anything else (a parameter out of bounds, an unknown one, a namespace not served, HEAD)
goes on to the routes, so every validation error is still written in one place, by
FastAPI and ``errors``. What a request may see is decided by the same functions the routes
use (authentication, RBAC, the agent lookup), and errors are rendered the same way.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from agent_registry.facade import etags, versions
from agent_registry.facade.deps import AGENT_ID_PATTERN, known_agent
from agent_registry.facade.errors import ApiError
from agent_registry.facade.routes.agents import MAX_ROUTE_KEY_LENGTH
from agent_registry.facade.state import Registry
from agent_registry.index.reader import wire_json
from agent_registry.schema import constants as c
from agent_registry.schema.agent import DNS_LABEL_PATTERN
from agent_registry.schema.card import MAX_SKILL_ID_LENGTH, MAX_SKILLS

_AGENT_ID = re.compile(AGENT_ID_PATTERN)
_NAMESPACE = re.compile(DNS_LABEL_PATTERN)
_VERSION = re.compile(versions.PATTERN)
_STATUSES = frozenset({"healthy", "degraded", "unhealthy", "unreachable"})
_JSON = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class RouteTemplate:
    """What the metrics middleware labels a request with (``scope["route"].path``), as for a FastAPI route."""

    path: str


@dataclass
class Query:
    namespace: str
    agent_type: str | None = None
    capabilities: list[str] | None = None
    status: str | None = None
    skills: list[str] | None = None
    key: str | None = None
    version: str | None = None


Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
Handler = Callable[[Registry, Any, Query, str], Awaitable[bytes]]
_LISTS = frozenset({"/agents", "/agents/healthy", "/agents/type/{agent_type}"})


class FastReads:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        matched = _match(str(scope.get("path", "")))
        if matched is None:
            await self.app(scope, receive, send)
            return
        template, handler, allowed, path_value = matched
        registry: Registry = scope["app"].state.registry
        query = _query(scope, allowed, registry)
        if query is None or (template == "/agents/route" and query.agent_type is None):
            await self.app(scope, receive, send)  # the routes say what is wrong with it
            return
        scope["route"] = RouteTemplate(template)
        try:
            caller = await registry.auth.authenticate(_header(scope, b"authorization"))
            body = await handler(registry, caller, query, path_value)
            if template in _LISTS:
                status, body, headers = etags.list_answer(body, _header(scope, b"if-none-match"))
            else:
                status, headers = 200, list(_JSON)
        except ApiError as exc:
            status, body = exc.status, wire_json({"error": exc.message})
            headers = [*_JSON, *((k.lower().encode(), v.encode()) for k, v in exc.headers.items())]
        if status != 304:
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _list(registry: Registry, caller: Any, query: Query, status: str | None) -> bytes:
    await registry.auth.authorize(caller, "list", query.namespace)
    return await registry.reads.query_json(
        query.namespace, query.agent_type, query.capabilities or (), status, query.skills or ()
    )


async def _agents(registry: Registry, caller: Any, query: Query, _: str) -> bytes:
    return await _list(registry, caller, query, query.status)


async def _healthy(registry: Registry, caller: Any, query: Query, _: str) -> bytes:
    return await _list(registry, caller, query, "healthy")


async def _of_type(registry: Registry, caller: Any, query: Query, agent_type: str) -> bytes:
    query.agent_type = agent_type
    return await _list(registry, caller, query, None)


async def _route(registry: Registry, caller: Any, query: Query, _: str) -> bytes:
    await registry.auth.authorize(caller, "list", query.namespace)
    return await registry.reads.route_json(
        query.namespace, query.agent_type or "", query.capabilities or (), query.key, query.version
    )


async def _one(registry: Registry, caller: Any, query: Query, agent_id: str) -> bytes:
    located = await known_agent(registry, caller, query.namespace, agent_id, "get")
    return located.wire if located.wire is not None else wire_json(located.view.to_json())


_FILTERS = frozenset({"namespace", "type", "capability", "status", "skill"})
_STATIC: dict[str, tuple[Handler, frozenset[str]]] = {
    "/agents": (_agents, _FILTERS),
    "/agents/healthy": (_healthy, frozenset({"namespace", "type", "capability", "skill"})),
    "/agents/route": (_route, frozenset({"namespace", "type", "capability", "key", "version"})),
}


def _match(path: str) -> tuple[str, Handler, frozenset[str], str] | None:
    """The route template, its handler, the parameters it takes, and the path's value."""
    static = _STATIC.get(path)
    if static is not None:
        return path, static[0], static[1], ""
    if path.startswith("/agents/type/"):
        agent_type = path[len("/agents/type/") :]
        if agent_type and "/" not in agent_type:
            return "/agents/type/{agent_type}", _of_type, frozenset({"namespace"}), agent_type
        return None
    if path.startswith("/agents/"):
        agent_id = path[len("/agents/") :]
        if _AGENT_ID.match(agent_id):
            return "/agents/{agent_id}", _one, frozenset({"namespace"}), agent_id
    return None


def _query(scope: Scope, allowed: frozenset[str], registry: Registry) -> Query | None:
    """The parameters, or None unless each is known here and within the routes' limits."""
    query = Query(registry.settings.namespace)
    raw = scope.get("query_string", b"")
    if not raw:
        return query
    capabilities: list[str] = []
    skills: list[str] = []
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if name not in allowed or not value:
            return None
        if name == "capability":
            if len(value) > c.MAX_CAPABILITY_LENGTH:
                return None
            capabilities.append(value)
        elif name == "skill":
            if len(value) > MAX_SKILL_ID_LENGTH:
                return None
            skills.append(value)
        elif name == "type":
            if query.agent_type is not None or len(value) > c.MAX_TYPE_LENGTH:
                return None
            query.agent_type = value
        elif name == "status":
            if query.status is not None or value not in _STATUSES:
                return None
            query.status = value
        elif name == "key":
            if query.key is not None or len(value) > MAX_ROUTE_KEY_LENGTH:
                return None
            query.key = value
        elif name == "version":
            if query.version is not None or len(value) > versions.MAX_CONSTRAINT_LENGTH or not _VERSION.match(value):
                return None
            query.version = value
        else:
            if len(value) > 63 or not _NAMESPACE.match(value) or not registry.settings.namespace_allowed(value):
                return None
            query.namespace = value
    if len(capabilities) > c.MAX_CAPABILITIES or len(skills) > MAX_SKILLS:
        return None
    query.capabilities = capabilities
    query.skills = skills
    return query


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None
