"""The first initialisation of an Agent, decided once for the handler and the sweeper (no cluster)."""

from __future__ import annotations

import uuid
from typing import Any

from agent_registry.controller.initialisation import (
    adopted_id,
    agent_id_for,
    decide_initialisation,
    needs_initialisation,
)
from agent_registry.controller.tracker import TrackedAgent, Tracker
from agent_registry.schema import constants as c
from agent_registry.schema.agent import Phase

NOW = "2030-01-01T00:00:00Z"
FACADE_ID = str(uuid.uuid4())


def observed(
    status: dict[str, Any] | None = None, labels: dict[str, str] | None = None, generation: int = 3
) -> TrackedAgent:
    body = {
        "metadata": {
            "namespace": "ns",
            "name": "a",
            "uid": "uid-a",
            "resourceVersion": "1",
            "generation": generation,
            "labels": labels or {},
        },
        "spec": {"type": "cost"},
        "status": status or {},
    }
    return Tracker().observe(body, now=0.0).agent


def test_a_new_agent_gets_labels_id_phase_conditions_generation_and_registered_at() -> None:
    agent = observed()
    init = decide_initialisation(agent, "id-1", Phase.HEALTHY, NOW)
    assert init.labels == {c.AGENT_ID_LABEL: "id-1", c.AGENT_TYPE_LABEL: "cost"}
    assert init.status["agentId"] == "id-1"
    assert init.status["phase"] == "Healthy"
    assert init.status["registeredAt"] == NOW
    assert init.status["observedGeneration"] == 3
    assert {cond["type"] for cond in init.status["conditions"]} == {"Ready", "Reachable"}
    assert all(cond["observedGeneration"] == 3 for cond in init.status["conditions"])
    assert init.announce
    assert init.event_message == "Agent registered with id id-1, phase Healthy."


def test_an_existing_registered_at_is_kept_and_not_announced_again() -> None:
    # The facade wrote registeredAt at registration; a new leader or a restart must not move it.
    agent = observed(status={"registeredAt": "2029-12-31T23:59:59Z"})
    init = decide_initialisation(agent, "id-1", Phase.HEALTHY, NOW)
    assert "registeredAt" not in init.status
    assert not init.announce


def test_registered_is_announced_once_per_agent() -> None:
    # A stale event that predates our own patch lacks registeredAt too.
    agent = observed()
    agent.registered_announced = True
    init = decide_initialisation(agent, "id-1", Phase.HEALTHY, NOW)
    assert not init.announce and "registeredAt" not in init.status
    assert init.status["agentId"] == "id-1"


def test_the_phase_given_is_written() -> None:
    init = decide_initialisation(observed(), "id-1", Phase.DEGRADED, NOW)
    assert init.status["phase"] == "Degraded"
    assert init.event_message.endswith("phase Degraded.")


def test_ids_never_change_once_given() -> None:
    agent = observed()
    assert agent_id_for(agent, {"agentId": "in-status"}, {c.AGENT_ID_LABEL: FACADE_ID}) == "in-status"
    assert agent_id_for(agent, {}, {c.AGENT_ID_LABEL: FACADE_ID}) == FACADE_ID
    agent.agent_id = "given-earlier"
    assert agent_id_for(agent, {}, {c.AGENT_ID_LABEL: "not-a-uuid"}) == "given-earlier"
    agent.agent_id = None
    uuid.UUID(agent_id_for(agent, {}, {}))


def test_only_a_uuid_label_is_adopted() -> None:
    assert adopted_id({c.AGENT_ID_LABEL: FACADE_ID}) == FACADE_ID
    assert adopted_id({c.AGENT_ID_LABEL: "cost-1"}) is None
    assert adopted_id({}) is None


def test_initialised_means_the_same_id_in_status_and_label() -> None:
    assert needs_initialisation({}, {}, "x")
    assert needs_initialisation({"agentId": "x"}, {}, "x")
    assert needs_initialisation({"agentId": "x"}, {c.AGENT_ID_LABEL: "y"}, "x")
    assert not needs_initialisation({"agentId": "x"}, {c.AGENT_ID_LABEL: "x"}, "x")


def test_the_tracker_keeps_what_initialisation_reads_up_to_date() -> None:
    tracker = Tracker()
    body: dict[str, Any] = {
        "metadata": {"namespace": "ns", "name": "a", "uid": "u", "resourceVersion": "1", "generation": 1},
        "spec": {"type": "cost"},
        "status": {},
    }
    agent = tracker.observe(body, now=0.0).agent
    assert (agent.generation, agent.registered_at) == (1, None)
    body["metadata"] = {**body["metadata"], "generation": 2, "resourceVersion": "2"}
    body["status"] = {"registeredAt": NOW}
    tracker.observe(body, now=1.0)
    assert (agent.generation, agent.registered_at) == (2, NOW)
