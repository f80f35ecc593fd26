"""Degraded modes, never a crash: Redis stopped (reads stay correct from the API server),
the API server stopped (writes 503 with a clear error, reads served from Redis), both
stopped, and everything back again without restarting the facade."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from accounts import Accounts
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import FacadeProcess, OperatorProcess
from agent_registry.localcluster.process import wait_for
from agent_registry.localcluster.redis_server import LocalRedis
from agent_registry.schema import constants as c
from facade_harness import indexed, registration
from operator_harness import Agents

UNKNOWN = "123e4567-e89b-12d3-a456-426614174000"


def indexed_status(redis_url: str, namespace: str, agent_id: str) -> str | None:
    """The agent's REST status as the index holds it."""
    record = indexed(redis_url, namespace, agent_id)
    return None if record is None else record.agent.status


def register(http: httpx.Client, name: str, **fields: Any) -> str:
    response = http.post("/agents/register", json=registration(name, **fields))
    assert response.status_code == 201, response.text
    return str(response.json()["agent_id"])


def names(http: httpx.Client, path: str = "/agents", **params: Any) -> list[str]:
    response = http.get(path, params=params)
    assert response.status_code == 200, response.text
    return [agent["name"] for agent in response.json()["agents"]]


def readiness(http: httpx.Client) -> tuple[int, dict[str, Any]]:
    response = http.get("/ready")
    return response.status_code, response.json()


def fallback_lists(facade: FacadeProcess) -> float:
    for line in facade.metrics().splitlines():
        if line.startswith("agent_registry_facade_fallback_lists_total "):
            return float(line.split()[1])
    return 0.0


async def concurrent_queries(facade: FacadeProcess, count: int) -> list[list[str]]:
    async with httpx.AsyncClient(base_url=facade.url, timeout=30, trust_env=False) as client:
        responses = await asyncio.gather(*(client.get("/agents") for _ in range(count)))
    return [[agent["name"] for agent in response.json()["agents"]] for response in responses]


def ready(http: httpx.Client) -> bool:
    code, body = readiness(http)
    return code == 200 and body["status"] == "ready"


def test_redis_down_reads_stay_correct(
    operator: OperatorProcess,
    facade: FacadeProcess,
    http: httpx.Client,
    agents: Agents,
    redis_server: LocalRedis,
    redis_url: str,
    namespace: str,
) -> None:
    cost = register(http, "cost-a", capabilities=["x"])
    perf = register(http, "perf-b", type="performance", capabilities=["y"])
    http.post(f"/agents/{perf}/heartbeat", json={"status": "degraded"})
    wait_for("both indexed", lambda: indexed_status(redis_url, namespace, cost) == "healthy")
    wait_for("perf-b degraded in the index", lambda: indexed_status(redis_url, namespace, perf) == "degraded")
    wait_for("ready", lambda: ready(http))

    redis_server.stop()
    try:
        assert names(http) == ["cost-a", "perf-b"]
        assert [a["status"] for a in http.get("/agents").json()["agents"]] == ["healthy", "degraded"]
        assert names(http, type="performance") == ["perf-b"]
        assert names(http, status="degraded") == ["perf-b"]
        assert names(http, capability="x") == ["cost-a"]
        assert names(http, "/agents/type/cost") == ["cost-a"]
        assert names(http, "/agents/healthy") == ["cost-a"]
        assert http.get("/agents/route", params={"type": "cost"}).json()["id"] == cost
        assert http.get(f"/agents/{perf}").json()["name"] == "perf-b"
        assert http.get(f"/agents/{UNKNOWN}").status_code == 404

        code, body = readiness(http)
        assert (code, body["status"]) == (200, "degraded")
        assert body["checks"]["kubernetes"]["ok"] is True
        assert body["checks"]["redis"]["ok"] is False
        assert body["checks"]["redis"]["error"]

        # Writes never needed Redis.
        assert http.post(f"/agents/{cost}/heartbeat", json={"status": "healthy"}).status_code == 200
        new = register(http, "new-c")
        assert names(http) == ["cost-a", "new-c", "perf-b"]
        assert http.post(f"/agents/{new}/unregister").status_code == 200
        assert names(http) == ["cost-a", "perf-b"]

        # Concurrent queries share LISTs of the API server instead of one each.
        before = fallback_lists(facade)
        answers = asyncio.run(concurrent_queries(facade, 40))
        assert all(answer == ["cost-a", "perf-b"] for answer in answers), answers
        assert fallback_lists(facade) - before < 40
        facade.check_alive()
    finally:
        redis_server.start()

    # The operator rebuilds the index; the facade uses it again, unrestarted.
    wait_for("ready again", lambda: ready(http), timeout=60)
    wait_for("indexed again", lambda: indexed_status(redis_url, namespace, perf) == "degraded")
    assert names(http) == ["cost-a", "perf-b"]
    assert 'agent_registry_facade_reads_total{source="api"}' in facade.metrics()


def test_api_server_down_writes_503_reads_from_redis(
    operator: OperatorProcess,
    make_facade: Callable[..., FacadeProcess],
    agents: Agents,
    controlplane: LocalControlPlane,
    redis_url: str,
    namespace: str,
) -> None:
    writer, reader = make_facade(), make_facade()  # the reader never wrote: it can only answer from Redis
    with writer.client() as http, reader.client() as reads:
        cost = register(http, "cost-a")
        register(http, "perf-b", type="performance")
        wait_for("indexed", lambda: indexed_status(redis_url, namespace, cost) == "healthy")
        wait_for("ready", lambda: ready(reads))

        controlplane.stop_apiserver()
        try:
            for response in (
                http.post("/agents/register", json=registration("new-c")),
                http.post(f"/agents/{cost}/heartbeat", json={"status": "healthy"}),
                http.post(f"/agents/{cost}/unregister"),
            ):
                assert response.status_code == 503, response.text
                assert "Kubernetes API server is unavailable" in response.json()["error"]
                assert "may still have been applied; retrying it is safe" in response.json()["error"]
                assert response.headers["retry-after"]

            assert names(reads) == ["cost-a", "perf-b"]
            assert names(reads, "/agents/type/performance") == ["perf-b"]
            assert reads.get(f"/agents/{cost}").json()["name"] == "cost-a"
            assert reads.get(f"/agents/{UNKNOWN}").status_code == 404  # the index is a good enough answer
            assert reads.get("/agents/route", params={"type": "cost"}).json()["id"] == cost
            assert reads.get("/health").status_code == 200
            code, body = readiness(reads)
            assert (code, body["status"]) == (200, "degraded")
            assert body["checks"]["kubernetes"]["ok"] is False
            assert body["checks"]["index"]["ok"] is True
            writer.check_alive()
            reader.check_alive()
        finally:
            controlplane.start_apiserver()

        wait_for(
            "writes to work again",
            lambda: http.post(f"/agents/{cost}/heartbeat", json={"status": "healthy"}).status_code == 200,
        )
        register(http, "new-c")
        assert names(http) == ["cost-a", "new-c", "perf-b"]
        wait_for("ready again", lambda: ready(reads), timeout=60)


def agent_id_label(resource: dict[str, Any] | None) -> str | None:
    return None if resource is None else resource["metadata"]["labels"][c.AGENT_ID_LABEL]


def until_not_503(call: Callable[[], httpx.Response], timeout: float = 30) -> httpx.Response:
    """Retry a write as a client told "retrying is safe" would (a loaded machine answers slowly
    just after a stall, past the short timeout these tests give the facade)."""
    deadline = time.monotonic() + timeout
    while (response := call()).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    return response


def register_retrying(http: httpx.Client, name: str) -> str:
    response = until_not_503(lambda: http.post("/agents/register", json=registration(name)))
    assert response.status_code == 201, response.text
    return str(response.json()["agent_id"])


def test_writes_answered_503_in_an_etcd_stall_say_so_and_retry_safely(
    make_facade: Callable[..., FacadeProcess], agents: Agents, controlplane: LocalControlPlane
) -> None:
    """etcd stopped mid-write: the facade gives up (503) while the API server still holds the
    write, which may land when etcd resumes. The answer says so, and every retry is safe."""
    facade = make_facade(kube_timeout_seconds=1.5)
    with facade.client() as http:
        cost = register_retrying(http, "cost-a")
        controlplane.pause("etcd")
        try:
            for response in (
                http.post("/agents/register", json=registration("new-c")),
                http.post(f"/agents/{cost}/heartbeat", json={"status": "degraded"}),
            ):
                assert response.status_code == 503, response.text
                assert "may still have been applied; retrying it is safe" in response.json()["error"]
                assert response.headers["retry-after"]
        finally:
            controlplane.resume("etcd")
        controlplane.wait_ready(timeout=60)

        # Whether or not the stalled registration landed, retrying it leaves one agent of that
        # name, with the id it got first if it did land, and the same id on every retry.
        landed = agent_id_label(agents.get("new-c"))
        new = register_retrying(http, "new-c")
        assert landed in (None, new)
        assert register_retrying(http, "new-c") == new
        assert agent_id_label(agents.get("new-c")) == new
        assert [o["metadata"]["name"] for o in agents.list()] == ["cost-a", "new-c"]
        heartbeat = until_not_503(lambda: http.post(f"/agents/{cost}/heartbeat", json={"status": "degraded"}))
        assert heartbeat.status_code == 200, heartbeat.text
        assert http.get(f"/agents/{cost}").json()["status"] == "degraded"

        controlplane.pause("etcd")
        try:
            stalled = http.post(f"/agents/{new}/unregister")
            assert stalled.status_code == 503, stalled.text
            assert "may still have been applied; retrying it is safe" in stalled.json()["error"]
        finally:
            controlplane.resume("etcd")
        controlplane.wait_ready(timeout=60)
        # Done once, by the stalled call or by this one: 200 if this one deleted it, 404 if it was gone.
        assert until_not_503(lambda: http.post(f"/agents/{new}/unregister")).status_code in (200, 404)
        assert agents.get("new-c") is None
        assert http.get(f"/agents/{new}").status_code == 404
    facade.check_alive()


def test_both_down_then_both_back(
    operator: OperatorProcess,
    facade: FacadeProcess,
    http: httpx.Client,
    controlplane: LocalControlPlane,
    redis_server: LocalRedis,
    redis_url: str,
    namespace: str,
) -> None:
    cost = register(http, "cost-a")
    wait_for("indexed", lambda: indexed_status(redis_url, namespace, cost) == "healthy")

    redis_server.stop()
    controlplane.stop_apiserver()
    try:
        response = http.get("/agents")
        assert response.status_code == 503
        error = response.json()["error"]
        assert "Redis" in error and "Kubernetes API server" in error
        assert "may still have been applied" not in error  # a read changed nothing
        # Nothing can say whether an id exists (the facade's own recent writes aside).
        assert http.get(f"/agents/{UNKNOWN}").status_code == 503
        assert http.post("/agents/register", json=registration("b")).status_code == 503
        code, body = readiness(http)
        assert (code, body["status"]) == (503, "unavailable")
        assert http.get("/health").status_code == 200
        facade.check_alive()
    finally:
        controlplane.start_apiserver()
        redis_server.start()

    wait_for("ready again", lambda: ready(http), timeout=90)
    register(http, "b")
    assert http.post(f"/agents/{cost}/heartbeat", json={"status": "healthy"}).status_code == 200
    assert names(http) == ["b", "cost-a"]


def test_known_callers_keep_reading_while_the_api_server_is_down(
    operator: OperatorProcess,
    make_facade: Callable[..., FacadeProcess],
    controlplane: LocalControlPlane,
    accounts: Accounts,
    redis_url: str,
    namespace: str,
) -> None:
    """With auth on, nothing can check a token while the API server is down; identities and
    decisions seen recently are honoured for that time, unknown tokens get 503."""
    rules = [{"apiGroups": [c.GROUP], "resources": ["agents"], "verbs": ["get", "list", "create", "update"]}]
    accounts.grant(["known", "unseen"], rules, role="agents")
    tokens = {account: accounts.token(account) for account in ("known", "unseen")}
    # No fresh caching at all: only the outage makes the facade fall back on what it saw.
    facade = make_facade(auth=True, auth_cache_seconds=0, auth_stale_seconds=300)
    with facade.client(token=tokens["known"]) as known, facade.client(token=tokens["unseen"]) as unseen:
        agent_id = register(known, "cost-a")
        wait_for("indexed", lambda: indexed_status(redis_url, namespace, agent_id) == "healthy")
        assert names(known) == ["cost-a"]
        assert known.get(f"/agents/{agent_id}").status_code == 200

        controlplane.stop_apiserver()
        try:
            assert names(known) == ["cost-a"]
            response = unseen.get("/agents")
            assert response.status_code == 503
            assert "cannot check the bearer token" in response.json()["error"]
        finally:
            controlplane.start_apiserver()
        wait_for("the unseen token to work", lambda: unseen.get("/agents").status_code == 200)


@pytest.mark.parametrize("kill", [False, True], ids=["stop", "kill"])
def test_redis_restart_empty_is_rebuilt_and_reads_never_fail(
    operator: OperatorProcess,
    http: httpx.Client,
    redis_server: LocalRedis,
    redis_url: str,
    namespace: str,
    kill: bool,
) -> None:
    """A Redis that comes back empty (no persistence) holds no index until the operator
    rebuilds it; meanwhile reads come from the API server and never fail."""
    ids = [register(http, f"agent-{i}") for i in range(3)]
    wait_for("indexed", lambda: all(indexed_status(redis_url, namespace, i) for i in ids))
    if kill:
        redis_server.kill()
    else:
        redis_server.stop()
    try:
        assert names(http) == ["agent-0", "agent-1", "agent-2"]
    finally:
        redis_server.start()
    assert names(http) == ["agent-0", "agent-1", "agent-2"]  # Redis up, index not yet rebuilt
    wait_for("rebuilt", lambda: all(indexed_status(redis_url, namespace, i) for i in ids), timeout=60)
    assert names(http) == ["agent-0", "agent-1", "agent-2"]
