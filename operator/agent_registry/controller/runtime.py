"""Everything the operator holds while it runs: settings, the tracker, the API client,
leadership, the index sync, the sweeper, and their background tasks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from agent_registry import kubeapi
from agent_registry.controller import metrics
from agent_registry.controller.announce import EventBudget
from agent_registry.controller.indexsync import IndexSync
from agent_registry.controller.kube import Kube, agent_reference
from agent_registry.controller.leader import LeaderElector
from agent_registry.controller.settings import OperatorSettings
from agent_registry.controller.sight import Sight
from agent_registry.controller.sweeper import BeforeDelete, Sweeper, Writes
from agent_registry.controller.tracker import TrackedAgent, Tracker
from agent_registry.schema.agent import Phase

logger = logging.getLogger(__name__)

SUMMARY_SECONDS = 10.0


class Runtime:
    def __init__(self, settings: OperatorSettings, before_delete: BeforeDelete | None = None) -> None:
        """``before_delete`` is the sweeper's test seam (see ``Sweeper.before_delete``)."""
        self.settings = settings
        # The operator has no kubeconfig setting: its credentials come by the precedence
        # every process uses (kubeapi.credentials), as kopf's login does.
        self.kube = Kube(kubeapi.load(), timeout=settings.kube_timeout_seconds)
        self.tracker = Tracker(
            share=settings.self_preservation_share,
            min_agents=settings.self_preservation_min_agents,
            max_pause=settings.self_preservation_max_pause_seconds,
        )
        self.index = IndexSync(settings, self.is_leader)
        self.writes = Writes()
        self.registered_events = EventBudget(settings.registered_events_per_second, settings.registered_events_burst)
        self.sight = Sight(
            scopes=list(settings.namespaces) or [None],
            probe=self.kube.probe,
            on_regained=self._regained_sight,
            grace=lambda scope: self.tracker.restart_grace(time.monotonic(), namespace=scope),
            interval=settings.sight_probe_interval_seconds,
            gap=settings.sight_gap_seconds,
            watch_wait=settings.sight_watch_wait_seconds,
        )
        self.sweeper = Sweeper(
            settings,
            self.tracker,
            self.kube,
            post_event=self.kube.post_event,
            index=self.index,
            seen_until=self.sight.seen_until,
            is_leader=self.is_leader,
            self_reference=self.self_reference(),
            writes=self.writes,
            registered_event=self.registered_event,
            before_delete=before_delete,
        )
        self.leader: LeaderElector | None = None
        if settings.leader_election:
            self.leader = LeaderElector(
                self.kube,
                name=settings.lease_name,
                namespace=settings.lease_namespace,
                identity=settings.identity,
                lease_duration=settings.lease_duration_seconds,
                renew_period=settings.lease_renew_seconds,
                on_started_leading=self._started_leading,
                on_stopped_leading=self._stopped_leading,
            )
        self._tasks: list[asyncio.Task[None]] = []
        self._warned: set[tuple[str, str]] = set()

    def is_leader(self) -> bool:
        return self.leader is None or self.leader.is_leader

    async def start(self) -> None:
        metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
        metrics.IS_LEADER.set(1 if self.is_leader() else 0)
        self._tasks.append(asyncio.create_task(self.sight.run(), name="sight"))
        self._tasks.append(asyncio.create_task(self.sweeper.run(), name="sweeper"))
        self._tasks.append(asyncio.create_task(self.index.run(), name="index-sync"))
        self._tasks.append(asyncio.create_task(self.summarise_suppressed_events(), name="event-summary"))
        if self.leader is not None:
            self._tasks.append(asyncio.create_task(self.leader.run(), name="leader-election"))
        scope = ", ".join(self.settings.namespaces) or "all namespaces"
        logger.info(
            "operator started for %s (identity %s, leader election %s)",
            scope,
            self.settings.identity,
            "on" if self.leader else "off",
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.writes.cancel()
        await self.index.close()
        await self.kube.aclose()

    async def _started_leading(self) -> None:
        # A new leader knows nothing about the silence before it took over: everyone
        # gets a fresh grace period, exactly as after a restart.
        self.tracker.restart_grace(time.monotonic())
        self.index.request_full_resync()
        metrics.IS_LEADER.set(1)

    async def _regained_sight(self, scope: str | None, blind_for: float) -> None:
        # The Sight has already given the scope a fresh grace period (heartbeats sent while
        # the operator could not see may have failed through no fault of the agents);
        # this makes the gap visible.
        if self.is_leader():
            where = f"namespace {scope}" if scope else "the cluster"
            self.writes.start(
                ("", f"SightRegained {scope}"),
                self.kube.post_event(
                    self.self_reference(),
                    "Warning",
                    "SightRegained",
                    f"The operator could not see the API server for {where} for {blind_for:.0f}s; "
                    "no agent was judged meanwhile and every agent there gets a fresh grace period.",
                ),
            )

    async def _stopped_leading(self) -> None:
        metrics.IS_LEADER.set(0)

    # --- index ------------------------------------------------------------------

    def index_put(self, body: dict[str, Any], agent: TrackedAgent, phase: Phase) -> None:
        load = agent.lease.load if agent.lease else None
        self.index.put(agent.key, body, phase, agent.last_heard_wall, load, agent.card)

    def index_forget(self, namespace: str, name: str) -> None:
        self.index.drop((namespace, name))

    # --- events -----------------------------------------------------------------

    def self_reference(self) -> dict[str, str]:
        """The object the operator's own Events are about: its leader Lease."""
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "namespace": self.settings.lease_namespace,
            "name": self.settings.lease_name,
            "uid": "",
        }

    async def registered_event(self, ref: Mapping[str, str], message: str) -> None:
        """A ``Registered`` Event, within the budget; over it, counted for the summary."""
        if self.registered_events.allow():
            await self.kube.post_event(ref, "Normal", "Registered", message)
        else:
            metrics.EVENTS_SUPPRESSED.labels(reason="Registered").inc()

    async def summarise_suppressed_events(self) -> None:
        """Every ``SUMMARY_SECONDS``: one Event for the Registered Events the budget held back."""
        while True:
            await asyncio.sleep(SUMMARY_SECONDS)
            count = self.registered_events.take_suppressed()
            if count and self.is_leader():
                per_second = self.settings.registered_events_per_second
                await self.kube.post_event(
                    self.self_reference(),
                    "Normal",
                    "RegisteredEventsSuppressed",
                    f"{count} agents registered in the last {SUMMARY_SECONDS:.0f}s without their own Registered "
                    f"Event (at most {per_second:g}/s are posted); each has its phase, conditions and log line.",
                )

    async def warn_invalid_once(self, agent: TrackedAgent, error: str) -> None:
        key = (agent.uid, agent.resource_version)
        if key in self._warned:
            return
        self._warned.add(key)
        logger.error("agent %s/%s has an invalid spec, not indexed: %s", agent.namespace, agent.name, error)
        if self.is_leader():
            await self.kube.post_event(
                agent_reference(agent.namespace, agent.name, agent.uid),
                "Warning",
                "InvalidSpec",
                f"The Agent's spec is invalid and is ignored until fixed: {error}",
            )
