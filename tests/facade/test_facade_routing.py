"""Routing: one healthy agent of a type with given capabilities per call, spread over every
matching agent, never an unhealthy, degraded or unreachable one."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from agent_registry.localcluster.launcher import FacadeProcess, OperatorProcess
from agent_registry.localcluster.process import wait_for
from facade_harness import FAST_TIMINGS, registration, unchanged_for
from operator_harness import Agents


def register(http: httpx.Client, name: str, **fields: Any) -> str:
    response = http.post("/agents/register", json=registration(name, **fields))
    assert response.status_code == 201, response.text
    return str(response.json()["agent_id"])


def status_of(http: httpx.Client, agent_id: str) -> str:
    return str(http.get(f"/agents/{agent_id}").json()["status"])


def route(http: httpx.Client, **params: Any) -> httpx.Response:
    return http.get("/agents/route", params=params)


@contextmanager
def heartbeating(http: httpx.Client, agent_ids: list[str], every: float = 0.4) -> Iterator[list[int]]:
    """Heartbeats through the REST API from a thread, like live agents; yields the failures."""
    stop = threading.Event()
    failures: list[int] = []

    def run() -> None:
        while not stop.wait(every):
            for agent_id in agent_ids:
                code = http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy"}).status_code
                if code != 200:
                    failures.append(code)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield failures
    finally:
        stop.set()
        thread.join(timeout=10)


def test_picks_spread_evenly_over_matching_healthy_agents(
    operator: OperatorProcess, http: httpx.Client, agents: Agents
) -> None:
    healthy = {name: register(http, name, type="performance", capabilities=["latency", "x"]) for name in "abc"}
    register(http, "no-latency", type="performance", capabilities=["x"])
    register(http, "other-type", type="cost", capabilities=["latency", "x"])
    degraded = register(http, "degraded", type="performance", capabilities=["latency", "x"])
    unhealthy = register(http, "unhealthy", type="performance", capabilities=["latency", "x"])
    http.post(f"/agents/{degraded}/heartbeat", json={"status": "degraded"})
    http.post(f"/agents/{unhealthy}/heartbeat", json={"status": "unhealthy"})
    wait_for("the operator's phases", lambda: agents.phase("degraded") == "Degraded")
    wait_for("the operator's phases", lambda: agents.phase("unhealthy") == "Unhealthy")

    picks = Counter(route(http, type="performance", capability="latency").json()["name"] for _ in range(30))

    # Round robin over a stable set: every matching agent gets exactly its share.
    assert picks == {"a": 10, "b": 10, "c": 10}
    both = Counter(route(http, type="performance", capability=["latency", "x"]).json()["name"] for _ in range(9))
    assert both == {"a": 3, "b": 3, "c": 3}
    # Without a capability filter, every healthy agent of the type takes part.
    anyone = {route(http, type="performance").json()["name"] for _ in range(8)}
    assert anyone == {"a", "b", "c", "no-latency"}
    picked = route(http, type="performance", capability="latency").json()
    assert picked["id"] in healthy.values()
    assert picked["status"] == "healthy"


def test_no_match_is_404_with_a_reason(operator: OperatorProcess, http: httpx.Client) -> None:
    register(http, "a", type="cost", capabilities=["x"])
    response = route(http, type="cost", capability="nothing")
    assert response.status_code == 404
    assert response.json() == {"error": "no healthy agent of type 'cost' with capabilities nothing"}
    response = route(http, type="resource")
    assert response.status_code == 404
    assert response.json() == {"error": "no healthy agent of type 'resource'"}


def test_routing_never_returns_an_unreachable_agent(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess], agents: Agents
) -> None:
    facade = make_facade(timings=FAST_TIMINGS)
    with facade.client() as http, facade.client() as pump_http:
        live = register(http, "live", type="performance", capabilities=["y"])
        silent = register(http, "silent", type="performance", capabilities=["y"])
        with heartbeating(pump_http, [live]) as failures:
            wait_for("silent Unreachable", lambda: agents.phase("silent") == "Unreachable", timeout=20)
            wait_for("unreachable over REST", lambda: status_of(http, silent) == "unreachable")
            assert status_of(http, live) == "healthy"

            picks = {route(http, type="performance", capability="y").json()["name"] for _ in range(20)}
            assert picks == {"live"}
            assert [a["name"] for a in http.get("/agents/healthy").json()["agents"]] == ["live"]
            assert [a["name"] for a in http.get("/agents", params={"status": "unreachable"}).json()["agents"]] == [
                "silent"
            ]

            # It comes back: heartbeats make it Healthy and it takes its share again.
            assert http.post(f"/agents/{silent}/heartbeat", json={"status": "healthy"}).status_code == 200
            with heartbeating(pump_http, [silent]):
                wait_for("silent Healthy", lambda: agents.phase("silent") == "Healthy", timeout=20)
                wait_for(
                    "both picked",
                    lambda: (
                        {route(http, type="performance", capability="y").json()["name"] for _ in range(4)}
                        == {"live", "silent"}
                    ),
                )
        assert failures == []


def test_replicas_share_one_round_robin_through_the_index(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess], agents: Agents
) -> None:
    """Agents this facade never wrote are routed by the index itself: one record read per
    pick, and one turn counter per question for every replica, so two facades asked in
    turn still hand out the agents in turn."""
    for name in "abc":
        agents.create(name, type="performance", capabilities=["latency"])
        agents.heartbeat(name)
    first, second = make_facade(), make_facade()
    with first.client() as one, second.client() as two:
        wait_for(
            "the index to hold three healthy agents",
            lambda: (
                [a["name"] for a in one.get("/agents/healthy", params={"type": "performance"}).json()["agents"]]
                == ["a", "b", "c"]
            ),
        )
        wait_for("the index to settle", lambda: unchanged_for(one, "/agents", 0.5))
        question = {"type": "performance", "capability": "latency"}
        picks = [(one if turn % 2 == 0 else two).get("/agents/route", params=question) for turn in range(12)]
        assert all(pick.status_code == 200 for pick in picks), [pick.text for pick in picks]
        names = [pick.json()["name"] for pick in picks]
        assert Counter(names) == {"a": 4, "b": 4, "c": 4}
        assert all(before != after for before, after in itertools.pairwise(names)), names
        # What the index picked is the agent as GET /agents/{id} shows it.
        picked = picks[-1].json()
        assert one.get(f"/agents/{picked['id']}").json() == picked
