"""The operator's memory of heartbeats, and the decisions made from it. Pure logic.

Why an in-memory record and one sweeper, not kopf timers: kopf's per-object timers and
daemons put a finalizer on every Agent, so `kubectl delete agent` hangs while the
operator is down, and 10,000 timers are 10,000 tasks. Here every watch event updates a
small record, and one periodic sweep over all records decides who went silent.

Time is the operator's own monotonic clock, taken when it *observes* a heartbeat change.
Timestamps written by agents are never compared with anything: a skewed agent clock can
neither kill a live agent nor keep a dead one alive. A restarted operator starts every
record at "heard just now", so its own downtime counts against nobody.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from agent_registry.schema.agent import Load, Phase, ReportedStatus
from agent_registry.schema.card import StoredCard

# Status fields a heartbeat writes. Any change in them is a heartbeat.
HEARTBEAT_FIELDS = ("lastHeartbeatTime", "heartbeatSequence", "reportedStatus", "reportedMetadata")

# Leases seen before their Agent are kept this many at most (a Lease whose Agent is never
# seen, e.g. hand-made, must not grow memory without bound).
_MAX_PENDING_LEASES = 100_000

_PHASE_FOR_REPORT = {
    ReportedStatus.HEALTHY: Phase.HEALTHY,
    ReportedStatus.DEGRADED: Phase.DEGRADED,
    ReportedStatus.UNHEALTHY: Phase.UNHEALTHY,
}


def phase_for_report(reported: str | None) -> Phase:
    """The phase an agent's own report maps to; no report yet counts as healthy."""
    if reported is None:
        return Phase.HEALTHY
    return _PHASE_FOR_REPORT.get(ReportedStatus(reported), Phase.HEALTHY)


def heartbeat_signature(status: Mapping[str, Any] | None) -> str:
    status = status or {}
    return json.dumps([status.get(field) for field in HEARTBEAT_FIELDS], sort_keys=True, default=str)


@dataclasses.dataclass
class Timing:
    interval: float
    unreachable_after: float
    gc_after: float


@dataclasses.dataclass
class TrackedAgent:
    namespace: str
    name: str
    uid: str
    resource_version: str
    agent_type: str
    timing: Timing
    signature: str
    last_heard: float
    """Operator clock (monotonic) when a heartbeat change was last observed."""
    phase: Phase | None
    """The phase as last written to the object (by anyone, as seen in the watch)."""
    reported: str | None
    conditions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """As last seen, so lastTransitionTime survives the operator's own rewrites."""
    last_heard_wall: datetime | None = None
    """Wall-clock time of the last observed heartbeat, for the REST ``last_seen`` only."""
    agent_id: str | None = None
    """The id this operator gave or saw; reused for stale events that lack it."""
    registered_at: str | None = None
    """``status.registeredAt`` as last seen: an initialisation keeps it."""
    generation: int | None = None
    """``metadata.generation`` as last seen, written back as ``observedGeneration``."""
    registered_announced: bool = False
    initialised: bool = False
    """Whether the object carries its id in status and label; a standby that becomes
    leader initialises the ones that are not."""
    unreachable_since: float | None = None
    """Operator clock when *this process* judged the agent unreachable; starts GC's clock."""
    heard_since_start: bool = False
    lease: LeaseSeen | None = None
    """The agent's Lease as last observed, or None while it has none (an older writer)."""
    card: StoredCard | None = None
    """The agent's A2A card as last judged (``cards.judge_card``), so an unchanged card is
    not validated again on every event of the Agent."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclasses.dataclass(frozen=True)
class LeaseSeen:
    """What the operator keeps of an agent's Lease: enough to tell a renewal and to delete it
    only as it was seen (a renewal racing garbage collection makes that delete a 409)."""

    agent_uid: str
    """The owning Agent's uid: a Lease left by an earlier Agent of the same name does not count."""
    name: str
    uid: str
    resource_version: str
    signature: str
    load: Load | None = None
    """The load its last renewal reported (``schema.lease.load_of``), for the index."""


@dataclasses.dataclass(frozen=True)
class Observation:
    """What one watch event means."""

    agent: TrackedAgent
    is_new: bool
    is_heartbeat: bool
    desired_phase: Phase
    previous_phase: Phase | None

    @property
    def phase_changed(self) -> bool:
        return self.desired_phase != self.previous_phase

    @property
    def recovered(self) -> bool:
        return self.previous_phase == Phase.UNREACHABLE and self.desired_phase != Phase.UNREACHABLE


@dataclasses.dataclass(frozen=True)
class SelfPreservation:
    active: bool
    since: float | None
    silent: int
    total: int
    entered: bool = False
    """True on the sweep that turned it on."""
    exited_reason: str | None = None
    """Set on the sweep that turned it off: "recovered" or "expired"."""


@dataclasses.dataclass(frozen=True)
class SweepResult:
    became_unreachable: list[TrackedAgent]
    to_delete: list[TrackedAgent]
    self_preservation: SelfPreservation


def _timing(spec: Mapping[str, Any]) -> Timing:
    heartbeat = spec.get("heartbeat") or {}
    return Timing(
        interval=float(heartbeat.get("intervalSeconds", 30)),
        unreachable_after=float(heartbeat.get("unreachableAfterSeconds", 45)),
        gc_after=float(heartbeat.get("gcAfterSeconds", 300)),
    )


class Tracker:
    """All agents the operator watches, keyed by (namespace, name)."""

    def __init__(self, share: float = 0.5, min_agents: int = 3, max_pause: float = 900.0) -> None:
        self.agents: dict[tuple[str, str], TrackedAgent] = {}
        self.share = share
        self.min_agents = min_agents
        self.max_pause = max_pause
        self._pause_since: float | None = None
        # After a time-boxed pause expires, do not pause again until the share drops
        # below the threshold once: otherwise the same outage re-enters the pause forever.
        self._pause_spent = False
        self._leases: dict[tuple[str, str], LeaseSeen] = {}
        """Leases seen before their Agent (the two watches are independent)."""

    # --- events -------------------------------------------------------------------

    def observe(self, body: Mapping[str, Any], now: float) -> Observation:
        meta = body.get("metadata", {})
        status = body.get("status") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        signature = heartbeat_signature(status)
        stored_phase = Phase(status["phase"]) if status.get("phase") else None
        reported = status.get("reportedStatus")
        existing = self.agents.get(key)
        if existing is None or existing.uid != meta.get("uid", ""):
            agent = TrackedAgent(
                namespace=key[0],
                name=key[1],
                uid=meta.get("uid", ""),
                resource_version=meta.get("resourceVersion", ""),
                agent_type=str(body.get("spec", {}).get("type", "")),
                timing=_timing(body.get("spec", {})),
                signature=signature,
                last_heard=now,
                phase=stored_phase,
                reported=reported,
                conditions=list(status.get("conditions") or []),
                registered_at=status.get("registeredAt"),
                generation=meta.get("generation"),
            )
            # An agent this process has not heard yet keeps an Unreachable it already
            # had, but its clock for garbage collection starts now.
            if stored_phase == Phase.UNREACHABLE:
                agent.unreachable_since = now
            pending = self._leases.pop(key, None)
            if pending is not None and pending.agent_uid == agent.uid:
                agent.lease = pending
            self.agents[key] = agent
            desired = stored_phase if stored_phase == Phase.UNREACHABLE else phase_for_report(reported)
            return Observation(agent, True, False, desired, stored_phase)

        agent = existing
        is_heartbeat = signature != agent.signature
        agent.resource_version = meta.get("resourceVersion", agent.resource_version)
        agent.timing = _timing(body.get("spec", {}))
        agent.signature = signature
        agent.phase = stored_phase
        agent.reported = reported
        agent.conditions = list(status.get("conditions") or [])
        agent.agent_type = str(body.get("spec", {}).get("type", agent.agent_type))
        agent.registered_at = status.get("registeredAt")
        agent.generation = meta.get("generation")
        if is_heartbeat:
            self._heard(agent, now)
        desired = self.desired_phase(agent)
        return Observation(agent, False, is_heartbeat, desired, stored_phase)

    def observe_lease(self, namespace: str, agent_name: str, lease: LeaseSeen, now: float) -> TrackedAgent | None:
        """A Lease event; the agent it renewed, or None when it was no renewal.

        A renewal is a change of what renewals write (``schema.lease.renewal_signature``),
        timed on the operator's clock like any heartbeat. The first sight of a Lease counts
        too: it is created by a writer that is heartbeating right then. A re-listing after a
        watch reconnect shows the same signature again and counts for nothing.
        """
        key = (namespace, agent_name)
        agent = self.agents.get(key)
        if agent is None or agent.uid != lease.agent_uid:
            self._leases[key] = lease
            if len(self._leases) > _MAX_PENDING_LEASES:
                self._leases.pop(next(iter(self._leases)))
            return None
        renewed = agent.lease is None or agent.lease.signature != lease.signature
        agent.lease = lease
        if not renewed:
            return None
        self._heard(agent, now)
        return agent

    def lease_gone(self, namespace: str, agent_name: str, lease_uid: str) -> None:
        self._leases.pop((namespace, agent_name), None)
        agent = self.agents.get((namespace, agent_name))
        if agent is not None and agent.lease is not None and agent.lease.uid == lease_uid:
            agent.lease = None

    def _heard(self, agent: TrackedAgent, now: float) -> None:
        agent.last_heard_wall = datetime.now(UTC)
        agent.last_heard = now
        agent.heard_since_start = True
        agent.unreachable_since = None

    def desired_phase(self, agent: TrackedAgent) -> Phase:
        """The phase the agent's evidence calls for: its report, unless the sweep judged it silent."""
        # Silence is judged in one place, the sweep, which knows whether the operator could
        # see; a watch event arriving just after a stall must not judge it on its own.
        if agent.phase == Phase.UNREACHABLE and not agent.heard_since_start:
            return Phase.UNREACHABLE
        if agent.phase == Phase.UNREACHABLE and agent.unreachable_since is not None:
            return Phase.UNREACHABLE
        return phase_for_report(agent.reported)

    def forget(self, namespace: str, name: str) -> TrackedAgent | None:
        return self.agents.pop((namespace, name), None)

    def restart_grace(self, now: float, namespace: str | None = None) -> None:
        """Give everyone (in ``namespace``, or everywhere) a fresh grace period: a new
        leader knows nothing of the past, and an operator that could not see has no
        evidence about it."""
        for agent in self.agents.values():
            if namespace is not None and agent.namespace != namespace:
                continue
            agent.last_heard = max(agent.last_heard, now)
            if agent.unreachable_since is not None:
                agent.unreachable_since = now

    # --- sweeps -------------------------------------------------------------------

    def sweep(self, now: float, seen_until: Callable[[str], float | None] | None = None) -> SweepResult:
        """Judge every agent. ``seen_until(namespace)`` says up to when the operator could
        see that namespace (silence after it is no evidence), or None while it is blind
        there: then nobody in it is judged, marked or collected. Without it, up to now."""
        became_unreachable = []
        judged = []
        for agent in self.agents.values():
            seen = now if seen_until is None else seen_until(agent.namespace)
            if seen is None:
                continue
            judged.append(agent)
            if agent.unreachable_since is None and seen - agent.last_heard > agent.timing.unreachable_after:
                agent.unreachable_since = now
            # Until the write is seen, keep asking for it: a failed patch is retried.
            if agent.unreachable_since is not None and agent.phase != Phase.UNREACHABLE:
                became_unreachable.append(agent)
        preservation = self._self_preservation(now)
        if preservation.exited_reason == "recovered":
            # The pause held back deletions of agents whose silence was probably not their
            # fault; their "unreachable since" still dates from before it. Collecting them
            # the moment the share dips under the threshold deletes live agents that are
            # about to heartbeat again (seen: 9 of 20 deleted 1.1 s after the exit). So
            # the still-silent get a fresh gc-after, counted from now.
            for agent in self.agents.values():
                if agent.unreachable_since is not None:
                    agent.unreachable_since = now
        to_delete = []
        if not preservation.active:
            to_delete = [
                agent
                for agent in judged
                if agent.unreachable_since is not None and now - agent.unreachable_since > agent.timing.gc_after
            ]
        return SweepResult(became_unreachable, to_delete, preservation)

    def _self_preservation(self, now: float) -> SelfPreservation:
        total = len(self.agents)
        silent = sum(1 for a in self.agents.values() if a.unreachable_since is not None)
        mass_silence = total > 0 and silent >= self.min_agents and silent / total > self.share
        if self._pause_since is None:
            if not mass_silence:
                self._pause_spent = False
                return SelfPreservation(False, None, silent, total)
            if self._pause_spent or not self._silenced_together(now):
                return SelfPreservation(False, None, silent, total)
            self._pause_since = now
            return SelfPreservation(True, now, silent, total, entered=True)
        if not mass_silence:
            self._pause_since = None
            return SelfPreservation(False, None, silent, total, exited_reason="recovered")
        if now - self._pause_since > self.max_pause:
            self._pause_since = None
            self._pause_spent = True
            return SelfPreservation(False, None, silent, total, exited_reason="expired")
        return SelfPreservation(True, self._pause_since, silent, total)

    def _silenced_together(self, now: float) -> bool:
        """Whether the silent majority fell silent within one unreachable window.

        Agents that died one by one over hours are not an outage; a majority whose last
        heartbeats all fall within one window of each other is.
        """
        silent = [a for a in self.agents.values() if a.unreachable_since is not None]
        window = max(a.timing.unreachable_after for a in silent)
        latest = max(a.last_heard for a in silent)
        together = sum(1 for a in silent if latest - a.last_heard <= window)
        return together >= self.min_agents and together / len(self.agents) > self.share

    @property
    def self_preservation_active(self) -> bool:
        return self._pause_since is not None

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of agents per (phase, type), for the metrics."""
        counts: dict[tuple[str, str], int] = {}
        for agent in self.agents.values():
            key = ((agent.phase or Phase.HEALTHY).value, agent.agent_type)
            counts[key] = counts.get(key, 0) + 1
        return counts
