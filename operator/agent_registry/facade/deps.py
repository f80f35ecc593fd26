"""Request dependencies, as ``Annotated`` aliases routes declare as parameters.

Order matters and FastAPI keeps it: authentication first (an anonymous caller learns
nothing, not even that its body is invalid), then the namespace, then the agent and the
RBAC check for it, done so that only a caller allowed on every agent of the namespace can
tell an unknown id (404) from one it may not touch (403).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agent_registry.facade.auth import Caller
from agent_registry.facade.errors import ApiError, bad_request, not_found
from agent_registry.facade.reads import Located
from agent_registry.facade.state import Registry
from agent_registry.schema.agent import DNS_LABEL_PATTERN

# Ids are issued lowercase; an uppercase spelling of the same UUID is accepted and folded.
AGENT_ID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

# Declared for the OpenAPI document (and the docs page's "Authorize" button); the header is
# read by ``authenticated`` itself, so a malformed one gets a precise 401.
_BEARER = HTTPBearer(
    auto_error=False,
    description="A Kubernetes bearer token (e.g. `kubectl create token <service-account>`); RBAC on `agents` decides.",
)


async def get_registry(request: Request) -> Registry:
    # async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a thread
    # hand-off on every request (measured: docs/performance.md).
    registry: Registry = request.app.state.registry
    return registry


RegistryDep = Annotated[Registry, Depends(get_registry)]


async def authenticated(
    request: Request,
    registry: RegistryDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
) -> Caller:
    return await registry.auth.authenticate(request.headers.get("authorization"))


CallerDep = Annotated[Caller, Depends(authenticated)]


async def current_namespace(
    registry: RegistryDep,
    namespace: Annotated[
        str | None,
        Query(
            pattern=DNS_LABEL_PATTERN,
            max_length=63,
            description="Namespace of the agents; the registry's configured namespace when omitted.",
        ),
    ] = None,
) -> str:
    chosen = namespace or registry.settings.namespace
    if not registry.settings.namespace_allowed(chosen):
        served = ", ".join(registry.settings.allowed_namespaces)
        raise bad_request(f"namespace {chosen!r} is not served by this registry (it serves: {served})")
    return chosen


NamespaceDep = Annotated[str, Depends(current_namespace)]


def _may(verb: str) -> Callable[..., Awaitable[Caller]]:
    async def allowed(registry: RegistryDep, caller: CallerDep, namespace: NamespaceDep) -> Caller:
        await registry.auth.authorize(caller, verb, namespace)
        return caller

    return allowed


MayList = Annotated[Caller, Depends(_may("list"))]


async def _may_read_metrics(registry: RegistryDep, caller: CallerDep) -> Caller:
    # The metrics cover every namespace served; the facade's own namespace decides, as it
    # does for ``GET /agents`` without ``?namespace=``.
    await registry.auth.authorize(caller, "list", registry.settings.namespace)
    return caller


MayReadMetrics = Annotated[Caller, Depends(_may_read_metrics)]
"""A caller that may list the agents of the facade's namespace, hence read the metrics on the API port."""

AgentIdPath = Annotated[str, Path(pattern=AGENT_ID_PATTERN, description="The agent's id (a UUID).")]


async def known_agent(
    registry: Registry, caller: Caller, namespace: str, agent_id: str, verb: str, subresource: str | None = None
) -> Located:
    """The agent with this id, if ``caller`` may ``verb`` it; 404 when unknown to a caller who
    may ``verb`` every agent of the namespace, 403 for anyone else."""
    agent_id = agent_id.lower()
    located = await registry.reads.locate(namespace, agent_id)
    try:
        # An unknown id is asked about the whole namespace: only a caller allowed on every
        # agent there may learn that the id names none. A Role that lists resourceNames
        # allows nothing namespace-wide, so its holder gets 403 for unknown ids and for
        # agents not listed alike, and cannot probe which ids exist.
        name = located.name if located is not None else None
        await registry.auth.authorize(caller, verb, namespace, name=name, subresource=subresource)
    except ApiError as exc:
        if exc.status != 403:
            raise
        raise _refused(caller, verb, subresource, namespace, agent_id) from None
    if located is None:
        raise not_found()
    return located


def _known_agent(verb: str, subresource: str | None = None) -> Callable[..., Awaitable[Located]]:
    async def known(
        registry: RegistryDep, caller: CallerDep, namespace: NamespaceDep, agent_id: AgentIdPath
    ) -> Located:
        return await known_agent(registry, caller, namespace, agent_id, verb, subresource)

    return known


def _refused(caller: Caller, verb: str, subresource: str | None, namespace: str, agent_id: str) -> ApiError:
    """The same 403 whether the id names an agent or not: it carries nothing the caller did
    not send (not the agent's name, nor a reason RBAC gave for that name)."""
    resource = "agents" + (f"/{subresource}" if subresource else "")
    return ApiError(403, f"{caller.user} may not {verb} {resource} in namespace {namespace!r} (agent id {agent_id})")


ReadableAgent = Annotated[Located, Depends(_known_agent("get"))]
"""The agent named by the path's id, which the caller may read; 404 when unknown to a caller
who may read every agent of the namespace, 403 for anyone else."""

HeartbeatingAgent = Annotated[Located, Depends(_known_agent("patch", "status"))]
"""The agent named by the path's id, whose status the caller may patch (as a sidecar does)."""

DeletableAgent = Annotated[Located, Depends(_known_agent("delete"))]
