"""A heartbeat that lands between the decision to delete and the delete wins.

The operator runs in-process (kopf's KopfRunner) so the test can use the sweeper's
``BEFORE_DELETE_HOOKS`` seam to write a real heartbeat at exactly that moment.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kopf.testing import KopfRunner
from kubernetes import config

from agent_registry.controller import sweeper
from agent_registry.controller.tracker import TrackedAgent
from agent_registry.localcluster.controlplane import LocalControlPlane
from operator_harness import Agents, wait_for

FAST = {"heartbeat": {"intervalSeconds": 1, "unreachableAfterSeconds": 2, "gcAfterSeconds": 2}}


@pytest.fixture
def agents(controlplane: LocalControlPlane, namespace: str) -> Iterator[Agents]:
    api = config.new_client_from_config(config_file=str(controlplane.kubeconfig))
    yield Agents(api, namespace)
    api.close()


def test_heartbeat_racing_the_delete_keeps_the_agent(
    controlplane: LocalControlPlane, namespace: str, redis_url: str, agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {
        "KUBECONFIG": str(controlplane.kubeconfig),
        "AGENT_REGISTRY_NAMESPACES": namespace,
        "AGENT_REGISTRY_REDIS_URL": redis_url,
        "AGENT_REGISTRY_REDIS_KEY_PREFIX": f"test-{namespace}",
        "AGENT_REGISTRY_METRICS_PORT": "0",
        "AGENT_REGISTRY_LEADER_ELECTION": "false",
        "AGENT_REGISTRY_SWEEP_INTERVAL_SECONDS": "0.5",
    }.items():
        monkeypatch.setenv(key, value)

    raced: list[str] = []

    async def heartbeat_now(agent: TrackedAgent) -> None:
        if not raced:  # only the first attempt races; later ones may delete
            agents.heartbeat(agent.name)
            raced.append(agent.name)

    monkeypatch.setattr(sweeper, "BEFORE_DELETE_HOOKS", [heartbeat_now])
    args = ["run", "--standalone", "--namespace", namespace, "-m", "agent_registry.controller.handlers"]
    with KopfRunner(args, timeout=60) as runner:
        agents.create("racer", **FAST)
        wait_for("Healthy", lambda: agents.phase("racer") == "Healthy")
        wait_for("the delete raced by a heartbeat", lambda: raced, timeout=20)
        wait_for("RemovalCancelled event", lambda: "RemovalCancelled" in agents.reasons("racer"))
        assert agents.get("racer") is not None, "the heartbeat lost the race"
        wait_for("recovered by the racing heartbeat", lambda: agents.phase("racer") == "Healthy")
        # Left silent again, it is collected on a later sweep.
        wait_for("deleted once truly silent", lambda: agents.get("racer") is None, timeout=30)
    assert runner.exception is None, runner.exception
