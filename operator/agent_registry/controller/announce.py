"""How a phase change the operator writes is made visible: a metric, a log line, an Event.

The watch-event handler (a report changed), the sweeper (silence, and a Lease renewal that
ends it) both announce here, so every phase change reads the same wherever it was decided.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

from agent_registry.controller import metrics
from agent_registry.schema.agent import Phase

logger = logging.getLogger(__name__)


class PostEvent(Protocol):
    """``post_event(involved, type, reason, message)``: advisory, never raises."""

    def __call__(
        self, involved: Mapping[str, str], event_type: str, reason: str, message: str
    ) -> Coroutine[Any, Any, None]: ...


async def announce(
    post_event: PostEvent, ref: Mapping[str, str], before: Phase | None, after: Phase, recovered: bool
) -> None:
    metrics.TRANSITIONS.labels(from_phase=str(before), to_phase=after.value).inc()
    where = f"{ref['namespace']}/{ref['name']}"
    if recovered:
        logger.info("agent %s recovered: %s -> %s", where, before, after.value)
        await post_event(ref, "Normal", "Recovered", f"Heartbeats resumed; phase {after.value}.")
    elif after == Phase.UNREACHABLE:
        # An agent seen Unreachable again in a fresh body keeps its phase; announced by the sweeper.
        return
    else:
        kind = "Normal" if after == Phase.HEALTHY else "Warning"
        logger.info("agent %s phase %s -> %s", where, before, after.value)
        await post_event(ref, kind, after.value, f"The agent reports {after.value.lower()}.")
