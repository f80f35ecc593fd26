"""Routing that knows per-capability health, load, sticky keys and versions, through the
real stack: REST heartbeats, the agent's Lease, the operator, the Redis index and the facade."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from agent_registry.localcluster.launcher import FacadeProcess, OperatorProcess
from agent_registry.localcluster.process import wait_for
from agent_registry.localcluster.redis_server import LocalRedis
from agent_registry.schema import constants as c
from agent_registry.schema.agent import Load
from facade_harness import indexed, registration
from operator_harness import Agents

UNHEALTHY_SUMMARY = {"summarize": {"status": "unhealthy", "reason": "model provider answers 429"}}


def register(http: httpx.Client, name: str, **fields: Any) -> str:
    response = http.post("/agents/register", json=registration(name, **fields))
    assert response.status_code == 201, response.text
    return str(response.json()["agent_id"])


def beat(http: httpx.Client, agent_id: str, **body: Any) -> httpx.Response:
    return http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy", **body})


def picked(http: httpx.Client, count: int, **params: Any) -> Counter[str]:
    names: Counter[str] = Counter()
    for _ in range(count):
        response = http.get("/agents/route", params=params)
        assert response.status_code == 200, response.text
        names[response.json()["name"]] += 1
    return names


def test_a_capability_reported_unhealthy_is_skipped_for_it_and_only_for_it(
    operator: OperatorProcess,
    http: httpx.Client,
    make_facade: Callable[..., FacadeProcess],
    agents: Agents,
    redis_url: str,
    namespace: str,
) -> None:
    caps = ["summarize", "translate"]
    sick = register(http, "sick", type="application", capabilities=caps)
    register(http, "fine", type="application", capabilities=caps)
    assert beat(http, sick, capabilities=UNHEALTHY_SUMMARY).status_code == 200

    shown = http.get(f"/agents/{sick}").json()
    assert shown["capability_health"] == UNHEALTHY_SUMMARY
    assert shown["status"] == "healthy"  # the agent as a whole is not down
    stored = agents.get("sick")
    assert stored is not None
    assert stored["status"]["capabilityHealth"] == [
        {"name": "summarize", "status": "unhealthy", "reason": "model provider answers 429"}
    ]
    wait_for(
        "the report indexed",
        lambda: (
            (record := indexed(redis_url, namespace, sick)) is not None and record.agent.capability_health is not None
        ),
    )
    assert agents.phase("sick") == "Healthy"

    # This facade wrote lately (it lists candidates itself); a fresh one asks the index alone.
    fresh = make_facade()
    with fresh.client() as other:
        for client in (http, other):
            assert picked(client, 10, type="application", capability="summarize") == {"fine": 10}
            assert set(picked(client, 10, type="application", capability="translate")) == {"sick", "fine"}
            healthy = client.get("/agents/healthy", params={"capability": "summarize"}).json()["agents"]
            assert [agent["name"] for agent in healthy] == ["fine"]
            everyone = client.get("/agents", params={"capability": "summarize"}).json()["agents"]
            assert [agent["name"] for agent in everyone] == ["fine", "sick"]

        # A heartbeat without the report says every capability is healthy again.
        assert beat(http, sick).status_code == 200
        assert "capability_health" not in http.get(f"/agents/{sick}").json()
        wait_for(
            "sick routed for summarize again",
            lambda: "sick" in picked(other, 6, type="application", capability="summarize"),
        )


def test_a_bad_report_is_refused_naming_the_field_and_changes_nothing(
    operator: OperatorProcess, http: httpx.Client, agents: Agents
) -> None:
    agent_id = register(http, "strict", capabilities=["summarize"])
    wait_for("the operator's phase", lambda: agents.phase("strict") == "Healthy")
    before = agents.get("strict")
    assert before is not None
    cases = {
        "capabilities.translate": {"capabilities": {"translate": {"status": "unhealthy"}}},
        "capabilities.summarize.status": {"capabilities": {"summarize": {"status": "broken"}}},
        "load.max": {"load": {"in_flight": 1, "max": 0}},
        "load.in_flight": {"load": {"in_flight": -1, "max": 5}},
    }
    for field, body in cases.items():
        response = beat(http, agent_id, **body)
        assert response.status_code == 400, (field, response.text)
        assert field in response.json()["error"], (field, response.text)
    after = agents.get("strict")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert agents.lease("strict") is None  # not even a renewal


def test_the_idle_agent_gets_most_picks_and_a_full_one_none(
    operator: OperatorProcess,
    make_facade: Callable[..., FacadeProcess],
    agents: Agents,
    redis_url: str,
    namespace: str,
) -> None:
    facade = make_facade(route_seed=20261201)
    with facade.client() as http:
        idle = register(http, "idle", type="resource")
        busy = register(http, "busy", type="resource")

        def load_of(agent_id: str) -> Load | None:
            record = indexed(redis_url, namespace, agent_id)
            # Not indexed yet: the operator has not seen the registration (slow machine).
            return record.load if record is not None else None

        def report(agent_id: str, name: str, in_flight: int, most: int) -> None:
            assert beat(http, agent_id, load={"in_flight": in_flight, "max": most}).status_code == 200
            lease = agents.lease(name)
            assert lease is not None
            assert lease["metadata"]["annotations"][c.LOAD_ANNOTATION] == f"{in_flight}/{most}"
            want = Load(in_flight=in_flight, max=most)
            wait_for(f"{name}'s load indexed", lambda: load_of(agent_id) == want)

        report(idle, "idle", 0, 10)
        report(busy, "busy", 9, 10)
        versions = {name: (agents.get(name) or {})["metadata"]["resourceVersion"] for name in ("idle", "busy")}
        got = picked(http, 12, type="resource")
        # Both are drawn each time; a pick counts against "idle" until its next report, so
        # it wins at least the first 9 (0/10 .. 8/10 against 9/10).
        assert got["idle"] >= 9, got

        report(idle, "idle", 3, 10)
        report(busy, "busy", 10, 10)
        assert picked(http, 15, type="resource") == {"idle": 15}
        # Load went only to the Lease and the index: no Agent write for any of it.
        assert {name: (agents.get(name) or {})["metadata"]["resourceVersion"] for name in versions} == versions

        # A heartbeat without load takes the report away: no load reported, round robin again.
        beat(http, idle)
        beat(http, busy)
        wait_for("loads gone from the index", lambda: all(load_of(agent_id) is None for agent_id in (idle, busy)))
        assert picked(http, 10, type="resource") == {"idle": 5, "busy": 5}


def test_a_key_sticks_to_its_agent_and_a_version_constraint_limits_candidates(
    operator: OperatorProcess,
    http: httpx.Client,
    redis_server: LocalRedis,
    redis_url: str,
    namespace: str,
) -> None:
    ids = {
        name: register(http, name, type="performance", version=version)
        for name, version in (("old", "1.3.0"), ("current", "1.4.2"), ("next", "2.0.0"), ("rc", "1.5.0-rc.1"))
    }
    wait_for("all indexed", lambda: all(indexed(redis_url, namespace, agent_id) for agent_id in ids.values()))

    assert picked(http, 6, type="performance", version=">=1.4,<2") == {"current": 6}
    assert set(picked(http, 8, type="performance", version="^1")) == {"old", "current"}
    assert set(picked(http, 4, type="performance", version=">=1.5.0rc1")) == {"rc", "next"}
    bad = http.get("/agents/route", params={"type": "performance", "version": "newest"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("version: "), bad.text
    none = http.get("/agents/route", params={"type": "performance", "version": ">=3"})
    assert none.status_code == 404
    assert none.json() == {"error": "no healthy agent of type 'performance' at version >=3"}

    sticky = picked(http, 6, type="performance", key="conversation-7")
    assert len(sticky) == 1
    spread = {name for n in range(30) for name in picked(http, 1, type="performance", key=f"task-{n}")}
    assert len(spread) >= 3
    both = picked(http, 4, type="performance", key="conversation-7", version="^1")
    assert len(both) == 1 and set(both) <= {"old", "current"}

    # Without Redis the facade picks from the API server's answer with the same hash: the
    # key keeps its agent.
    redis_server.stop()
    try:
        assert picked(http, 3, type="performance", key="conversation-7") == {next(iter(sticky)): 3}
        assert picked(http, 3, type="performance", version=">=1.4,<2") == {"current": 3}
    finally:
        redis_server.start()
