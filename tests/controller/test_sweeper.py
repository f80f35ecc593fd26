"""The sweeper's writes after its decisions, against a fake API (no cluster)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pytest

from agent_registry import kubeapi
from agent_registry.controller.announce import EventBudget
from agent_registry.controller.kube import DeleteOutcome
from agent_registry.controller.settings import OperatorSettings
from agent_registry.controller.sweeper import Sweeper, Writes
from agent_registry.controller.tracker import LeaseSeen, TrackedAgent, Tracker
from agent_registry.schema import constants as c
from agent_registry.schema.agent import Load, Phase

FAST = {"intervalSeconds": 1, "unreachableAfterSeconds": 1, "gcAfterSeconds": 1}
SELF = {"kind": "Lease", "namespace": "ns", "name": "operator"}


class FakeKube:
    def __init__(self) -> None:
        self.labels: dict[str, dict[str, str]] = {}
        self.status: dict[str, dict[str, Any]] = {}
        self.deleted: list[tuple[str, str]] = []
        self.events: list[tuple[str, str]] = []
        self.fail_status: Exception | None = None
        self.delete_outcome = DeleteOutcome.DELETED
        self.deleted_leases: list[tuple[str, str]] = []
        self.lease_outcome = DeleteOutcome.DELETED

    async def patch_labels(self, namespace: str, name: str, labels: Mapping[str, str]) -> None:
        self.labels.setdefault(name, {}).update(labels)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> str:
        if self.fail_status is not None:
            raise self.fail_status
        self.status.setdefault(name, {}).update(status)
        return "rv-after-patch"

    async def delete_agent(self, namespace: str, name: str, uid: str, resource_version: str) -> DeleteOutcome:
        self.deleted.append((name, resource_version))
        return self.delete_outcome

    async def delete_lease(self, namespace: str, name: str, uid: str, resource_version: str) -> DeleteOutcome:
        self.deleted_leases.append((name, resource_version))
        return self.lease_outcome

    async def post_event(self, involved: Mapping[str, str], event_type: str, reason: str, message: str) -> None:
        self.events.append((involved["name"], reason))


class FakeIndex:
    def __init__(self) -> None:
        self.phases: dict[tuple[str, str], Phase] = {}
        self.dropped: list[tuple[str, str]] = []
        self.touched: list[tuple[str, str]] = []

    def set_phase(self, key: tuple[str, str], phase: Phase) -> None:
        self.phases[key] = phase

    def drop(self, key: tuple[str, str]) -> None:
        self.dropped.append(key)

    def touch(self, key: tuple[str, str], last_seen: datetime | None, load: Load | None = None) -> None:
        self.touched.append(key)


class World:
    def __init__(self, leader: bool = True) -> None:
        self.tracker = Tracker()
        self.kube = FakeKube()
        self.index = FakeIndex()
        self.leader = leader
        self.before_delete: list[str] = []
        self.sweeper = Sweeper(
            OperatorSettings(),
            self.tracker,
            self.kube,
            post_event=self.kube.post_event,
            index=self.index,
            seen_until=lambda namespace: None,  # blind: tests drive the writes directly
            is_leader=lambda: self.leader,
            self_reference=SELF,
            writes=Writes(),
            registered_event=lambda ref, message: self.kube.post_event(ref, "Normal", "Registered", message),
            before_delete=self._before_delete,
        )

    async def _before_delete(self, agent: TrackedAgent) -> None:
        self.before_delete.append(agent.name)

    def observe(self, name: str, status: dict[str, Any] | None = None, generation: int = 1) -> TrackedAgent:
        body = {
            "metadata": {
                "namespace": "ns",
                "name": name,
                "uid": f"uid-{name}",
                "resourceVersion": "1",
                "generation": generation,
            },
            "spec": {"type": "cost", "heartbeat": FAST},
            "status": status or {},
        }
        return self.tracker.observe(body, now=0.0).agent


async def test_initialise_writes_what_the_handler_would_and_announces_once() -> None:
    world = World()
    agent = world.observe("a", status={"reportedStatus": "degraded"}, generation=4)
    agent.agent_id = "id-a"
    await world.sweeper.initialise(agent)
    assert world.kube.labels["a"] == {c.AGENT_ID_LABEL: "id-a", c.AGENT_TYPE_LABEL: "cost"}
    status = world.kube.status["a"]
    assert status["agentId"] == "id-a" and status["observedGeneration"] == 4 and "registeredAt" in status
    assert status["phase"] == "Degraded"  # the agent's own report, not Healthy
    assert agent.initialised and agent.resource_version == "rv-after-patch"
    assert world.kube.events == [("a", "Registered")]
    await world.sweeper.initialise(agent)  # a second initialisation (label removed by hand)
    assert world.kube.events == [("a", "Registered")]


async def test_initialise_keeps_an_existing_registered_at() -> None:
    world = World()
    agent = world.observe("a", status={"registeredAt": "2029-01-01T00:00:00Z"})
    await world.sweeper.initialise(agent)
    assert "registeredAt" not in world.kube.status["a"]
    assert world.kube.events == []


async def test_a_failed_initialisation_is_retried_and_announced_when_it_lands() -> None:
    world = World()
    agent = world.observe("a")
    world.kube.fail_status = kubeapi.Unavailable(500, "InternalError", "boom")
    await world.sweeper.initialise(agent)
    assert not agent.initialised and world.kube.events == []
    world.kube.fail_status = None
    await world.sweeper.initialise(agent)
    assert agent.initialised and world.kube.events == [("a", "Registered")]


async def test_the_sweep_initialises_only_what_is_not_initialised_and_only_as_leader() -> None:
    world = World(leader=False)
    done, todo = world.observe("done"), world.observe("todo")
    done.initialised = True
    world.sweeper.sweep_once()
    await world.sweeper.writes.drain()
    assert world.kube.status == {}
    world.leader = True
    world.sweeper.sweep_once()
    await world.sweeper.writes.drain()
    assert set(world.kube.status) == {"todo"} and todo.initialised


async def test_marking_unreachable_updates_the_index_and_an_agent_gone_is_forgotten() -> None:
    world = World()
    agent = world.observe("a")
    await world.sweeper.mark_unreachable(agent)
    assert agent.phase == Phase.UNREACHABLE and world.index.phases[agent.key] == Phase.UNREACHABLE
    assert world.kube.events == [("a", "Unreachable")]
    gone = world.observe("gone")
    world.kube.fail_status = kubeapi.NotFound(404, "NotFound", 'agents "x" not found')
    await world.sweeper.mark_unreachable(gone)
    assert gone.key not in world.tracker.agents


@pytest.mark.parametrize(
    ("outcome", "kept"), [(DeleteOutcome.DELETED, False), (DeleteOutcome.GONE, False), (DeleteOutcome.CONFLICT, True)]
)
async def test_collect_awaits_the_seam_then_deletes_with_the_decision_s_version(
    outcome: DeleteOutcome, kept: bool
) -> None:
    world = World()
    agent = world.observe("a")
    world.kube.delete_outcome = outcome
    await world.sweeper.collect(agent)
    assert world.before_delete == ["a"]
    assert world.kube.deleted == [("a", "1")]
    assert (agent.key in world.tracker.agents) is kept
    assert world.index.dropped == ([] if kept else [agent.key])
    reasons = [reason for _, reason in world.kube.events]
    assert reasons == (["Removed", "RemovalCancelled"] if kept else ["Removed"])


# --- Leases -------------------------------------------------------------------------------------


def lease_of(agent: TrackedAgent, rv: str = "7") -> LeaseSeen:
    return LeaseSeen(
        agent_uid=agent.uid, name=f"agent-{agent.name}", uid="lease-uid", resource_version=rv, signature="s"
    )


async def test_collecting_deletes_the_lease_first_as_it_was_seen() -> None:
    world = World()
    agent = world.observe("a")
    agent.lease = lease_of(agent)
    await world.sweeper.collect(agent)
    assert world.kube.deleted_leases == [("agent-a", "7")]
    assert world.kube.deleted == [("a", "1")]
    assert ("ns", "a") not in world.tracker.agents


async def test_a_renewal_racing_the_collection_keeps_the_agent() -> None:
    world = World()
    agent = world.observe("a")
    agent.lease = lease_of(agent)
    world.kube.lease_outcome = DeleteOutcome.CONFLICT  # renewed since it was seen
    await world.sweeper.collect(agent)
    assert world.kube.deleted == []
    assert ("a", "RemovalCancelled") in world.kube.events
    assert ("ns", "a") in world.tracker.agents


async def test_a_renewal_brings_an_unreachable_agent_back_with_an_event() -> None:
    world = World()
    agent = world.observe("a", status={"agentId": "id-a", "phase": "Unreachable", "reportedStatus": "degraded"})
    agent.initialised = True
    world.tracker.observe_lease("ns", "a", lease_of(agent), now=1.0)
    world.sweeper.renewed(agent)
    await world.sweeper.writes.drain()
    assert world.kube.status["a"]["phase"] == "Degraded"  # the report it last made
    assert world.index.phases[("ns", "a")] == Phase.DEGRADED and world.index.touched == [("ns", "a")]
    assert world.kube.events == [("a", "Recovered")]


def test_the_event_budget_allows_a_burst_then_a_rate() -> None:
    now = [0.0]
    budget = EventBudget(rate=2.0, burst=3, clock=lambda: now[0])
    assert [budget.allow() for _ in range(5)] == [True, True, True, False, False]
    now[0] = 1.0  # two more tokens
    assert [budget.allow() for _ in range(3)] == [True, True, False]
    assert budget.take_suppressed() == 3 and budget.take_suppressed() == 0
