"""The periodic sweep: silence becomes Unreachable, long silence is garbage-collected.

One task for all agents (see tracker.py for why not per-object kopf timers). Writes are
made with bounded concurrency so 10,000 agents going silent at once are marked in
seconds without flooding the API server.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any, Protocol

from agent_registry import kubeapi
from agent_registry.controller import metrics
from agent_registry.controller.announce import PostEvent, announce
from agent_registry.controller.conditions import build_conditions
from agent_registry.controller.initialisation import decide_initialisation, phase_status
from agent_registry.controller.kube import DeleteOutcome, agent_reference, now_rfc3339
from agent_registry.controller.settings import OperatorSettings
from agent_registry.controller.tracker import LeaseSeen, SelfPreservation, TrackedAgent, Tracker, phase_for_report
from agent_registry.schema.agent import Load, Phase

logger = logging.getLogger(__name__)

WRITE_CONCURRENCY = 8

BeforeDelete = Callable[[TrackedAgent], Awaitable[None]]


class AgentWrites(Protocol):
    """The API calls the sweeper makes on Agents."""

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> str: ...

    async def patch_labels(self, namespace: str, name: str, labels: Mapping[str, str]) -> None: ...

    async def delete_agent(self, namespace: str, name: str, uid: str, resource_version: str) -> DeleteOutcome: ...

    async def delete_lease(self, namespace: str, name: str, uid: str, resource_version: str) -> DeleteOutcome: ...


class IndexUpdates(Protocol):
    """What the sweeper tells the Redis index (``IndexSync``)."""

    def set_phase(self, key: tuple[str, str], phase: Phase) -> None: ...

    def touch(self, key: tuple[str, str], last_seen: datetime | None, load: Load | None = None) -> None: ...

    def drop(self, key: tuple[str, str]) -> None: ...


class Writes:
    """The sweeper's writes, in flight in the background: at most one per agent, at most
    ``WRITE_CONCURRENCY`` at once. A sweep never waits for them, so one call hanging on a
    slow API server (until its timeout) cannot delay the judgement of anyone else."""

    def __init__(self) -> None:
        self._semaphore = asyncio.Semaphore(WRITE_CONCURRENCY)
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}

    def start(self, key: tuple[str, str], work: Coroutine[Any, Any, None]) -> None:
        if key in self._in_flight:
            work.close()  # the earlier write for this agent decides; the next sweep re-judges
            return
        task = asyncio.create_task(self._bounded(work), name=f"write {key[0]}/{key[1]}")
        self._in_flight[key] = task
        task.add_done_callback(lambda _: self._in_flight.pop(key, None))

    async def _bounded(self, work: Coroutine[Any, Any, None]) -> None:
        async with self._semaphore:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("a sweeper write failed; the next sweep retries")

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the writes in flight (tests, and a sweep that must see its effects)."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight.values()), timeout=timeout)

    async def cancel(self) -> None:
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Sweeper:
    """Judges every tracked agent each ``sweep_interval_seconds`` while this replica leads,
    and starts the writes that follow: initialise, mark Unreachable, collect."""

    def __init__(
        self,
        settings: OperatorSettings,
        tracker: Tracker,
        kube: AgentWrites,
        post_event: PostEvent,
        index: IndexUpdates,
        seen_until: Callable[[str], float | None],
        is_leader: Callable[[], bool],
        self_reference: Mapping[str, str],
        writes: Writes,
        registered_event: Callable[[Mapping[str, str], str], Awaitable[None]],
        before_delete: BeforeDelete | None = None,
    ) -> None:
        self.settings = settings
        self.tracker = tracker
        self.kube = kube
        self.post_event = post_event
        self.index = index
        self.seen_until = seen_until
        self.is_leader = is_leader
        self.self_reference = self_reference
        """The object the operator's own Events are about (self-preservation)."""
        self.writes = writes
        self.registered_event = registered_event
        """Posts a ``Registered`` Event within the budget (``Runtime.registered_event``)."""
        self.before_delete = before_delete
        """Test seam: awaited between the decision to delete and the delete itself, so a
        test can make a heartbeat race the delete deterministically. None in production."""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_seconds)
            try:
                self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("sweep failed; retrying at the next interval")

    def sweep_once(self) -> None:
        """Judge now and start the writes; ``writes.drain()`` waits for them."""
        if not self.is_leader():
            return
        result = self.tracker.sweep(time.monotonic(), self.seen_until)
        for agent in [a for a in self.tracker.agents.values() if not a.initialised]:
            self.writes.start(agent.key, self.initialise(agent))
        for agent in result.became_unreachable:
            self.writes.start(agent.key, self.mark_unreachable(agent))
        for agent in self.tracker.agents.values():
            if agent.initialised and agent.phase == Phase.UNREACHABLE and agent.unreachable_since is None:
                # Heard again by a Lease renewal (a status heartbeat is handled by the watch
                # event); retried here until the write is seen.
                self.writes.start(agent.key, self.recover(agent))
        self.report_self_preservation(result.self_preservation)
        for agent in result.to_delete:
            self.writes.start(agent.key, self.collect(agent))
        metrics.SILENT_AGENTS.set(result.self_preservation.silent)
        metrics.publish_counts(self.tracker.counts())

    async def initialise(self, agent: TrackedAgent) -> None:
        """Agents first seen while this replica was a standby get their id now."""
        agent_id = agent.agent_id or str(uuid.uuid4())
        phase = agent.phase or phase_for_report(agent.reported)
        init = decide_initialisation(agent, agent_id, phase, now_rfc3339())
        try:
            await self.kube.patch_labels(agent.namespace, agent.name, init.labels)
            agent.resource_version = await self.kube.patch_status(agent.namespace, agent.name, init.status)
        except Exception as exc:
            logger.warning("could not initialise %s/%s (%s); retrying", agent.namespace, agent.name, exc)
            return
        agent.agent_id, agent.initialised, agent.phase = agent_id, True, phase
        if init.announce:
            agent.registered_announced = True
            logger.info("agent %s/%s registered as %s (%s)", agent.namespace, agent.name, agent_id, phase.value)
            await self.registered_event(agent_reference(agent.namespace, agent.name, agent.uid), init.event_message)

    async def mark_unreachable(self, agent: TrackedAgent) -> None:
        previous = agent.phase
        silent = agent.timing.unreachable_after
        detail = f"silent for more than {silent:.0f}s"
        status = {
            "phase": Phase.UNREACHABLE.value,
            "conditions": build_conditions(Phase.UNREACHABLE, now_rfc3339(), agent.conditions, detail=detail),
        }
        try:
            agent.resource_version = await self.kube.patch_status(agent.namespace, agent.name, status)
        except kubeapi.NotFound:
            self.tracker.forget(agent.namespace, agent.name)
            return
        except Exception as exc:
            logger.warning("could not mark %s/%s Unreachable (%s); retrying", agent.namespace, agent.name, exc)
            return
        agent.phase = Phase.UNREACHABLE
        metrics.TRANSITIONS.labels(from_phase=str(previous), to_phase=Phase.UNREACHABLE.value).inc()
        logger.warning("agent %s/%s is Unreachable: %s", agent.namespace, agent.name, detail)
        self.index.set_phase(agent.key, Phase.UNREACHABLE)
        await self.post_event(
            agent_reference(agent.namespace, agent.name, agent.uid),
            "Warning",
            "Unreachable",
            f"No heartbeat observed for more than {silent:.0f}s; "
            f"will be removed after {agent.timing.gc_after:.0f}s more of silence.",
        )

    def renewed(self, agent: TrackedAgent) -> None:
        """A Lease renewal was heard: the index shows it, and an Unreachable agent recovers now."""
        self.index.touch(agent.key, agent.last_heard_wall, agent.lease.load if agent.lease else None)
        if self.is_leader() and agent.initialised and self.tracker.desired_phase(agent) != agent.phase:
            self.writes.start(agent.key, self.recover(agent))

    async def delete_lease(self, namespace: str, lease: LeaseSeen) -> None:
        """Delete the Lease of an Agent that is gone (that very Lease: a uid precondition)."""
        outcome = await self.kube.delete_lease(namespace, lease.name, lease.uid, "")
        logger.debug("Lease %s/%s of a deleted agent: %s", namespace, lease.name, outcome.value)

    async def recover(self, agent: TrackedAgent) -> None:
        """Write the phase the agent's report calls for, after a Lease renewal ended its silence."""
        previous, phase = agent.phase, self.tracker.desired_phase(agent)
        if phase == previous:
            return
        status = phase_status(agent, phase, now_rfc3339())
        try:
            agent.resource_version = await self.kube.patch_status(agent.namespace, agent.name, status)
        except kubeapi.NotFound:
            self.tracker.forget(agent.namespace, agent.name)
            return
        except Exception as exc:
            logger.warning("could not write %s/%s's phase %s (%s); retrying", agent.namespace, agent.name, phase, exc)
            return
        agent.phase = phase
        self.index.set_phase(agent.key, phase)
        ref = agent_reference(agent.namespace, agent.name, agent.uid)
        await announce(self.post_event, ref, previous, phase, recovered=previous == Phase.UNREACHABLE)

    async def collect(self, agent: TrackedAgent) -> None:
        ref = agent_reference(agent.namespace, agent.name, agent.uid)
        await self.post_event(
            ref,
            "Normal",
            "Removed",
            f"Unreachable for more than {agent.timing.gc_after:.0f}s; deleting the Agent.",
        )
        if self.before_delete is not None:
            await self.before_delete(agent)
        try:
            # The Lease first, as it was seen: a renewal since the decision makes this a 409
            # and keeps the agent, as a status heartbeat does for the Agent's delete below.
            lease = agent.lease
            outcome = DeleteOutcome.GONE
            if lease is not None:
                outcome = await self.kube.delete_lease(agent.namespace, lease.name, lease.uid, lease.resource_version)
            if outcome is not DeleteOutcome.CONFLICT:
                outcome = await self.kube.delete_agent(agent.namespace, agent.name, agent.uid, agent.resource_version)
        except Exception as exc:
            logger.warning("could not delete %s/%s (%s); retrying", agent.namespace, agent.name, exc)
            return
        metrics.DELETIONS.labels(outcome=outcome.value).inc()
        if outcome is DeleteOutcome.CONFLICT:
            logger.info("agent %s/%s changed since the decision to delete it; kept", agent.namespace, agent.name)
            await self.post_event(
                ref,
                "Normal",
                "RemovalCancelled",
                "The Agent or its Lease changed (a heartbeat) before the delete; kept.",
            )
            return
        logger.warning(
            "agent %s/%s deleted after %.0fs unreachable", agent.namespace, agent.name, agent.timing.gc_after
        )
        self.tracker.forget(agent.namespace, agent.name)
        self.index.drop(agent.key)

    def report_self_preservation(self, state: SelfPreservation) -> None:
        metrics.SELF_PRESERVATION.set(1 if state.active else 0)
        max_pause = self.settings.self_preservation_max_pause_seconds
        if state.entered:
            event_type, reason, what = "Warning", "SelfPreservationActivated", "on"
            message = (
                f"{state.silent} of {state.total} agents went silent within one unreachable window; "
                "the network or the registry is the likelier cause. Garbage collection is paused "
                f"for at most {max_pause:.0f}s."
            )
        elif state.exited_reason == "recovered":
            event_type, reason, what = "Normal", "SelfPreservationDeactivated", "off"
            message = (
                f"Only {state.silent} of {state.total} agents are silent now; garbage collection resumes, "
                "and agents still silent get a fresh grace period before removal."
            )
        elif state.exited_reason == "expired":
            event_type, reason, what = "Warning", "SelfPreservationExpired", "expired"
            message = (
                f"Garbage collection was paused for {max_pause:.0f}s with {state.silent} of "
                f"{state.total} agents still silent; resuming it (the pause is time-boxed)."
            )
        else:
            return
        logger.warning("self-preservation %s: %s", what, message)
        self.writes.start(("", reason), self.post_event(self.self_reference, event_type, reason, message))
