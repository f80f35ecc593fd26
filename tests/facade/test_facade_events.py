"""``GET /agents/{id}/events``: the Kubernetes Events the operator records about an agent,
through the REST API, on the real stack (API server, Redis, operator, facade)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from accounts import READER_RULES, Accounts
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import FacadeProcess, OperatorProcess
from agent_registry.localcluster.process import wait_for
from facade_harness import FAST_TIMINGS, assert_error, indexed, registration
from operator_harness import Agents

EVENT_FIELDS = {"type", "reason", "message", "count", "first_seen", "last_seen", "source"}


def register(http: httpx.Client, name: str, **fields: Any) -> str:
    response = http.post("/agents/register", json=registration(name, **fields))
    assert response.status_code == 201, response.text
    return str(response.json()["agent_id"])


def events_of(http: httpx.Client, agent_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/agents/{agent_id}/events")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["events"])
    return list(body["events"])


def reasons(http: httpx.Client, agent_id: str) -> list[str]:
    return [event["reason"] for event in events_of(http, agent_id)]


def test_an_agent_that_goes_unreachable_has_that_event_listed_newest_first(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess], agents: Agents
) -> None:
    facade = make_facade(timings=FAST_TIMINGS)
    with facade.client() as http:
        agent_id = register(http, "silent")
        # No heartbeat after the registration: Unreachable after FAST_TIMINGS' 3 s.
        wait_for("silent Unreachable", lambda: agents.phase("silent") == "Unreachable", timeout=20)
        listed = wait_for(
            "the Unreachable Event listed",
            lambda: (found := events_of(http, agent_id)) and found[0]["reason"] == "Unreachable" and found,
        )

    newest = listed[0]
    assert set(newest) == EVENT_FIELDS
    assert newest["type"] == "Warning"
    assert "No heartbeat observed" in newest["message"]
    assert newest["count"] == 1
    assert newest["source"] == "agent-registry-operator"
    # Older ones follow (the registration's), each newer than or as new as the next.
    assert "Registered" in [event["reason"] for event in listed[1:]]
    stamps = [datetime.fromisoformat(event["last_seen"]) for event in listed]
    assert stamps == sorted(stamps, reverse=True)
    assert all(datetime.fromisoformat(e["first_seen"]) <= datetime.fromisoformat(e["last_seen"]) for e in listed)


def test_only_this_objects_events_not_those_of_an_earlier_agent_of_the_same_name(
    operator: OperatorProcess, http: httpx.Client, agents: Agents
) -> None:
    first = register(http, "reborn")
    wait_for("the first one's Registered Event", lambda: "Registered" in reasons(http, first))
    assert http.post(f"/agents/{first}/unregister").status_code == 200
    wait_for("the first one gone", lambda: agents.get("reborn") is None)

    second = register(http, "reborn")
    assert second != first
    wait_for("the second one's Registered Event", lambda: "Registered" in reasons(http, second))
    # The first object's Events are still in the namespace, about the same name; not listed.
    assert reasons(http, second).count("Registered") == 1


def test_an_unknown_id_is_404_and_a_bad_one_400(operator: OperatorProcess, http: httpx.Client) -> None:
    assert_error(http.get("/agents/123e4567-e89b-12d3-a456-426614174000/events"), 404, "Agent not found")
    assert_error(http.get("/agents/not-a-uuid/events"), 400, "not a UUID")


def test_a_caller_rbac_does_not_let_read_the_agent_gets_403(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess], accounts: Accounts
) -> None:
    facade = make_facade(auth=True)
    accounts.grant("writer", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])
    accounts.grant("reader", READER_RULES)
    with facade.client(token=accounts.token("writer")) as writer:
        agent_id = register(writer, "watched")
    unknown = "123e4567-e89b-12d3-a456-426614174000"

    with facade.client(token=accounts.token("nobody")) as nobody:
        # The same 403 for an agent that exists and one that does not: nothing to probe with.
        assert_error(nobody.get(f"/agents/{agent_id}/events"), 403, "may not get agents", agent_id)
        assert_error(nobody.get(f"/agents/{unknown}/events"), 403, "may not get agents", unknown)
    with facade.client() as anonymous:
        assert_error(anonymous.get(f"/agents/{agent_id}/events"), 401)
    # A reader needs no rule on events: the facade reads them for whoever may read the agent.
    with facade.client(token=accounts.token("reader")) as reader:
        wait_for("the Registered Event", lambda: "Registered" in reasons(reader, agent_id))


def test_with_the_api_server_down_the_events_are_503_saying_why(
    operator: OperatorProcess,
    make_facade: Callable[..., FacadeProcess],
    controlplane: LocalControlPlane,
    redis_url: str,
    namespace: str,
) -> None:
    writer, reader = make_facade(), make_facade()  # the reader finds the agent in the index only
    with writer.client() as http, reader.client() as reads:
        agent_id = register(http, "cost-a")
        wait_for("indexed", lambda: indexed(redis_url, namespace, agent_id) is not None)
        assert reads.get(f"/agents/{agent_id}/events").status_code == 200

        controlplane.stop_apiserver()
        try:
            response = reads.get(f"/agents/{agent_id}/events")
            # The agent is known (from the index); its Events are kept only by the API server.
            assert_error(response, 503, "Kubernetes API server", "unavailable")
            assert response.headers["retry-after"]
            assert reads.get(f"/agents/{agent_id}").status_code == 200
        finally:
            controlplane.start_apiserver()
        wait_for("the Events again", lambda: reads.get(f"/agents/{agent_id}/events").status_code == 200)
