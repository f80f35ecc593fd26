"""The REST contract kept from the original registry (the README's "The REST API"), route by
route, against the real facade, API server, Redis and operator; plus the extras (filters,
healthy agents, namespaces, OpenAPI, metrics, readiness) and read-your-writes."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx

from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import FacadeProcess, OperatorProcess
from agent_registry.localcluster.process import wait_for
from agent_registry.schema import constants as c
from facade_harness import indexed, registration
from operator_harness import Agents

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
AGENT_FIELDS = {"id", "name", "type", "host", "port", "capabilities", "status", "version", "registered_at", "last_seen"}


REGISTRATION_AND_HEARTBEAT_FIELDS = {
    "agentId",
    "registeredAt",
    "lastHeartbeatTime",
    "heartbeatSequence",
    "reportedStatus",
    "reportedMetadata",
    "heartbeatSource",
}


def facade_status_fields(obj: dict[str, Any]) -> set[str]:
    """Status fields the API server records as written by the facade's field manager."""
    fields: set[str] = set()
    for entry in obj["metadata"].get("managedFields") or []:
        if entry.get("manager") == "agent-registry-facade" and entry.get("subresource") == "status":
            fields |= {key.removeprefix("f:") for key in entry["fieldsV1"].get("f:status", {}) if key != "."}
    return fields


def rfc3339(value: str) -> datetime:
    assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", value), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def register(http: httpx.Client, name: str, **fields: Any) -> dict[str, Any]:
    response = http.post("/agents/register", json=registration(name, **fields))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def phase_is(agents: Agents, name: str, phase: str) -> Callable[[], bool]:
    return lambda: agents.phase(name) == phase


def reads_back(http: httpx.Client, agent_id: str, **expected: Any) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        response = http.get(f"/agents/{agent_id}")
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body if all(body.get(k) == v for k, v in expected.items()) else None

    return probe


# --- POST /agents/register -------------------------------------------------------------------


def test_register_creates_the_agent_and_answers_the_contract(
    operator: OperatorProcess, http: httpx.Client, agents: Agents
) -> None:
    body = register(http, "cost-1", metadata={"region": "eu-west-1"})

    assert set(body) == {"agent_id", "registered_at", "heartbeat_url", "heartbeat_interval_seconds"}
    assert UUID_RE.match(body["agent_id"])
    rfc3339(body["registered_at"])
    assert body["heartbeat_url"] == f"/agents/{body['agent_id']}/heartbeat"
    assert body["heartbeat_interval_seconds"] == 30

    obj = agents.get("cost-1")
    assert obj is not None
    assert obj["metadata"]["labels"][c.AGENT_ID_LABEL] == body["agent_id"]
    assert obj["spec"]["type"] == "cost"
    assert obj["spec"]["host"] == "10.0.0.7"
    assert obj["spec"]["port"] == 8001
    assert obj["spec"]["capabilities"] == ["spot_migration", "rightsizing"]
    assert obj["spec"]["version"] == "1.2.3"
    assert obj["spec"]["metadata"] == {"region": "eu-west-1"}
    assert obj["spec"]["heartbeat"]["intervalSeconds"] == 30
    # Written by the facade at once, so the id and the first heartbeat are there before the operator looks.
    assert obj["status"]["agentId"] == body["agent_id"]
    assert obj["status"]["heartbeatSource"] == "rest"
    assert obj["status"]["reportedStatus"] == "healthy"

    # The operator adopts the id the facade chose and takes over the phase.
    wait_for("the operator's phase", phase_is(agents, "cost-1", "Healthy"))
    obj = agents.get("cost-1")
    assert obj is not None
    assert obj["status"]["agentId"] == body["agent_id"]
    assert obj["metadata"]["labels"][c.AGENT_ID_LABEL] == body["agent_id"]
    stored = rfc3339(obj["status"]["registeredAt"])
    # The operator's own initialisation may race the facade's; both write the same second.
    assert abs(stored - rfc3339(body["registered_at"])) <= timedelta(seconds=1)


def test_registering_the_same_name_updates_it_and_keeps_the_id(
    operator: OperatorProcess, http: httpx.Client, agents: Agents
) -> None:
    first = register(http, "cost-1", metadata={"region": "eu", "zone": "a"})
    second = register(
        http, "cost-1", port=9000, capabilities=["rightsizing"], version="2.0.0", metadata={"region": "us"}
    )

    assert second["agent_id"] == first["agent_id"]
    assert rfc3339(second["registered_at"]) == rfc3339(first["registered_at"])
    assert [o["metadata"]["name"] for o in agents.list()] == ["cost-1"]
    obj = agents.get("cost-1")
    assert obj is not None
    assert obj["spec"]["port"] == 9000
    assert obj["spec"]["capabilities"] == ["rightsizing"]
    assert obj["spec"]["version"] == "2.0.0"
    assert obj["spec"]["metadata"] == {"region": "us"}  # the dropped key is gone, not merged
    view = http.get(f"/agents/{first['agent_id']}").json()
    assert (view["port"], view["version"], view["metadata"]) == (9000, "2.0.0", {"region": "us"})


def test_registering_an_existing_agent_that_has_no_id_yet_gives_it_one(http: httpx.Client, agents: Agents) -> None:
    # Created by kubectl while no operator runs: no label, no status.
    agents.create("cost-1")
    body = register(http, "cost-1")
    obj = agents.get("cost-1")
    assert obj is not None
    assert obj["status"]["agentId"] == body["agent_id"]
    assert obj["metadata"]["labels"][c.AGENT_ID_LABEL] == body["agent_id"]
    assert http.get(f"/agents/{body['agent_id']}").json()["name"] == "cost-1"


def test_registering_a_name_with_another_type_is_a_conflict(http: httpx.Client, agents: Agents) -> None:
    register(http, "agent-1", type="cost")
    response = http.post("/agents/register", json=registration("agent-1", type="performance"))
    assert response.status_code == 409
    assert "type" in response.json()["error"]
    obj = agents.get("agent-1")
    assert obj is not None and obj["spec"]["type"] == "cost"


# --- GET /agents/{id} ----------------------------------------------------------------------------


def test_get_agent_has_every_field(operator: OperatorProcess, http: httpx.Client) -> None:
    plain = register(http, "plain")["agent_id"]
    with_meta = register(http, "with-meta", metadata={"gpu": True, "tier": {"name": "gold"}})["agent_id"]

    view = wait_for("the index", reads_back(http, plain, status="healthy"))
    assert set(view) == AGENT_FIELDS  # metadata omitted when empty
    assert view["id"] == plain
    assert (view["name"], view["type"], view["host"], view["port"]) == ("plain", "cost", "10.0.0.7", 8001)
    assert view["capabilities"] == ["spot_migration", "rightsizing"]
    assert view["version"] == "1.2.3"
    rfc3339(view["registered_at"])
    rfc3339(view["last_seen"])

    view = http.get(f"/agents/{with_meta}").json()
    assert view["metadata"] == {"gpu": True, "tier": {"name": "gold"}}


def test_get_unknown_agent_is_404_agent_not_found(operator: OperatorProcess, http: httpx.Client) -> None:
    response = http.get("/agents/123e4567-e89b-12d3-a456-426614174000")
    assert response.status_code == 404
    assert response.json() == {"error": "Agent not found"}


def test_an_uppercase_id_finds_the_agent(http: httpx.Client) -> None:
    agent_id = register(http, "cost-1")["agent_id"]
    assert http.get(f"/agents/{agent_id.upper()}").json()["id"] == agent_id


# --- POST /agents/{id}/heartbeat -------------------------------------------------------------------


def test_heartbeat_answers_the_contract_and_patches_only_heartbeat_fields(
    operator: OperatorProcess, http: httpx.Client, agents: Agents
) -> None:
    agent_id = register(http, "cost-1")["agent_id"]
    wait_for("Healthy", phase_is(agents, "cost-1", "Healthy"))
    before = agents.get("cost-1")
    assert before is not None

    # A report that differs from what the registry shows is written to the Agent's status.
    response = http.post(f"/agents/{agent_id}/heartbeat", json={"status": "degraded"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"received", "next_interval_seconds", "timestamp"}
    assert body["received"] is True
    assert body["next_interval_seconds"] == 30
    rfc3339(body["timestamp"])
    after = agents.get("cost-1")
    assert after is not None
    assert after["status"]["heartbeatSequence"] > before["status"]["heartbeatSequence"]
    assert rfc3339(after["status"]["lastHeartbeatTime"]) >= rfc3339(before["status"]["lastHeartbeatTime"])
    assert after["status"]["heartbeatSource"] == "rest"
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    # The API server's own record of who wrote what: the facade never wrote the operator's
    # fields (phase, conditions, observedGeneration), only registration and heartbeat fields.
    assert facade_status_fields(after) <= REGISTRATION_AND_HEARTBEAT_FIELDS
    assert {"lastHeartbeatTime", "heartbeatSequence", "reportedStatus"} <= facade_status_fields(after)


def test_a_heartbeat_that_changes_nothing_renews_the_lease_only(
    operator: OperatorProcess, http: httpx.Client, agents: Agents, redis_url: str, namespace: str
) -> None:
    agent_id = register(http, "cost-1")["agent_id"]
    wait_for("Healthy", phase_is(agents, "cost-1", "Healthy"))

    # "Nothing changes" is judged against the index: until it shows the agent Healthy (the
    # operator may lag behind the API server), a healthy report is news and is written.
    def indexed_phase() -> str | None:
        record = indexed(redis_url, namespace, agent_id)
        return record.phase if record is not None else None

    wait_for("Healthy in the index", lambda: indexed_phase() == "Healthy")
    before = agents.get("cost-1")
    assert before is not None
    seen_before = rfc3339(http.get(f"/agents/{agent_id}").json()["last_seen"])

    response = http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy"})

    assert response.status_code == 200, response.text
    assert response.json()["next_interval_seconds"] == 30
    renewed = agents.lease("cost-1")
    assert renewed is not None, "the first heartbeat creates the agent's Lease"
    assert renewed["spec"]["holderIdentity"] == "rest"
    assert renewed["spec"]["leaseDurationSeconds"] == 45
    assert [(r["kind"], r["name"], r["uid"]) for r in renewed["metadata"]["ownerReferences"]] == [
        ("Agent", "cost-1", before["metadata"]["uid"])
    ]
    after = agents.get("cost-1")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], "the Agent was written"
    # Read-your-writes: the renewal moves last_seen at once, and the operator counts it.
    assert rfc3339(http.get(f"/agents/{agent_id}").json()["last_seen"]) > seen_before

    http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy"})
    again = agents.lease("cost-1")
    assert again is not None and again["spec"]["renewTime"] > renewed["spec"]["renewTime"]
    # New metadata is a change: written once to the status, then renewals again.
    http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy", "metadata": {"load": 1}})
    changed = agents.get("cost-1")
    assert changed is not None and changed["status"]["reportedMetadata"] == {"load": 1}
    http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy", "metadata": {"load": 1}})
    wait_for("the index", reads_back(http, agent_id, metadata={"load": 1}))
    http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy", "metadata": {"load": 1}})
    final = agents.get("cost-1")
    assert final is not None and final["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]


def test_heartbeat_status_drives_the_phase(operator: OperatorProcess, http: httpx.Client, agents: Agents) -> None:
    agent_id = register(http, "cost-1")["agent_id"]
    for reported, phase in (("degraded", "Degraded"), ("unhealthy", "Unhealthy"), ("healthy", "Healthy")):
        response = http.post(f"/agents/{agent_id}/heartbeat", json={"status": reported})
        assert response.status_code == 200
        # Read-your-writes: the reported status reads back at once...
        assert http.get(f"/agents/{agent_id}").json()["status"] == reported
        # ...and the operator agrees.
        wait_for(phase, phase_is(agents, "cost-1", phase))
        wait_for(f"{reported} from the index", reads_back(http, agent_id, status=reported))


def test_heartbeat_metadata_is_merged(operator: OperatorProcess, http: httpx.Client) -> None:
    agent_id = register(http, "cost-1", metadata={"region": "eu"})["agent_id"]
    http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy", "metadata": {"load": 0.5}})
    http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy", "metadata": {"queue": 3, "load": 0.7}})
    assert http.get(f"/agents/{agent_id}").json()["metadata"] == {"region": "eu", "load": 0.7, "queue": 3}
    wait_for("the index", reads_back(http, agent_id, metadata={"region": "eu", "load": 0.7, "queue": 3}))


def test_heartbeat_interval_comes_from_the_agent(make_facade: Callable[..., FacadeProcess], agents: Agents) -> None:
    facade = make_facade(heartbeat_interval_seconds=5, unreachable_after_seconds=12)
    with facade.client() as http:
        body = register(http, "cost-1")
        assert body["heartbeat_interval_seconds"] == 5
        beat = http.post(f"/agents/{body['agent_id']}/heartbeat", json={"status": "healthy"}).json()
        assert beat["next_interval_seconds"] == 5
        obj = agents.get("cost-1")
        assert obj is not None
        assert obj["spec"]["heartbeat"] == {"intervalSeconds": 5, "unreachableAfterSeconds": 12, "gcAfterSeconds": 300}


def test_heartbeat_for_an_unknown_id_is_404(operator: OperatorProcess, http: httpx.Client) -> None:
    response = http.post("/agents/123e4567-e89b-12d3-a456-426614174000/heartbeat", json={"status": "healthy"})
    assert response.status_code == 404
    assert response.json() == {"error": "Agent not found"}


# --- POST /agents/{id}/unregister ----------------------------------------------------------------------


def test_unregister_deletes_the_agent(operator: OperatorProcess, http: httpx.Client, agents: Agents) -> None:
    agent_id = register(http, "cost-1")["agent_id"]
    wait_for("indexed", reads_back(http, agent_id))

    response = http.post(f"/agents/{agent_id}/unregister")

    assert response.status_code == 200
    assert response.json() == {"message": "Agent unregistered successfully"}
    assert agents.get("cost-1") is None
    # Read-your-writes: gone at once, although the index may not know yet.
    assert http.get(f"/agents/{agent_id}").status_code == 404
    assert http.get("/agents").json() == {"agents": [], "count": 0}
    again = http.post(f"/agents/{agent_id}/unregister")
    assert again.status_code == 404
    assert again.json() == {"error": "Agent not found"}


# --- GET /agents, /agents/type/{type}, filters, /agents/healthy -----------------------------------------


def test_list_and_by_type(operator: OperatorProcess, http: httpx.Client) -> None:
    ids = {
        "cost-a": register(http, "cost-a")["agent_id"],
        "cost-b": register(http, "cost-b")["agent_id"],
        "perf-a": register(http, "perf-a", type="performance", capabilities=["latency_analysis"])["agent_id"],
    }
    for agent_id in ids.values():
        wait_for("indexed", reads_back(http, agent_id))

    listing = http.get("/agents").json()
    assert set(listing) == {"agents", "count"}
    assert listing["count"] == 3
    assert [a["name"] for a in listing["agents"]] == ["cost-a", "cost-b", "perf-a"]
    assert all(set(a) == AGENT_FIELDS for a in listing["agents"])

    costs = http.get("/agents/type/cost").json()
    assert (costs["count"], [a["name"] for a in costs["agents"]]) == (2, ["cost-a", "cost-b"])
    assert http.get("/agents/type/resource").json() == {"agents": [], "count": 0}
    assert http.get("/agents/type/Not_A_Type").json() == {"agents": [], "count": 0}


def test_filters_and_healthy_agents(operator: OperatorProcess, http: httpx.Client, agents: Agents) -> None:
    register(http, "a", capabilities=["x", "y"])
    register(http, "b", capabilities=["x"])
    degraded = register(http, "c", capabilities=["x", "y"])["agent_id"]
    register(http, "d", type="performance", capabilities=["x", "y"])
    http.post(f"/agents/{degraded}/heartbeat", json={"status": "degraded"})
    wait_for("c Degraded", phase_is(agents, "c", "Degraded"))
    wait_for("c degraded in the index", reads_back(http, degraded, status="degraded"))

    def names(path: str, **params: Any) -> list[str]:
        response = http.get(path, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["count"] == len(body["agents"])
        return [a["name"] for a in body["agents"]]

    assert names("/agents", type="cost") == ["a", "b", "c"]
    assert names("/agents", capability="x") == ["a", "b", "c", "d"]
    assert names("/agents", capability=["x", "y"]) == ["a", "c", "d"]  # all must match
    assert names("/agents", type="cost", capability=["x", "y"], status="healthy") == ["a"]
    assert names("/agents", status="degraded") == ["c"]
    assert names("/agents", capability="nothing") == []
    assert names("/agents/healthy") == ["a", "b", "d"]
    assert names("/agents/healthy", type="cost", capability="y") == ["a"]


# --- GET /health, /ready, /metrics, OpenAPI -------------------------------------------------------------------


def test_health(facade: FacadeProcess, http: httpx.Client) -> None:
    body = http.get("/health").json()
    assert set(body) == {"status", "service", "timestamp"}
    assert body["status"] == "healthy"
    assert body["service"] == "agent-registry"
    rfc3339(body["timestamp"])


def test_ready_when_everything_answers(operator: OperatorProcess, http: httpx.Client) -> None:
    register(http, "cost-1")  # the operator builds the index once it has something to index

    def ready() -> dict[str, Any] | None:
        response = http.get("/ready")
        body: dict[str, Any] = response.json()
        return body if response.status_code == 200 and body["status"] == "ready" else None

    body = wait_for("ready", ready)
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "kubernetes": True,
        "redis": True,
        "index": True,
    }


def test_openapi_and_docs(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    paths = schema["paths"]
    for path, method in [
        ("/agents/register", "post"),
        ("/agents/{agent_id}/heartbeat", "post"),
        ("/agents/{agent_id}/unregister", "post"),
        ("/agents", "get"),
        ("/agents/{agent_id}", "get"),
        ("/agents/type/{agent_type}", "get"),
        ("/health", "get"),
        ("/agents/healthy", "get"),
        ("/agents/route", "get"),
        ("/ready", "get"),
    ]:
        assert method in paths[path], path
        assert "422" not in paths[path][method]["responses"]
    assert "/metrics" not in paths  # on a port of its own by default
    assert "201" in paths["/agents/register"]["post"]["responses"]
    assert "400" in paths["/agents/register"]["post"]["responses"]
    docs = http.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def test_metrics(facade: FacadeProcess, http: httpx.Client) -> None:
    agent_id = register(http, "cost-1")["agent_id"]
    http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy"})
    http.get("/agents/123e4567-e89b-12d3-a456-426614174000")
    # Their own port, not the API's.
    assert facade.metrics_port != facade.port
    assert http.get("/metrics").status_code == 404
    response = httpx.get(facade.metrics_url, timeout=10, trust_env=False)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'route="/agents/{agent_id}/heartbeat",status="200"' in text
    assert 'route="/agents/{agent_id}",status="404"' in text
    assert 'agent_registry_facade_operations_total{operation="register",outcome="created"} 1.0' in text
    # Raw ids never become label values.
    assert agent_id not in text


# --- namespaces -----------------------------------------------------------------------------------


def test_namespace_parameter(
    controlplane: LocalControlPlane, make_facade: Callable[..., FacadeProcess], namespace: str
) -> None:
    other = controlplane.create_namespace(f"{namespace[:50]}-other")
    try:
        facade = make_facade(allowed_namespaces=f"{namespace},{other}")
        with facade.client() as http:
            response = http.post("/agents/register", json=registration("cost-1"), params={"namespace": other})
            assert response.status_code == 201, response.text
            body = response.json()
            agent_id = body["agent_id"]
            assert body["heartbeat_url"] == f"/agents/{agent_id}/heartbeat?namespace={other}"

            assert http.get(f"/agents/{agent_id}").status_code == 404  # not in the default namespace
            assert http.get(f"/agents/{agent_id}", params={"namespace": other}).json()["name"] == "cost-1"
            assert http.post(body["heartbeat_url"], json={"status": "healthy"}).status_code == 200
            assert http.get("/agents").json()["count"] == 0
            assert http.get("/agents", params={"namespace": other}).json()["count"] == 1

            refused = http.get("/agents", params={"namespace": "kube-system"})
            assert refused.status_code == 400
            assert "kube-system" in refused.json()["error"]
            invalid = http.get("/agents", params={"namespace": "Not_A_Namespace"})
            assert invalid.status_code == 400
            assert "namespace" in invalid.json()["error"]
    finally:
        controlplane.delete_namespace(other)


def test_registering_into_a_missing_namespace_is_404(http: httpx.Client) -> None:
    response = http.post("/agents/register", json=registration("cost-1"), params={"namespace": "no-such-namespace"})
    assert response.status_code == 404
    assert "no-such-namespace" in response.json()["error"]


# --- read-your-writes ----------------------------------------------------------------------------------


def test_read_your_writes_while_the_index_lags(
    operator: OperatorProcess,
    make_facade: Callable[..., FacadeProcess],
    agents: Agents,
) -> None:
    """With the operator frozen, the index is intact but stale: every write still reads back at once,
    from the writing replica (its own writes) and from another one (the API server)."""
    writer, other = make_facade(), make_facade()
    with writer.client() as http, other.client() as http2:
        old = register(http, "old-agent", metadata={"v": 1})["agent_id"]
        wait_for("old-agent in the index", reads_back(http2, old))
        wait_for("an intact index", lambda: http.get("/ready").json()["checks"]["index"]["ok"])
        operator.pause()
        try:
            new = register(http, "new-agent", capabilities=["fresh"])["agent_id"]
            assert http.get(f"/agents/{new}").json()["name"] == "new-agent"
            assert http2.get(f"/agents/{new}").json()["name"] == "new-agent"  # the index lacks it: API server
            assert [a["name"] for a in http.get("/agents").json()["agents"]] == ["new-agent", "old-agent"]
            assert [a["name"] for a in http.get("/agents", params={"capability": "fresh"}).json()["agents"]] == [
                "new-agent"
            ]
            # A routine heartbeat of an agent the index lacks keeps it in query answers.
            assert http.post(f"/agents/{new}/heartbeat", json={"status": "healthy"}).status_code == 200
            assert [a["name"] for a in http.get("/agents", params={"capability": "fresh"}).json()["agents"]] == [
                "new-agent"
            ]

            http.post(f"/agents/{old}/heartbeat", json={"status": "degraded", "metadata": {"v": 2}})
            view = http.get(f"/agents/{old}").json()
            assert (view["status"], view["metadata"]) == ("degraded", {"v": 2})
            assert [a["name"] for a in http.get("/agents/healthy").json()["agents"]] == ["new-agent"]

            register(http, "old-agent", capabilities=["changed"], metadata={"v": 3})
            assert http.get(f"/agents/{old}").json()["capabilities"] == ["changed"]

            assert http.post(f"/agents/{old}/unregister").status_code == 200
            assert http.get(f"/agents/{old}").status_code == 404
            assert [a["name"] for a in http.get("/agents").json()["agents"]] == ["new-agent"]
            assert agents.get("old-agent") is None
        finally:
            operator.resume()


def test_an_agent_deleted_by_someone_else_is_not_served_from_memory(http: httpx.Client, agents: Agents) -> None:
    agent_id = register(http, "cost-1")["agent_id"]
    http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy"})
    agents.delete("cost-1")  # kubectl delete, not through the facade
    assert http.get(f"/agents/{agent_id}").status_code == 404
    assert http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy"}).status_code == 404


def test_a_phase_written_after_a_heartbeat_does_not_hide_the_report(http: httpx.Client, agents: Agents) -> None:
    """The operator's write of the phase before a heartbeat can land after it (its first
    initialisation of a new agent does): the object then holds the new report and the old
    phase, and the index does not have it yet. The client still reads the status it wrote."""
    agent_id = register(http, "cost-1")["agent_id"]
    assert http.post(f"/agents/{agent_id}/heartbeat", json={"status": "degraded"}).status_code == 200
    agents.api.merge_patch(agents.path("cost-1", "status"), {"status": {"phase": "Healthy"}})  # the late write
    assert http.get(f"/agents/{agent_id}").json()["status"] == "degraded"
    # A later judgement of the operator's own still shows: silence is the operator's to call.
    agents.api.merge_patch(agents.path("cost-1", "status"), {"status": {"phase": "Unreachable"}})
    assert http.get(f"/agents/{agent_id}").json()["status"] == "unreachable"
    # And the agent's next heartbeat proves it reachable again at once.
    assert http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy"}).status_code == 200
    assert http.get(f"/agents/{agent_id}").json()["status"] == "healthy"
