"""The sidecar and the operator together: the agent's health becomes the Agent's phase,
and a sidecar that dies leaves an agent that goes Unreachable and is cleaned up."""

from __future__ import annotations

from pathlib import Path

from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import HeartbeatTimings, OperatorProcess, SidecarProcess
from agent_registry.localcluster.process import wait_for
from fake_agent import FakeAgent
from operator_harness import Agents
from sidecar_harness import sidecar_for_test


def start_sidecar(controlplane: LocalControlPlane, namespace: str, agent: FakeAgent, log_dir: Path) -> SidecarProcess:
    return sidecar_for_test(
        log_dir,
        agent,
        agent_name="perf-agent",
        agent_type="performance",
        namespace=namespace,
        kubeconfig=controlplane.kubeconfig,
        capabilities=["latency_analysis"],
        timings=HeartbeatTimings(interval_seconds=1, unreachable_after_seconds=4, gc_after_seconds=4),
    ).start()


def test_health_drives_phase_and_a_dead_sidecar_is_collected(
    operator: OperatorProcess, agents: Agents, controlplane: LocalControlPlane, namespace: str, tmp_path: Path
) -> None:
    with FakeAgent(slow_seconds=1.5) as fake:
        sidecar = start_sidecar(controlplane, namespace, fake, tmp_path)
        try:
            wait_for("Healthy", lambda: agents.phase("perf-agent") == "Healthy")
            fake.set_mode("slow")
            wait_for("Degraded", lambda: agents.phase("perf-agent") == "Degraded")
            fake.set_mode("down")
            wait_for("Unhealthy", lambda: agents.phase("perf-agent") == "Unhealthy")
            fake.set_mode("healthy")
            wait_for("Healthy again", lambda: agents.phase("perf-agent") == "Healthy")
            sidecar.kill()  # no deregistration: the registry must notice
            wait_for("Unreachable", lambda: agents.phase("perf-agent") == "Unreachable", timeout=20)
            wait_for("collected", lambda: agents.get("perf-agent") is None, timeout=30)
        finally:
            sidecar.kill()
    reasons = agents.reasons("perf-agent")
    for reason in ("Registered", "Degraded", "Unhealthy", "Healthy", "Unreachable", "Removed"):
        assert reason in reasons, (reason, reasons)
