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
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException

from agent_registry.controller import metrics
from agent_registry.controller.conditions import build_conditions
from agent_registry.controller.kube import DeleteOutcome, agent_reference, now_rfc3339
from agent_registry.controller.tracker import SelfPreservation, TrackedAgent
from agent_registry.schema import constants as c
from agent_registry.schema.agent import Phase

if TYPE_CHECKING:
    from agent_registry.controller.runtime import Runtime

logger = logging.getLogger(__name__)

WRITE_CONCURRENCY = 8

BEFORE_DELETE_HOOKS: list[Callable[[TrackedAgent], Awaitable[None]]] = []
"""Test seam: awaited between the decision to delete and the delete itself, so a test can
make a heartbeat race the delete deterministically. Empty in production."""


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


async def sweep_forever(runtime: Runtime) -> None:
    while True:
        await asyncio.sleep(runtime.settings.sweep_interval_seconds)
        try:
            await sweep_once(runtime)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("sweep failed; retrying at the next interval")


async def sweep_once(runtime: Runtime) -> None:
    if not runtime.is_leader():
        return
    result = runtime.tracker.sweep(time.monotonic(), runtime.sight.seen_until)
    writes = runtime.writes
    for agent in [a for a in runtime.tracker.agents.values() if not a.initialised]:
        writes.start(agent.key, initialise(runtime, agent))
    for agent in result.became_unreachable:
        writes.start(agent.key, mark_unreachable(runtime, agent))
    report_self_preservation(runtime, result.self_preservation)
    for agent in result.to_delete:
        writes.start(agent.key, collect(runtime, agent))
    metrics.SILENT_AGENTS.set(result.self_preservation.silent)
    metrics.publish_counts(runtime.tracker.counts())


async def initialise(runtime: Runtime, agent: TrackedAgent) -> None:
    """Agents first seen while this replica was a standby get their id now."""
    agent_id = agent.agent_id or str(uuid.uuid4())
    phase = agent.phase or Phase.HEALTHY
    try:
        await runtime.kube.patch_labels(
            agent.namespace, agent.name, {c.AGENT_ID_LABEL: agent_id, c.AGENT_TYPE_LABEL: agent.agent_type}
        )
        status = {
            "agentId": agent_id,
            "registeredAt": now_rfc3339(),
            "phase": phase.value,
            "conditions": build_conditions(phase, now_rfc3339(), agent.conditions),
        }
        agent.resource_version = await runtime.kube.patch_status(agent.namespace, agent.name, status)
    except Exception as exc:
        logger.warning("could not initialise %s/%s (%s); retrying", agent.namespace, agent.name, exc)
        return
    agent.agent_id, agent.initialised, agent.phase = agent_id, True, phase
    logger.info("agent %s/%s registered as %s (%s)", agent.namespace, agent.name, agent_id, phase.value)
    await runtime.kube.post_event(
        agent_reference(agent.namespace, agent.name, agent.uid),
        "Normal",
        "Registered",
        f"Agent registered with id {agent_id}, phase {phase.value}.",
    )


async def mark_unreachable(runtime: Runtime, agent: TrackedAgent) -> None:
    previous = agent.phase
    silent = agent.timing.unreachable_after
    detail = f"silent for more than {silent:.0f}s"
    status = {
        "phase": Phase.UNREACHABLE.value,
        "conditions": build_conditions(Phase.UNREACHABLE, now_rfc3339(), agent.conditions, detail=detail),
    }
    try:
        agent.resource_version = await runtime.kube.patch_status(agent.namespace, agent.name, status)
    except ApiException as exc:
        if exc.status == 404:
            runtime.tracker.forget(agent.namespace, agent.name)
            return
        logger.warning("could not mark %s/%s Unreachable (%s); retrying", agent.namespace, agent.name, exc.status)
        return
    except Exception as exc:
        logger.warning("could not mark %s/%s Unreachable (%s); retrying", agent.namespace, agent.name, exc)
        return
    agent.phase = Phase.UNREACHABLE
    metrics.TRANSITIONS.labels(from_phase=str(previous), to_phase=Phase.UNREACHABLE.value).inc()
    logger.warning("agent %s/%s is Unreachable: %s", agent.namespace, agent.name, detail)
    runtime.index_phase(agent, Phase.UNREACHABLE)
    await runtime.kube.post_event(
        agent_reference(agent.namespace, agent.name, agent.uid),
        "Warning",
        "Unreachable",
        f"No heartbeat observed for more than {silent:.0f}s; "
        f"will be removed after {agent.timing.gc_after:.0f}s more of silence.",
    )


async def collect(runtime: Runtime, agent: TrackedAgent) -> None:
    ref = agent_reference(agent.namespace, agent.name, agent.uid)
    await runtime.kube.post_event(
        ref,
        "Normal",
        "Removed",
        f"Unreachable for more than {agent.timing.gc_after:.0f}s; deleting the Agent.",
    )
    for hook in BEFORE_DELETE_HOOKS:
        await hook(agent)
    try:
        outcome = await runtime.kube.delete_agent(agent.namespace, agent.name, agent.uid, agent.resource_version)
    except Exception as exc:
        logger.warning("could not delete %s/%s (%s); retrying", agent.namespace, agent.name, exc)
        return
    metrics.DELETIONS.labels(outcome=outcome.value).inc()
    if outcome is DeleteOutcome.CONFLICT:
        logger.info("agent %s/%s changed since the decision to delete it; kept", agent.namespace, agent.name)
        await runtime.kube.post_event(ref, "Normal", "RemovalCancelled", "The Agent changed before the delete; kept.")
        return
    logger.warning("agent %s/%s deleted after %.0fs unreachable", agent.namespace, agent.name, agent.timing.gc_after)
    runtime.tracker.forget(agent.namespace, agent.name)
    runtime.index_forget(agent.namespace, agent.name)


def report_self_preservation(runtime: Runtime, state: SelfPreservation) -> None:
    metrics.SELF_PRESERVATION.set(1 if state.active else 0)
    max_pause = runtime.settings.self_preservation_max_pause_seconds
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
    runtime.writes.start(("", reason), runtime.kube.post_event(runtime.self_reference(), event_type, reason, message))
