"""The sidecar and the agent's A2A card, with the operator: the card is fetched, validated and
recorded on the Agent; re-fetched only when it changed; a bad card is a CardValid=False
condition naming the field and an InvalidAgentCard Event, and heartbeats go on.

Real sidecar subprocess, a real HTTP agent on loopback, real API server, Redis and operator.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import OperatorProcess, SidecarProcess
from agent_registry.localcluster.process import wait_for
from agent_registry.schema.card import StoredCard
from cards import BAD_CARDS, a2a_card
from fake_agent import FakeAgent
from operator_harness import Agents
from sidecar_harness import sidecar_for_test

NAME = "carded-agent"
REFRESH_SECONDS = 2


@pytest.fixture
def fake_agent() -> Iterator[FakeAgent]:
    with FakeAgent() as agent:
        yield agent


def start_sidecar(
    controlplane: LocalControlPlane, namespace: str, agent: FakeAgent, log_dir: Path, **settings: Any
) -> SidecarProcess:
    return sidecar_for_test(
        log_dir,
        agent,
        agent_name=NAME,
        namespace=namespace,
        kubeconfig=controlplane.kubeconfig,
        capabilities=["rightsizing"],
        **({"card_url": agent.card_url, "card_refresh_seconds": REFRESH_SECONDS} | settings),
    ).start()


def status(agents: Agents) -> dict[str, Any]:
    return (agents.get(NAME) or {}).get("status") or {}


def card_valid(agents: Agents) -> dict[str, Any] | None:
    return next((cond for cond in status(agents).get("conditions") or [] if cond["type"] == "CardValid"), None)


def test_the_card_is_recorded_and_fetched_again_only_as_it_changes(
    operator: OperatorProcess,
    agents: Agents,
    controlplane: LocalControlPlane,
    namespace: str,
    fake_agent: FakeAgent,
    tmp_path: Path,
) -> None:
    fake_agent.card = a2a_card(skills=("rightsizing",))
    first = StoredCard.validated(fake_agent.card)
    sidecar = start_sidecar(controlplane, namespace, fake_agent, tmp_path)
    try:
        wait_for("the card recorded", lambda: status(agents).get("agentCardHash") == first.hash)
        assert status(agents)["agentCard"] == first.status_fields()["agentCard"]
        assert status(agents)["agentCardSkills"] == ["rightsizing"]
        wait_for("CardValid=True", lambda: (card_valid(agents) or {}).get("status") == "True")
        assert (card_valid(agents) or {})["reason"] == "CardAccepted"

        # Unchanged: conditional GETs answered 304, and no write to the Agent. Heartbeats go
        # on meanwhile, more of them than card fetches.
        version = (agents.get(NAME) or {})["metadata"]["resourceVersion"]
        asked, beats = fake_agent.card_requests, fake_agent.requests
        wait_for("two conditional fetches", lambda: fake_agent.card_not_modified >= 2, timeout=4 * REFRESH_SECONDS + 10)
        assert fake_agent.card_requests - asked < fake_agent.requests - beats
        # An agent that gives no ETag: the same card again is told apart by its hash.
        fake_agent.card_etags = False
        fake_agent.card = dict(reversed(list(a2a_card(skills=("rightsizing",)).items())))  # same card, other bytes
        asked = fake_agent.card_requests
        wait_for("two plain fetches", lambda: fake_agent.card_requests >= asked + 2, timeout=4 * REFRESH_SECONDS + 10)
        assert (agents.get(NAME) or {})["metadata"]["resourceVersion"] == version

        # Changed: fetched on the next look and recorded.
        fake_agent.card_etags = True
        fake_agent.card = a2a_card(skills=("rightsizing", "spot_migration"))
        second = StoredCard.validated(fake_agent.card)
        wait_for("the new card recorded", lambda: status(agents).get("agentCardHash") == second.hash)
        assert status(agents)["agentCardSkills"] == ["rightsizing", "spot_migration"]
        assert sidecar.running
        assert sidecar.messages().count("recorded the agent card") == 2
    finally:
        sidecar.stop()


def test_each_bad_card_is_a_condition_naming_the_field_an_event_and_heartbeats_go_on(
    operator: OperatorProcess,
    agents: Agents,
    controlplane: LocalControlPlane,
    namespace: str,
    fake_agent: FakeAgent,
    tmp_path: Path,
) -> None:
    good = a2a_card(skills=("rightsizing",))
    fake_agent.card = good
    sidecar = start_sidecar(controlplane, namespace, fake_agent, tmp_path)
    try:
        wait_for("CardValid=True", lambda: (card_valid(agents) or {}).get("status") == "True")
        stored_hash = status(agents)["agentCardHash"]
        cases = [(case.name, case.body, case.reason, case.field) for case in BAD_CARDS]
        cases.append(("no card served", None, "FetchFailed", "HTTP 404"))
        for name, body, reason, field in cases:
            fake_agent.card = body
            wait_for(
                f"CardValid=False for {name}",
                lambda reason=reason, field=field: (
                    (cond := card_valid(agents)) is not None
                    and cond["status"] == "False"
                    and cond["reason"] == reason
                    and field in cond["message"]
                ),
                timeout=3 * REFRESH_SECONDS + 15,
            )
            assert status(agents)["agentCardHash"] == stored_hash  # the last good card stays
            agents.wait_beats(NAME, 2)  # heartbeats go on
            assert agents.phase(NAME) == "Healthy"

        events = [event for event in agents.events(NAME) if event.get("reason") == "InvalidAgentCard"]
        assert all(event["type"] == "Warning" for event in events)
        messages = " | ".join(str(event.get("message")) for event in events)
        for _, _, reason, field in cases:
            assert f"{reason}: " in messages and field in messages, (field, messages)

        fake_agent.card = good
        wait_for("CardValid=True again", lambda: (card_valid(agents) or {}).get("status") == "True")
        assert "agentCardProblem" not in status(agents)
        assert sidecar.running
        problems = [
            entry for entry in sidecar.entries() if entry["msg"] == "the agent's card was not taken; heartbeats go on"
        ]
        assert len(problems) == len(cases)  # one line per distinct problem, not one per fetch
    finally:
        sidecar.stop()
