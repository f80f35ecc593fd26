"""Whether the operator can see: silence is evidence only while it can.

An agent's silence is judged from the watch, and a watch on a stalled API server (or one
whose etcd stalled) is silent too, for every agent at once. Heartbeats sent during such a
stall fail through no fault of the agents. So the operator checks its own sight with a
cheap probe, a one-item consistent LIST of Agents per watched scope (a namespace, or the
cluster), which answers only when the API server and etcd both do:

* silence is judged only up to the start of the last probe that answered in time, never up
  to "now", so a decision cannot be taken in the first moments of a stall, before the
  probe has noticed it;
* a probe unanswered or failed for ``gap`` seconds makes the scope blind: no agent in it is
  judged at all;
* when a probe answers again, every agent in the scope gets a fresh grace period, exactly
  as after an operator restart (``Tracker.restart_grace``), the way Kubernetes' node
  lifecycle controller treats its own loss of contact.

What the probe cannot see (writers rejected while the operator's own calls succeed, or one
watch stream stalled while the API server answers) is covered by self-preservation:
garbage collection pauses when most agents fall silent together. docs/decisions.md says
which case falls where.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from agent_registry.controller import metrics

logger = logging.getLogger(__name__)

Probe = Callable[[str | None, float], Awaitable[None]]
"""Given a scope (a namespace, or None for the cluster) and a timeout, raise unless it answered."""

Regained = Callable[[str | None, float], Awaitable[None]]
"""Called with the scope and how long it was blind, when the API server answers again."""

Grace = Callable[[str | None], None]
"""Give every agent in the scope a fresh grace period."""


MAX_PROBES_IN_FLIGHT = 4
"""Probes overlap, so the first one sent after a stall ends answers at once instead of
queueing behind one stuck in the stall; a few are enough to cover the gap."""


@dataclasses.dataclass
class ScopeSight:
    scope: str | None
    seen_at: float
    """Operator clock at the start of the last probe answered in time: silence is judged
    up to here. Starts at creation, as an operator start counts against nobody."""
    blind_since: float | None = None
    in_flight: list[float] = dataclasses.field(default_factory=list)
    """Start times of the probes sent and not answered yet."""
    awaiting_watch_since: float | None = None
    """Set when the API server answers again after a gap: the watches may still be
    reconnecting (kopf backs off between attempts), and until they deliver, heartbeats sent
    meanwhile are not seen either."""
    awaiting: set[str] = dataclasses.field(default_factory=set)
    """The watched resources (Agents, Leases) that have not delivered since the gap."""
    delivered: set[str] = dataclasses.field(default_factory=set)
    """The resources whose watch ever delivered here: only those are awaited after a gap
    (a namespace without Leases, a fleet of older writers, has no Lease event to wait for)."""

    def seen_until(self, now: float, gap: float, watch_wait: float = 0.0) -> float | None:
        if self.blind_since is not None:
            return None
        if self.awaiting and self.awaiting_watch_since is not None and now - self.awaiting_watch_since <= watch_wait:
            return None
        if any(start > self.seen_at and now - start > gap for start in self.in_flight):
            return None
        return self.seen_at


class Sight:
    def __init__(
        self,
        scopes: Sequence[str | None],
        probe: Probe,
        on_regained: Regained,
        grace: Grace,
        interval: float,
        gap: float,
        watch_wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe = probe
        self.on_regained = on_regained
        self.grace = grace
        self.interval = interval
        self.gap = gap
        self.watch_wait = watch_wait
        self.clock = clock
        now = clock()
        self.scopes = {scope: ScopeSight(scope, now) for scope in scopes}
        self._cluster_wide = None in self.scopes

    def seen_until(self, namespace: str) -> float | None:
        """Up to when silence in ``namespace`` is evidence; None while the operator is blind there."""
        state = self.scopes.get(None) if self._cluster_wide else self.scopes.get(namespace)
        if state is None:  # an agent outside every watched scope: nothing to judge it by
            return None
        return state.seen_until(self.clock(), self.gap, self.watch_wait)

    @property
    def blind_scopes(self) -> list[str | None]:
        now = self.clock()
        return [s.scope for s in self.scopes.values() if s.seen_until(now, self.gap, self.watch_wait) is None]

    def watch_delivered(self, namespace: str, resource: str) -> None:
        """A watch event of ``resource`` arrived: after a gap, the first one says that watch
        flows again.

        Heartbeats written meanwhile are replayed by the watch (it resumes from its last
        resourceVersion) but take a moment to be processed, so the scope gets one more
        fresh grace period as each watch delivers, and judging resumes when all have."""
        state = self.scopes.get(None) if self._cluster_wide else self.scopes.get(namespace)
        if state is None:
            return
        state.delivered.add(resource)
        if state.awaiting_watch_since is None or resource not in state.awaiting:
            return
        state.awaiting.discard(resource)
        self.grace(state.scope)
        waited = self.clock() - state.awaiting_watch_since
        logger.info(
            "the %s watch delivers again for %s, %.1fs after the API server did",
            resource,
            _describe(state.scope),
            waited,
        )
        if not state.awaiting:
            state.awaiting_watch_since = None

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for state in self.scopes.values():
                group.create_task(self._watch_scope(state, group))

    async def _watch_scope(self, state: ScopeSight, group: asyncio.TaskGroup) -> None:
        while True:
            if len(state.in_flight) < MAX_PROBES_IN_FLIGHT:
                group.create_task(self.check(state))
            await asyncio.sleep(self.interval)

    async def check(self, state: ScopeSight) -> None:
        """One probe of one scope, and what its answer (or its absence) means."""
        started = self.clock()
        state.in_flight.append(started)
        try:
            # No longer than the gap: past it the scope is blind anyway, and a newer probe
            # is already on its way.
            await self.probe(state.scope, self.gap)
            answered, error = True, ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            answered, error = False, str(exc) or type(exc).__name__
        finally:
            state.in_flight.remove(started)
        finished = self.clock()
        if started < state.seen_at:
            return  # a probe sent later has answered already: this one is old news
        if not answered or finished - started > self.gap:
            self._went_blind(state, started, error or f"no answer for {finished - started:.1f}s")
        if answered:
            if state.blind_since is not None:
                await self._regained(state, finished)
            state.seen_at = started

    def _went_blind(self, state: ScopeSight, since: float, why: str) -> None:
        if state.blind_since is not None:
            return
        state.blind_since = since
        metrics.BLIND.labels(scope=_label(state.scope)).set(1)
        logger.warning(
            "cannot see the API server for %s (%s): no agent there is judged until it answers again",
            _describe(state.scope),
            why,
        )

    async def _regained(self, state: ScopeSight, now: float) -> None:
        blind_for = now - (state.blind_since or now)
        state.blind_since = None
        state.awaiting_watch_since = now
        state.awaiting = set(state.delivered)
        self.grace(state.scope)
        metrics.BLIND.labels(scope=_label(state.scope)).set(0)
        metrics.BLIND_GAPS.labels(scope=_label(state.scope)).inc()
        logger.warning(
            "the API server answers again for %s after %.1fs; every agent there gets a fresh grace period",
            _describe(state.scope),
            blind_for,
        )
        await self.on_regained(state.scope, blind_for)


def _label(scope: str | None) -> str:
    return scope if scope is not None else "*"


def _describe(scope: str | None) -> str:
    return f"namespace {scope}" if scope is not None else "the cluster"
