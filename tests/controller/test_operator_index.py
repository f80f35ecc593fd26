"""The operator keeps the Redis index equal to the Agent objects, through Redis faults."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis

from agent_registry.index import IndexReader, IndexUnavailable, connect
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import OperatorProcess
from agent_registry.localcluster.process import wait_for
from agent_registry.localcluster.redis_server import LocalRedis
from agent_registry.schema.rest import rest_status
from operator_harness import Agents, operator_for_test

KEEP = {"heartbeat": {"intervalSeconds": 1, "unreachableAfterSeconds": 30, "gcAfterSeconds": 600}}


def indexed(redis_url: str, namespace: str) -> set[tuple[str, str, str, str, tuple[str, ...]]] | None:
    async def read() -> Any:
        reader = IndexReader(connect(redis_url), prefix=f"test-{namespace}")
        try:
            return await reader.query(namespace)
        finally:
            await reader.redis.aclose()

    try:
        records = asyncio.run(read())
    except IndexUnavailable:
        return None
    return {(r.name, r.id, r.agent.type, r.agent.status, tuple(r.agent.capabilities)) for r in records}


def truth(agents: Agents) -> set[tuple[str, str, str, str, tuple[str, ...]]]:
    return {
        (
            o["metadata"]["name"],
            o.get("status", {}).get("agentId", ""),
            o["spec"]["type"],
            rest_status(o.get("status", {}).get("phase")),
            tuple(o["spec"]["capabilities"]),
        )
        for o in agents.list()
    }


def index_matches(redis_url: str, agents: Agents) -> bool:
    expected = truth(agents)
    return all(agent_id for _, agent_id, *_ in expected) and indexed(redis_url, agents.namespace) == expected


def test_index_follows_creates_updates_and_deletes(operator: OperatorProcess, agents: Agents, redis_url: str) -> None:
    agents.create("a-1", capabilities=["gpu"], **KEEP)
    agents.create("a-2", type="performance", capabilities=["gpu", "spot"], **KEEP)
    wait_for("index equals the CRs", lambda: index_matches(redis_url, agents))
    agents.api.merge_patch(agents.path("a-1"), {"spec": {"capabilities": ["cpu"]}})
    agents.heartbeat("a-2", status="degraded")
    agents.delete("a-1")
    wait_for("index follows changes", lambda: index_matches(redis_url, agents))
    assert {name for name, *_ in indexed(redis_url, agents.namespace) or set()} == {"a-2"}


def test_index_rebuilt_after_redis_restart_and_flushall(
    operator: OperatorProcess, agents: Agents, redis_url: str, redis_server: LocalRedis
) -> None:
    for i in range(3):
        agents.create(f"r-{i}", capabilities=["spot_migration"], **KEEP)
    wait_for("index built", lambda: index_matches(redis_url, agents))

    redis_server.kill()
    try:
        # Reconciliation goes on without Redis.
        agents.create("born-while-redis-down", **KEEP)
        agents.delete("r-0")
        wait_for("initialised without Redis", lambda: agents.phase("born-while-redis-down") == "Healthy")
        wait_for(
            "Redis errors counted",
            lambda: (operator.metric("agent_registry_redis_sync_errors_total") or 0) > 0,
            timeout=15,
        )
    finally:
        redis_server.start()
    wait_for("index rebuilt after restart", lambda: index_matches(redis_url, agents), timeout=30)

    with redis.Redis.from_url(redis_url) as plain:
        plain.flushall()
    wait_for("index rebuilt after FLUSHALL", lambda: index_matches(redis_url, agents), timeout=30)
    assert (operator.metric("agent_registry_redis_full_resyncs_total") or 0) >= 3


def test_index_entries_expire_when_not_refreshed(
    controlplane: LocalControlPlane, namespace: str, redis_url: str, tmp_path: Path, agents: Agents
) -> None:
    op = operator_for_test(controlplane.kubeconfig, namespace, redis_url, tmp_path, index_ttl_seconds=10).start()
    agents.create("short-lived", **KEEP)
    wait_for("indexed", lambda: index_matches(redis_url, agents))
    op.kill()
    wait_for("expired once nobody refreshes", lambda: indexed(redis_url, namespace) is None, timeout=30)


def test_operator_writes_no_status_for_a_heartbeat_that_changes_nothing(
    operator: OperatorProcess, agents: Agents, controlplane: LocalControlPlane
) -> None:
    agents.create("quiet", **KEEP)
    wait_for("Healthy", lambda: agents.phase("quiet") == "Healthy")
    time.sleep(1)
    agents.heartbeat("quiet")
    after_heartbeat = (agents.get("quiet") or {})["metadata"]["resourceVersion"]
    for _ in range(3):
        time.sleep(1)
        assert (agents.get("quiet") or {})["metadata"]["resourceVersion"] == after_heartbeat
