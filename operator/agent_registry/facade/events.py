"""The recent Kubernetes Events about one agent (``GET /agents/{id}/events``): its phase
changes, card problems and removal, as the operator records them on the Agent.

Events live only in the API server (the index keeps none), so this read has no fallback:
with the API server down it answers 503. The API server selects them by the involved
object; the newest are kept here, at most ``MAX_EVENTS``, since a flapping agent can carry
many and a page shows a handful.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from agent_registry.facade import metrics
from agent_registry.facade.errors import ApiError, unavailable
from agent_registry.facade.kube import Kube
from agent_registry.facade.models import AgentEvent, AgentEventList
from agent_registry.facade.reads import Located
from agent_registry.kubeapi import Forbidden, Unavailable

MAX_EVENTS = 50


async def recent_events(kube: Kube, agent: Located, limit: int = MAX_EVENTS) -> AgentEventList:
    """The agent's Events, newest first, at most ``limit``."""
    try:
        listed = await kube.list_agent_events(agent.namespace, agent.name, agent.uid or None)
    except Unavailable as exc:
        metrics.KUBE_ERRORS.inc()
        raise unavailable(f"the Kubernetes API server, which keeps the Events, is unavailable: {exc}") from exc
    except Forbidden as exc:
        # The installation, not the caller: the facade's own ServiceAccount lacks the rule.
        raise ApiError(
            503,
            f"the registry may not list Events in namespace {agent.namespace!r} "
            f"(its ServiceAccount needs 'list' on 'events'): {exc.message}",
        ) from exc
    entries = [entry for entry in (_entry(item) for item in listed) if entry is not None]
    entries.sort(key=_newest_first)
    return AgentEventList(events=entries[:limit], count=min(len(entries), limit))


def _entry(event: Mapping[str, Any]) -> AgentEvent | None:
    """An Event in the REST shape. Old-style (``firstTimestamp``, ``count``) and new-style
    (``eventTime``, ``series``) writers fill different fields; either reads the same here."""
    meta = event.get("metadata") or {}
    series = event.get("series") or {}
    source = event.get("source") or {}
    first = event.get("firstTimestamp") or event.get("eventTime") or meta.get("creationTimestamp")
    last = series.get("lastObservedTime") or event.get("lastTimestamp") or event.get("eventTime") or first
    try:
        return AgentEvent(
            type=str(event.get("type") or "Normal"),
            reason=str(event.get("reason") or ""),
            message=str(event.get("message") or ""),
            count=int(series.get("count") or event.get("count") or 1),
            first_seen=first,
            last_seen=last,
            source=str(source.get("component") or event.get("reportingComponent") or ""),
        )
    except (ValidationError, TypeError, ValueError):
        return None  # an Event no writer of the registry makes; not worth failing the list for


def _newest_first(entry: AgentEvent) -> tuple[bool, float, float]:
    # Events without a time (none the registry writes) go last.
    last, first = _stamp(entry.last_seen), _stamp(entry.first_seen)
    return (entry.last_seen is None, -last, -first)


def _stamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else 0.0
