"""How a phase change the operator writes is made visible: a metric, a log line, an Event.

The watch-event handler (a report changed), the sweeper (silence, and a Lease renewal that
ends it) both announce here, so every phase change reads the same wherever it was decided.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Mapping
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


class EventBudget:
    """At most ``burst`` Events at once, then ``rate`` per second (a token bucket).

    Kubernetes' event recorder limits the Events of each object; a fleet registering at
    once is thousands of objects with one ``Registered`` Event each, as many API writes as
    their initialisations, which it then waits behind (10,000 new agents took 3 minutes to
    get a phase). Over the budget, an Event is counted instead (``suppressed``); the agent
    still gets its phase, its conditions and its log line.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self.suppressed = 0
        """Events refused since the last ``take_suppressed``."""

    def allow(self) -> bool:
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count
