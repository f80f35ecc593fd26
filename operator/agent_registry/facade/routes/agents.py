"""``/agents``: the original registry's routes, unchanged, plus filters, healthy agents,
routing and agents' A2A cards.

Static routes come before ``/agents/{agent_id}`` so that ``/agents/healthy``,
``/agents/cards`` and ``/agents/watch`` are not read as ids.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import StringConstraints

from agent_registry.facade import etags, versions
from agent_registry.facade.deps import (
    CallerDep,
    DeletableAgent,
    HeartbeatingAgent,
    MayList,
    NamespaceDep,
    ReadableAgent,
    RegistryDep,
)
from agent_registry.facade.errors import documented, not_found
from agent_registry.facade.models import UNREGISTERED, MessageResponse
from agent_registry.facade.watch import WatchFilter, open_watch
from agent_registry.index.changes import POSITION_PATTERN
from agent_registry.schema import constants as c
from agent_registry.schema.card import MAX_SKILL_ID_LENGTH, MAX_SKILLS, AgentCard
from agent_registry.schema.rest import (
    AgentListResponse,
    AgentView,
    CardCatalogue,
    HeartbeatRequest,
    HeartbeatResponse,
    RegistrationRequest,
    RegistrationResponse,
)

router = APIRouter(prefix="/agents", tags=["agents"])

RestStatus = Literal["healthy", "degraded", "unhealthy", "unreachable"]
# Filters are not validated against the type and capability patterns: a value that no
# agent can have simply matches nothing, as in the original registry.
TypeFilter = Annotated[
    str | None,
    Query(alias="type", max_length=c.MAX_TYPE_LENGTH, description="Only agents of this type."),
]
CapabilityFilter = Annotated[
    list[Annotated[str, StringConstraints(max_length=c.MAX_CAPABILITY_LENGTH)]],
    Query(
        alias="capability",
        max_length=c.MAX_CAPABILITIES,
        description="Only agents with this capability; repeat it and all must match.",
    ),
]
StatusFilter = Annotated[RestStatus | None, Query(alias="status", description="Only agents in this status.")]
SkillFilter = Annotated[
    list[Annotated[str, StringConstraints(max_length=MAX_SKILL_ID_LENGTH)]],
    Query(
        alias="skill",
        max_length=MAX_SKILLS,
        description="Only agents whose A2A card has a skill with this id; repeat it and all must match.",
    ),
]

_READ_ERRORS = documented(400, 401, 403, 503)
MAX_ROUTE_KEY_LENGTH = 256


def _list(request: Request, body: bytes) -> Response:
    status, content, headers = etags.list_answer(body, request.headers.get("if-none-match"))
    return Response(content, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


@router.post(
    "/register",
    status_code=201,
    summary="Register an agent, or update the one of the same name (same id)",
    responses=documented(400, 401, 403, 404, 409, 413, 503),
)
async def register(
    registry: RegistryDep, caller: CallerDep, namespace: NamespaceDep, body: RegistrationRequest
) -> RegistrationResponse:
    return await registry.writes.register(caller, namespace, body)


@router.get("", summary="List agents, optionally filtered", response_model=AgentListResponse, responses=_READ_ERRORS)
async def list_agents(
    request: Request,
    registry: RegistryDep,
    _: MayList,
    namespace: NamespaceDep,
    agent_type: TypeFilter = None,
    capabilities: CapabilityFilter = [],  # noqa: B006 - FastAPI copies defaults per request
    status: StatusFilter = None,
    skills: SkillFilter = [],  # noqa: B006
) -> Response:
    return _list(request, await registry.reads.query_json(namespace, agent_type, capabilities, status, skills))


@router.get(
    "/healthy",
    summary="List healthy agents, optionally filtered",
    response_model=AgentListResponse,
    responses=_READ_ERRORS,
)
async def healthy_agents(
    request: Request,
    registry: RegistryDep,
    _: MayList,
    namespace: NamespaceDep,
    agent_type: TypeFilter = None,
    capabilities: CapabilityFilter = [],  # noqa: B006
    skills: SkillFilter = [],  # noqa: B006
) -> Response:
    return _list(request, await registry.reads.query_json(namespace, agent_type, capabilities, "healthy", skills))


@router.get(
    "/cards",
    summary="The A2A cards of healthy agents, optionally filtered, so an A2A client finds its peers",
    response_model=CardCatalogue,
    responses=_READ_ERRORS,
)
async def agent_cards(
    request: Request,
    registry: RegistryDep,
    _: MayList,
    namespace: NamespaceDep,
    agent_type: TypeFilter = None,
    capabilities: CapabilityFilter = [],  # noqa: B006
    skills: SkillFilter = [],  # noqa: B006
) -> Response:
    return _list(request, await registry.cards.catalogue_json(namespace, agent_type, capabilities, skills))


@router.get(
    "/watch",
    summary="Changes to the agents a query matches, as Server-Sent Events: a snapshot, then one event per change",
    response_class=Response,
    responses={
        200: {
            "description": (
                "`text/event-stream`. Unless resuming: `event: snapshot` (the list answer). Then `registered`, "
                "`updated`, `phase` (with `previous_status`) and `removed` (with `deleted`: false when the agent "
                'only stopped matching), each `{"type", "agent"}` with an `id:` to resume from; `relist` '
                "(drop what you hold, a snapshot follows); `: keep-alive` comments. Heartbeats that change "
                "nothing else are not events; with `heartbeats=true`, `heartbeats` events carry their times."
            ),
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **documented(400, 401, 403, 429, 503),
    },
)
async def watch_agents(
    request: Request,
    registry: RegistryDep,
    _: MayList,
    namespace: NamespaceDep,
    agent_type: TypeFilter = None,
    capabilities: CapabilityFilter = [],  # noqa: B006
    status: StatusFilter = None,
    skills: SkillFilter = [],  # noqa: B006
    since: Annotated[
        str | None,
        Query(
            pattern=POSITION_PATTERN,
            description="Resume after this event id instead of starting with a snapshot (as the `Last-Event-ID` "
            "header does; the header wins).",
        ),
    ] = None,
    heartbeats: Annotated[
        bool,
        Query(
            description='Also send `event: heartbeats` every keep-alive period: `{"last_seen": {id: time}}` '
            "of the matching agents (heartbeats that change nothing else are not events)."
        ),
    ] = False,
) -> Response:
    view = WatchFilter(namespace, agent_type, tuple(capabilities), status, tuple(skills))

    async def snapshot() -> bytes:
        return await registry.reads.query_json(namespace, agent_type, capabilities, status, skills)

    resume = request.headers.get("last-event-id")
    beats = snapshot if heartbeats else None
    return await open_watch(registry.watches, registry.settings, view, snapshot, resume, since, beats)


@router.get(
    "/route",
    summary="Pick one healthy agent of a type with the given capabilities usable, the least loaded of two "
    "when agents report load, else round robin; or the one a key sticks to",
    response_model=AgentView,
    responses=documented(400, 401, 403, 404, 503),
)
async def route(
    registry: RegistryDep,
    _: MayList,
    namespace: NamespaceDep,
    agent_type: Annotated[str, Query(alias="type", max_length=c.MAX_TYPE_LENGTH, description="The agent type.")],
    capabilities: CapabilityFilter = [],  # noqa: B006
    key: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_ROUTE_KEY_LENGTH,
            description="Sticky routing: the same key gets the same agent while that agent stays eligible.",
        ),
    ] = None,
    version: Annotated[
        str | None,
        Query(
            max_length=versions.MAX_CONSTRAINT_LENGTH,
            pattern=versions.PATTERN,
            description="Only agents whose version satisfies this: PEP 440 specifiers such as '>=1.4,<2', "
            "or '^1.4' / '~1.4'.",
        ),
    ] = None,
) -> Response:
    body = await registry.reads.route_json(namespace, agent_type, capabilities, key, version)
    return Response(body, media_type="application/json")


@router.get(
    "/type/{agent_type}", summary="List agents of a type", response_model=AgentListResponse, responses=_READ_ERRORS
)
async def agents_of_type(
    request: Request, registry: RegistryDep, _: MayList, namespace: NamespaceDep, agent_type: str
) -> Response:
    return _list(request, await registry.reads.query_json(namespace, agent_type))


@router.get("/{agent_id}", summary="One agent", response_model=AgentView, responses=documented(400, 401, 403, 404, 503))
async def get_agent(agent: ReadableAgent) -> JSONResponse:
    return JSONResponse(agent.view.to_json())


@router.get(
    "/{agent_id}/agent-card.json",
    summary="The agent's A2A card, with its content hash as ETag (304 to a matching If-None-Match)",
    response_model=AgentCard,
    response_model_exclude_none=True,
    responses={
        304: {"description": "Not modified: the client's copy is current"},
        **documented(400, 401, 403, 404, 503),
    },
)
async def agent_card(request: Request, registry: RegistryDep, agent: ReadableAgent) -> Response:
    card = await registry.cards.card(agent)
    if card is None:
        raise not_found(f"agent {agent.agent_id} has no agent card")
    status, body, headers = etags.tagged_answer(card.canonical, f'"{card.hash}"', request.headers.get("if-none-match"))
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


@router.post(
    "/{agent_id}/heartbeat",
    summary="Record a heartbeat; metadata is merged into the agent's",
    responses=documented(400, 401, 403, 404, 413, 503),
)
async def heartbeat(
    registry: RegistryDep, caller: CallerDep, agent: HeartbeatingAgent, body: HeartbeatRequest
) -> HeartbeatResponse:
    return await registry.writes.heartbeat(caller, agent, body)


@router.post(
    "/{agent_id}/unregister", summary="Unregister (delete) an agent", responses=documented(400, 401, 403, 404, 503)
)
async def unregister(registry: RegistryDep, caller: CallerDep, agent: DeletableAgent) -> MessageResponse:
    await registry.writes.unregister(caller, agent)
    return MessageResponse(message=UNREGISTERED)
