"""The sidecar and the operator together: the agent's health becomes the Agent's phase,
and a sidecar that dies leaves an agent that goes Unreachable and is cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import config

from agent_registry.localcluster.controlplane import LocalControlPlane
from fake_agent import FakeAgent
from operator_harness import Agents, OperatorProcess, wait_for


@pytest.fixture
def agents(controlplane: LocalControlPlane, namespace: str) -> Iterator[Agents]:
    api = config.new_client_from_config(config_file=str(controlplane.kubeconfig))
    yield Agents(api, namespace)
    api.close()


@pytest.fixture
def operator(
    controlplane: LocalControlPlane, namespace: str, redis_url: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(controlplane.kubeconfig, namespace, redis_url, tmp_path).start()
    yield op
    op.stop()


def start_sidecar(
    controlplane: LocalControlPlane, namespace: str, agent: FakeAgent, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(log.parent),
        "KUBECONFIG": str(controlplane.kubeconfig),
        "POD_NAMESPACE": namespace,
        "AGENT_NAME": "perf-agent",
        "AGENT_TYPE": "performance",
        "AGENT_PORT": str(agent.port),
        "AGENT_HOST": "127.0.0.1",
        "AGENT_CAPABILITIES": "latency_analysis",
        "AGENT_HEARTBEAT_INTERVAL_SECONDS": "1",
        "AGENT_UNREACHABLE_AFTER_SECONDS": "4",
        "AGENT_GC_AFTER_SECONDS": "4",
        "AGENT_HEALTH_URL": agent.url,
        "AGENT_PROBE_TIMEOUT_SECONDS": "3",
        "AGENT_PROBE_SLOW_SECONDS": "0.5",
    }
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "agent_sidecar"], env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=log.parent
        )


def test_health_drives_phase_and_a_dead_sidecar_is_collected(
    operator: OperatorProcess, agents: Agents, controlplane: LocalControlPlane, namespace: str, tmp_path: Path
) -> None:
    with FakeAgent(slow_seconds=1.5) as fake:
        sidecar = start_sidecar(controlplane, namespace, fake, tmp_path / "sidecar.log")
        try:
            wait_for("Healthy", lambda: agents.phase("perf-agent") == "Healthy")
            fake.set_mode("slow")
            wait_for("Degraded", lambda: agents.phase("perf-agent") == "Degraded")
            fake.set_mode("down")
            wait_for("Unhealthy", lambda: agents.phase("perf-agent") == "Unhealthy")
            fake.set_mode("healthy")
            wait_for("Healthy again", lambda: agents.phase("perf-agent") == "Healthy")
            sidecar.send_signal(signal.SIGKILL)  # no deregistration: the registry must notice
            sidecar.wait(timeout=10)
            wait_for("Unreachable", lambda: agents.phase("perf-agent") == "Unreachable", timeout=20)
            wait_for("collected", lambda: agents.get("perf-agent") is None, timeout=30)
        finally:
            if sidecar.poll() is None:
                sidecar.kill()
                sidecar.wait(timeout=10)
    reasons = agents.reasons("perf-agent")
    for reason in ("Registered", "Degraded", "Unhealthy", "Healthy", "Unreachable", "Removed"):
        assert reason in reasons, (reason, reasons)
