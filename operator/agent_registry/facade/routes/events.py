"""``/agents/{id}/events``: the recent Kubernetes Events about an agent, for people (the
dashboard's detail panel) who cannot run ``kubectl describe agent``.

Readable by whoever may read the agent: the Events are about it, and the facade fetches
them with its own ServiceAccount, so a caller needs no rule on ``events``.
"""

from __future__ import annotations

from fastapi import APIRouter

from agent_registry.facade.deps import ReadableAgent, RegistryDep
from agent_registry.facade.errors import documented
from agent_registry.facade.events import MAX_EVENTS, recent_events
from agent_registry.facade.models import AgentEventList

router = APIRouter(prefix="/agents", tags=["agents"])


@router.get(
    "/{agent_id}/events",
    summary=f"The agent's recent Kubernetes Events (phase changes, card problems), newest first, at most {MAX_EVENTS}",
    responses=documented(400, 401, 403, 404, 503),
)
async def agent_events(registry: RegistryDep, agent: ReadableAgent) -> AgentEventList:
    return await recent_events(registry.kube, agent)
