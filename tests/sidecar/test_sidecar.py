"""The sidecar as a real subprocess, beside a tiny real HTTP agent on loopback, against the
real API server. No operator runs here, so these tests check what the sidecar writes:
the Agent's spec and owner, and the heartbeat fields of its status.

Timing is never asserted beyond "within a generous deadline"; heartbeats come every second.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from accounts import Accounts, user
from agent_registry.kubeapi.sync import SyncApi
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import InClusterAccount, SidecarProcess
from agent_registry.localcluster.process import LOOPBACK, wait_for
from agent_registry.schema import constants as c
from agent_registry.schema.agent import AgentStatus, CapabilityReport, Load, ReportedStatus, capability_health_list
from agent_sidecar import config as sidecar_config
from agent_sidecar.kube import AgentApi, ApiError
from agent_sidecar.payloads import build_adoption_patch, build_heartbeat
from agent_sidecar.probe import ProbeResult, probe
from agent_sidecar.runner import Backoff, Sidecar
from fake_agent import FakeAgent
from operator_harness import Agents
from repo import SIDECAR_ROLE
from sidecar_harness import sidecar_for_test

HEARTBEAT_FIELDS = {"lastHeartbeatTime", "heartbeatSequence", "reportedStatus", "heartbeatSource"}
# What a sidecar's status write holds: the heartbeat fields and the whole capability report.
SIDECAR_STATUS_FIELDS = HEARTBEAT_FIELDS | {"capabilityHealth"}
DEADLINE = 30.0
T = TypeVar("T")


class SidecarAgents(Agents):
    """The namespace's Agents, with the waits on what a sidecar writes."""

    def names(self) -> list[str]:
        return [item["metadata"]["name"] for item in self.list()]

    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        self.api.merge_patch(self.path(name, "status"), {"status": status})

    def status(self, name: str) -> dict[str, Any]:
        agent = self.get(name)
        return (agent or {}).get("status") or {}

    def wait_heartbeats_beyond(self, name: str, sequence: int, timeout: float = DEADLINE) -> dict[str, Any]:
        """Wait for a heartbeat numbered above ``sequence``; the status that has it."""

        def newer() -> dict[str, Any] | None:
            status = self.status(name)
            return status if int(status.get("heartbeatSequence") or 0) > sequence else None

        return wait_for(f"a heartbeat after #{sequence} on {name}", newer, timeout)

    def wait_reported(self, name: str, expected: ReportedStatus) -> None:
        wait_for(f"{name} to report {expected}", lambda: self.status(name).get("reportedStatus") == expected.value)

    def wait_capability_health(self, name: str, expected: list[dict[str, Any]]) -> dict[str, Any]:
        """Wait until ``status.capabilityHealth`` is ``expected``; the Agent that has it."""

        def reported() -> dict[str, Any] | None:
            agent = self.get(name) or {}
            return agent if (agent.get("status") or {}).get("capabilityHealth") == expected else None

        return wait_for(f"{name} to report capabilityHealth {expected}", reported)

    def load_annotation(self, name: str) -> str | None:
        return (((self.lease(name) or {}).get("metadata") or {}).get("annotations") or {}).get(c.LOAD_ANNOTATION)

    def wait_load(self, name: str, expected: str | None) -> None:
        wait_for(
            f"{name}'s Lease to carry load {expected}",
            lambda: self.lease(name) is not None and self.load_annotation(name) == expected,
        )


@pytest.fixture
def agents(api: SyncApi, namespace: str) -> SidecarAgents:
    return SidecarAgents(api, namespace)


@pytest.fixture
def fake_agent() -> Iterator[FakeAgent]:
    with FakeAgent(slow_seconds=1.5) as agent:
        yield agent


RunSidecar = Callable[..., SidecarProcess]


@pytest.fixture
def run_sidecar(
    tmp_path: Path, controlplane: LocalControlPlane, namespace: str, fake_agent: FakeAgent
) -> Iterator[RunSidecar]:
    """Start ``python -m agent_sidecar`` with quick, valid settings; keywords override them by
    field name (None unsets), ``raw_env`` sets variables as a manifest would spell them."""
    started: list[SidecarProcess] = []

    def run(raw_env: dict[str, str | None] | None = None, **overrides: Any) -> SidecarProcess:
        settings: dict[str, Any] = {
            "kubeconfig": controlplane.kubeconfig,
            "namespace": namespace,
            "agent_name": "cost-agent",
            "capabilities": "spot_migration, rightsizing",
            "version": "2.1.0",
            "metadata": {"region": "eu-west-1", "gpu": False},
        }
        process = sidecar_for_test(tmp_path, fake_agent, name=f"sidecar-{len(started)}", **(settings | overrides))
        for variable, value in (raw_env or {}).items():
            if value is None:
                process.env.pop(variable, None)
            else:
                process.env[variable] = value
        started.append(process.start())
        return process

    yield run
    for process in started:
        process.kill()
        # Shown by pytest only when the test fails.
        print(f"--- sidecar log {process.log_path.name} (exit {process.returncode}) ---\n{process.logs()}")


def create_pod(controlplane: LocalControlPlane, namespace: str, name: str) -> str:
    """A bare Pod: no kubelet runs, so it stays Pending, but it is a real owner. Returns its uid."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]},
    }
    controlplane.kubectl("create", "-f", "-", input=json.dumps(pod))
    return controlplane.kubectl("get", "pod", name, "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout


# -- start, heartbeats, owner ------------------------------------------------------------------


def test_registers_with_owner_reference_and_heartbeats(
    run_sidecar: RunSidecar, agents: SidecarAgents, controlplane: LocalControlPlane, namespace: str
) -> None:
    pod_uid = create_pod(controlplane, namespace, "cost-agent-pod")
    sidecar = run_sidecar(pod_name="cost-agent-pod", pod_ip="10.1.2.3", host=None, node_name="node-a")

    agent = wait_for("the Agent", lambda: agents.get("cost-agent"))
    assert agent["spec"] == {
        "type": "cost",
        "host": "10.1.2.3",
        "port": agent["spec"]["port"],
        "capabilities": ["spot_migration", "rightsizing"],
        "version": "2.1.0",
        "metadata": {"region": "eu-west-1", "gpu": False},
        "heartbeat": {"intervalSeconds": 1, "unreachableAfterSeconds": 5, "gcAfterSeconds": 300},
    }
    assert agent["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "cost-agent-pod", "uid": pod_uid}
    ]
    assert agent["metadata"]["labels"][c.AGENT_TYPE_LABEL] == "cost"
    assert agent["metadata"]["annotations"][f"{c.GROUP}/node-name"] == "node-a"

    first = agents.wait_heartbeats_beyond("cost-agent", 0)
    # Only the heartbeat fields: phase and conditions are the operator's.
    assert set(first) == SIDECAR_STATUS_FIELDS
    assert first["capabilityHealth"] == []
    assert first["heartbeatSource"] == "sidecar/cost-agent-pod"
    assert first["reportedStatus"] == "healthy"
    # Then every heartbeat renews the agent's Lease, and the Agent is not written while
    # the health stays the same.
    wait_for("the Lease", lambda: agents.lease("cost-agent"))
    written = agents.get("cost-agent")
    assert written is not None
    agents.wait_beats("cost-agent", 3)
    lease = agents.lease("cost-agent")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "sidecar/cost-agent-pod"
    assert lease["spec"]["leaseDurationSeconds"] == 5
    assert lease["metadata"]["labels"] == {c.AGENT_LEASE_LABEL: "cost-agent"}
    assert [(r["kind"], r["uid"]) for r in lease["metadata"]["ownerReferences"]] == [
        ("Agent", agent["metadata"]["uid"])
    ]
    unchanged = agents.get("cost-agent")
    assert unchanged is not None
    assert unchanged["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
    assert sidecar.running
    # One line per state change, none per heartbeat.
    assert sidecar.messages() == [
        "starting",
        "registered: created the agent",
        "agent health changed",
        "created the agent's Lease",
    ]


def test_without_a_pod_it_registers_without_owner(run_sidecar: RunSidecar, agents: SidecarAgents) -> None:
    sidecar = run_sidecar(pod_name="no-such-pod")
    agents.wait_heartbeats_beyond("cost-agent", 0)
    agent = agents.get("cost-agent")
    assert agent is not None
    assert "ownerReferences" not in agent["metadata"]
    assert "pod not found; the agent will have no ownerReference" in sidecar.messages()


def test_reported_status_follows_the_agents_health(
    run_sidecar: RunSidecar, agents: SidecarAgents, fake_agent: FakeAgent
) -> None:
    sidecar = run_sidecar()
    agents.wait_reported("cost-agent", ReportedStatus.HEALTHY)

    fake_agent.set_mode("slow")
    agents.wait_reported("cost-agent", ReportedStatus.DEGRADED)
    # A change of health is one status write; the heartbeats after it only renew the Lease.
    written = agents.get("cost-agent")
    assert written is not None
    agents.wait_beats("cost-agent", 2)
    unchanged = agents.get("cost-agent")
    assert unchanged is not None
    assert unchanged["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
    fake_agent.set_mode("down")
    agents.wait_reported("cost-agent", ReportedStatus.UNHEALTHY)
    fake_agent.set_mode("error")
    agents.wait_reported("cost-agent", ReportedStatus.DEGRADED)
    fake_agent.set_mode("healthy")
    agents.wait_reported("cost-agent", ReportedStatus.HEALTHY)

    changes = [(e["status"], e["reason"]) for e in sidecar.entries() if e["msg"] == "agent health changed"]
    assert changes[0] == ("healthy", "ok")
    assert ("unhealthy", "no-answer") in changes
    assert ("degraded", "http-500") in changes
    assert changes[-1] == ("healthy", "ok")


# -- the health body: capabilities and load -------------------------------------------------


def test_capability_health_goes_to_the_status_and_load_to_the_lease(
    run_sidecar: RunSidecar, agents: SidecarAgents, fake_agent: FakeAgent
) -> None:
    fake_agent.body = {
        "status": "healthy",
        "capabilities": {
            "rightsizing": {"status": "unhealthy", "reason": "pricing feed down"},
            "spot_migration": {"status": "healthy"},
        },
        "load": {"in_flight": 3, "max": 10},
    }
    sidecar = run_sidecar()

    unhealthy = [{"name": "rightsizing", "status": "unhealthy", "reason": "pricing feed down"}]
    agents.wait_capability_health("cost-agent", unhealthy)
    agents.wait_load("cost-agent", "3/10")
    assert agents.status("cost-agent")["reportedStatus"] == "healthy"  # a capability is not the agent

    # A new load is a renewal carrying it; the Agent is not written while the
    # capability report stays the same.
    written = agents.get("cost-agent")
    assert written is not None
    fake_agent.body = {**fake_agent.body, "load": {"in_flight": 9, "max": 10}}
    agents.wait_load("cost-agent", "9/10")
    agents.wait_beats("cost-agent", 2)
    assert agents.load_annotation("cost-agent") == "9/10"
    unchanged = agents.get("cost-agent")
    assert unchanged is not None
    assert unchanged["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]

    # Recovered, and no load report any more: both cleared.
    fake_agent.body = {"status": "healthy"}
    recovered = agents.wait_capability_health("cost-agent", [])
    assert recovered["status"]["reportedStatus"] == "healthy"
    agents.wait_load("cost-agent", None)

    changes = [e for e in sidecar.entries() if e["msg"] == "capability health changed"]
    assert [e["not_healthy"] for e in changes] == [{"rightsizing": "unhealthy"}, {}]
    assert changes[0]["reasons"] == {"rightsizing": "pricing feed down"}


def test_the_health_bodys_status_can_only_make_the_health_worse(
    run_sidecar: RunSidecar, agents: SidecarAgents, fake_agent: FakeAgent
) -> None:
    fake_agent.body = {"status": "degraded", "capabilities": {"spot_migration": {"status": "degraded"}}}
    sidecar = run_sidecar()
    agents.wait_reported("cost-agent", ReportedStatus.DEGRADED)
    agents.wait_capability_health("cost-agent", [{"name": "spot_migration", "status": "degraded", "reason": ""}])
    fake_agent.body = {"status": "unhealthy"}
    agents.wait_reported("cost-agent", ReportedStatus.UNHEALTHY)
    agents.wait_capability_health("cost-agent", [])
    changes = [(e["status"], e["reason"]) for e in sidecar.entries() if e["msg"] == "agent health changed"]
    assert changes == [("degraded", "reported-degraded"), ("unhealthy", "reported-unhealthy")]


def test_a_bad_health_body_is_logged_once_per_problem_and_heartbeats_go_on(
    run_sidecar: RunSidecar, agents: SidecarAgents, fake_agent: FakeAgent
) -> None:
    fake_agent.body = {
        "status": "healthy",
        "capabilities": {"gpu": {"status": "unhealthy"}, "rightsizing": {"status": "unhealthy"}},
        "load": {"in_flight": 1, "max": 0},
    }
    sidecar = run_sidecar()
    first = agents.wait_heartbeats_beyond("cost-agent", 0)
    agents.wait_beats("cost-agent", 3)

    # As if the body said nothing beyond its 200: healthy, every capability healthy, no load.
    assert first["reportedStatus"] == "healthy"
    assert first["capabilityHealth"] == []
    assert agents.load_annotation("cost-agent") is None
    assert sidecar.running
    ignored = "ignoring the agent's health body: it breaks a rule; heartbeats report only its HTTP status"

    def problems() -> list[tuple[str, str]]:
        return [(e["field"], e["rule"]) for e in sidecar.entries() if e["msg"] == ignored]

    assert problems() == [
        ("load.max", "Input should be greater than or equal to 1"),
        (
            "capabilities.gpu",
            "is not a capability the agent declares (AGENT_CAPABILITIES: spot_migration, rightsizing)",
        ),
    ]

    # A new problem is one more line; the fixed body is used at once.
    fake_agent.body = {"status": "UP"}
    wait_for("the new problem logged", lambda: len(problems()) == 3)
    assert problems()[2] == ("status", "Input should be 'healthy', 'degraded' or 'unhealthy'")
    fake_agent.body = {"load": {"in_flight": 2, "max": 4}}
    agents.wait_load("cost-agent", "2/4")
    agents.wait_beats("cost-agent", 2)
    assert len(problems()) == 3
    assert not [e for e in sidecar.entries() if e["level"] == "error"], sidecar.logs()


def test_the_status_refresh_rewrites_the_capability_report(
    run_sidecar: RunSidecar, agents: SidecarAgents, fake_agent: FakeAgent
) -> None:
    fake_agent.body = {"capabilities": {"rightsizing": {"status": "degraded", "reason": "slow model"}}}
    run_sidecar(status_refresh_seconds=2)
    degraded = [{"name": "rightsizing", "status": "degraded", "reason": "slow model"}]
    agents.wait_capability_health("cost-agent", degraded)

    agents.patch_status("cost-agent", {"capabilityHealth": []})  # lost, say, by a restore

    agents.wait_capability_health("cost-agent", degraded)


# -- adopting ----------------------------------------------------------------------------------


def test_adopts_an_existing_agent(
    run_sidecar: RunSidecar, agents: SidecarAgents, controlplane: LocalControlPlane, namespace: str
) -> None:
    # A real Pod: an owner that does not exist would have the garbage collector delete the Agent.
    old_uid = create_pod(controlplane, namespace, "old-pod")
    old_owner = {"apiVersion": "v1", "kind": "Pod", "name": "old-pod", "uid": old_uid}
    existing = agents.create(
        "cost-agent",
        host="10.9.9.9",
        port=9999,
        metadata={"stale": "yes", "region": "us-east-1"},
        owner_references=[old_owner],
    )
    agents.patch_status("cost-agent", {"heartbeatSequence": 41, "heartbeatSource": "sidecar/old-pod"})

    sidecar = run_sidecar()
    status = agents.wait_heartbeats_beyond("cost-agent", 41)
    agent = agents.get("cost-agent")
    assert agent is not None
    assert agent["metadata"]["uid"] == existing["metadata"]["uid"]  # adopted, not replaced
    assert agent["spec"]["host"] == "127.0.0.1"
    assert agent["spec"]["metadata"] == {"region": "eu-west-1", "gpu": False}  # exactly the configured keys
    assert "ownerReferences" not in agent["metadata"]  # the old pod's deletion must not take it along
    assert status["heartbeatSource"] == "sidecar/" + os.uname().nodename  # no POD_NAME: the hostname
    adopted = next(e for e in sidecar.entries() if e["msg"] == "registered: adopted the existing agent")
    assert adopted["sequence"] == 41
    assert adopted["previous_writer"] == "sidecar/old-pod"


def test_an_agent_of_another_type_is_not_adopted(run_sidecar: RunSidecar, agents: SidecarAgents) -> None:
    agents.create("cost-agent", type="performance", host="10.9.9.9", port=9999)

    sidecar = run_sidecar()
    assert sidecar.wait() == 2
    assert "type is immutable" in sidecar.logs()
    agent = agents.get("cost-agent")
    assert agent is not None
    assert agent["spec"]["type"] == "performance"
    assert "status" not in agent


# -- resilience --------------------------------------------------------------------------------


def test_recovers_when_the_api_server_comes_back(
    run_sidecar: RunSidecar, agents: SidecarAgents, controlplane: LocalControlPlane
) -> None:
    sidecar = run_sidecar()
    agents.wait_heartbeats_beyond("cost-agent", 0)
    agents.wait_beats("cost-agent", 2)

    controlplane.stop_apiserver()
    try:
        time.sleep(20)
        assert sidecar.running
    finally:
        controlplane.start_apiserver()

    agents.wait_beats("cost-agent", 2)
    assert sidecar.running
    messages = sidecar.messages()
    assert "kubernetes API call failing; retrying with backoff" in messages
    assert "kubernetes API calls succeed again" in messages
    # Outage and recovery are a handful of lines, not one per failed attempt.
    assert len(messages) < 10, messages


def test_recreates_the_agent_when_someone_deletes_it(run_sidecar: RunSidecar, agents: SidecarAgents) -> None:
    """Renewals of the Lease left behind succeed (no operator, and the garbage collector may
    not know the CRD yet); the next status write, at the latest the slow refresh, finds the
    Agent gone."""
    sidecar = run_sidecar(status_refresh_seconds=3)
    agents.wait_heartbeats_beyond("cost-agent", 0)
    agents.wait_beats("cost-agent", 1)
    first = agents.get("cost-agent")
    assert first is not None

    agents.delete("cost-agent")

    def recreated() -> dict[str, Any] | None:
        agent = agents.get("cost-agent")
        return agent if agent and agent["metadata"]["uid"] != first["metadata"]["uid"] else None

    wait_for("the Agent to be created again", recreated)
    status = agents.wait_heartbeats_beyond("cost-agent", 0)
    assert status["reportedStatus"] == "healthy"
    assert "the agent was deleted by someone else; creating it again" in sidecar.messages()


# -- shutdown ----------------------------------------------------------------------------------


def test_sigterm_deletes_the_agent_and_exits_zero(run_sidecar: RunSidecar, agents: SidecarAgents) -> None:
    sidecar = run_sidecar()
    agents.wait_heartbeats_beyond("cost-agent", 0)
    agents.wait_beats("cost-agent", 1)

    sidecar.send_signal(signal.SIGTERM)

    assert sidecar.wait() == 0
    assert agents.get("cost-agent") is None
    assert sidecar.messages()[-1] == "deregistered: deleted the agent"


# -- configuration -----------------------------------------------------------------------------


def test_bad_environment_is_one_clear_error_and_registers_nothing(
    run_sidecar: RunSidecar, agents: SidecarAgents
) -> None:
    sidecar = run_sidecar(
        raw_env=dict(
            AGENT_TYPE="Cost",
            AGENT_PORT="eighty",
            AGENT_CAPABILITIES="spot_migration,Not A Token",
            AGENT_METADATA="{not json",
            AGENT_HEARTBEAT_INTERVAL_SECONDS="0",
            AGENT_HEALTH_URL="ftp://example",
            AGENT_HOST=None,
            POD_IP=None,
        )
    )

    assert sidecar.wait() == 2
    errors = [e for e in sidecar.entries() if e["level"] == "error"]
    assert len(errors) == 1, sidecar.logs()
    named = {problem.split("=")[0].split(":")[0] for problem in errors[0]["problems"]}
    assert named == {
        "AGENT_TYPE",
        "AGENT_PORT",
        "AGENT_CAPABILITIES",
        "AGENT_METADATA",
        "AGENT_HEARTBEAT_INTERVAL_SECONDS",
        "AGENT_HEALTH_URL",
        "AGENT_HOST",
    }
    assert "AGENT_PORT='eighty'" in errors[0]["msg"]
    assert agents.names() == []


def test_minimal_role_with_a_service_account(
    run_sidecar: RunSidecar,
    agents: SidecarAgents,
    controlplane: LocalControlPlane,
    accounts: Accounts,
    namespace: str,
    tmp_path: Path,
) -> None:
    """In-cluster credentials bound to nothing but the sidecar Role: the whole life works."""
    controlplane.kubectl("apply", "-n", namespace, "-f", str(SIDECAR_ROLE))
    token = accounts.token("cost-agent")
    accounts.bind("cost-agent", "Role", "agent-sidecar")
    account = InClusterAccount.mount(
        tmp_path / "serviceaccount",
        token=token,
        ca_file=controlplane.ca_file,
        namespace=namespace,
        host=LOOPBACK,
        port=controlplane.apiserver_port,
    )
    pod_uid = create_pod(controlplane, namespace, "cost-agent-pod")

    sidecar = run_sidecar(
        kubeconfig=None,
        namespace=None,  # from the service account, as in a pod
        in_cluster=account,
        pod_name="cost-agent-pod",
        pod_uid=pod_uid,  # so no permission to read pods is needed
    )
    agents.wait_heartbeats_beyond("cost-agent", 0)
    agents.wait_beats("cost-agent", 2)
    agent = agents.get("cost-agent")
    assert agent is not None
    assert agent["metadata"]["ownerReferences"][0]["uid"] == pod_uid
    lease = agents.lease("cost-agent")
    assert lease is not None
    assert lease["metadata"]["annotations"][c.REGISTERED_BY_ANNOTATION] == user(namespace, "cost-agent")

    sidecar.send_signal(signal.SIGTERM)
    assert sidecar.wait() == 0
    assert agents.get("cost-agent") is None
    assert not [e for e in sidecar.entries() if e["level"] in ("warning", "error")], sidecar.logs()


def test_a_role_without_leases_falls_back_to_status_heartbeats(
    run_sidecar: RunSidecar,
    agents: SidecarAgents,
    fake_agent: FakeAgent,
    controlplane: LocalControlPlane,
    accounts: Accounts,
    namespace: str,
    tmp_path: Path,
) -> None:
    """An upgrade that runs this sidecar under an older Role: the agent stays alive by status
    heartbeats, as before Leases, and the log says what to grant."""
    token = accounts.token("cost-agent")
    accounts.grant(
        "cost-agent",
        [
            {"apiGroups": [c.GROUP], "resources": ["agents"], "verbs": ["get", "create", "patch", "delete"]},
            {"apiGroups": [c.GROUP], "resources": ["agents/status"], "verbs": ["patch"]},
        ],
    )
    account = InClusterAccount.mount(
        tmp_path / "serviceaccount",
        token=token,
        ca_file=controlplane.ca_file,
        namespace=namespace,
        host=LOOPBACK,
        port=controlplane.apiserver_port,
    )
    fake_agent.body = {"capabilities": {"rightsizing": {"status": "unhealthy"}}, "load": {"in_flight": 1, "max": 2}}
    sidecar = run_sidecar(kubeconfig=None, namespace=None, in_cluster=account, pod_name=None)
    first = agents.wait_heartbeats_beyond("cost-agent", 0)
    later = agents.wait_heartbeats_beyond("cost-agent", first["heartbeatSequence"] + 2)
    assert agents.lease("cost-agent") is None
    # Every one of those status heartbeats carries the whole report (the load has no place there).
    assert later["capabilityHealth"] == [{"name": "rightsizing", "status": "unhealthy", "reason": ""}]
    refused = [e for e in sidecar.entries() if e["msg"].startswith("the API server refuses the agent's Lease")]
    assert len(refused) == 1, sidecar.logs()


# -- the pieces, without a cluster -------------------------------------------------------------


def test_heartbeat_patch_is_the_heartbeat_fields_only() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    patch = build_heartbeat(now, 7, ReportedStatus.DEGRADED, "sidecar/pod-1")
    assert patch == {
        "status": {
            "lastHeartbeatTime": "2025-01-02T03:04:05Z",
            "heartbeatSequence": 7,
            "reportedStatus": "degraded",
            "heartbeatSource": "sidecar/pod-1",
        }
    }
    assert set(patch["status"]) == HEARTBEAT_FIELDS
    AgentStatus.model_validate(patch["status"])


def test_heartbeat_patch_carries_the_whole_capability_report() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    reports = {
        "b": CapabilityReport(status=ReportedStatus.UNHEALTHY, reason="down"),
        "a": CapabilityReport(status=ReportedStatus.DEGRADED),
        "c": CapabilityReport(status=ReportedStatus.HEALTHY, reason="fine"),
    }
    patch = build_heartbeat(now, 7, ReportedStatus.HEALTHY, "sidecar/pod-1", capability_health_list(reports))
    # Only those not healthy, by name; all healthy again is an empty list, which clears them.
    assert patch["status"]["capabilityHealth"] == [
        {"name": "a", "status": "degraded", "reason": ""},
        {"name": "b", "status": "unhealthy", "reason": "down"},
    ]
    cleared = build_heartbeat(now, 8, ReportedStatus.HEALTHY, "sidecar/pod-1", capability_health_list({}))
    assert cleared["status"]["capabilityHealth"] == []
    assert set(cleared["status"]) == SIDECAR_STATUS_FIELDS


OfflineConfig = Callable[..., sidecar_config.SidecarConfig]


@pytest.fixture
def offline_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> OfflineConfig:
    """``load_config`` over a valid environment plus the given variables; no cluster needed."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")

    def load(**env: str) -> sidecar_config.SidecarConfig:
        base = {
            "KUBECONFIG": str(kubeconfig),
            "POD_NAMESPACE": "team-a",
            "AGENT_NAME": "cost-agent",
            "AGENT_TYPE": "cost",
            "AGENT_PORT": "8001",
            "AGENT_HOST": "10.0.0.5",
        }
        for name, value in {**base, **env}.items():
            monkeypatch.setenv(name, value)
        return sidecar_config.load_config()

    return load


def test_adoption_patch_replaces_pod_owners_and_removes_dropped_metadata(offline_config: OfflineConfig) -> None:
    loaded = offline_config(AGENT_METADATA='{"region": "eu"}')
    other_owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1"}
    existing = {
        "metadata": {
            "resourceVersion": "12",
            "ownerReferences": [other_owner, {"apiVersion": "v1", "kind": "Pod", "name": "old", "uid": "u2"}],
        },
        "spec": {"type": "cost", "metadata": {"region": "us", "stale": 1}},
    }
    new_owner = {"apiVersion": "v1", "kind": "Pod", "name": "new", "uid": "u3"}

    patch = build_adoption_patch(existing, loaded, new_owner)

    assert patch["metadata"]["resourceVersion"] == "12"
    assert patch["metadata"]["ownerReferences"] == [other_owner, new_owner]
    assert patch["spec"]["metadata"] == {"region": "eu", "stale": None}
    assert patch["spec"]["heartbeat"]["intervalSeconds"] == c.DEFAULT_HEARTBEAT_INTERVAL_SECONDS


def test_cross_field_rules_name_both_variables(offline_config: OfflineConfig) -> None:
    with pytest.raises(sidecar_config.ConfigError) as raised:
        offline_config(AGENT_HEARTBEAT_INTERVAL_SECONDS="60", AGENT_PROBE_SLOW_SECONDS="5")
    problems = raised.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("AGENT_UNREACHABLE_AFTER_SECONDS (unset, so 45):")
    assert problems[1].startswith("AGENT_PROBE_SLOW_SECONDS=5: must be less than AGENT_PROBE_TIMEOUT_SECONDS")


class ScriptedApi(AgentApi):
    """Answers from a script, to drive the races a real API server rarely produces on cue."""

    def __init__(self, agents: list[dict[str, Any] | None], failures: dict[str, list[ApiError]]) -> None:
        self.server = "scripted"
        self.namespace = "team-a"
        self._agents = agents
        self._failures = failures
        self.calls: list[tuple[str, Any]] = []

    def _fail(self, call: str) -> None:
        if self._failures.get(call):
            raise self._failures[call].pop(0)

    def whoami(self) -> str:
        return "system:serviceaccount:team-a:cost-agent"

    def get_agent(self, name: str, timeout: float | None = None) -> dict[str, Any] | None:
        self.calls.append(("get", None))
        return self._agents.pop(0)

    def create_agent(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", None))
        self._fail("create")
        return {**body, "metadata": {**body["metadata"], "uid": "new-uid"}}

    def patch_agent(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", patch["metadata"]["resourceVersion"]))
        self._fail("patch")
        return {"metadata": {"uid": "old-uid"}}


def existing_agent(resource_version: str, sequence: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": "cost-agent", "uid": "old-uid", "resourceVersion": resource_version},
        "spec": {"type": "cost", "host": "10.0.0.9", "port": 8001},
        "status": {"heartbeatSequence": sequence},
    }


def test_a_conflict_while_adopting_reads_again(offline_config: OfflineConfig) -> None:
    conflict = ApiError(409, "Conflict", "the object has been modified")
    api = ScriptedApi([existing_agent("1"), existing_agent("2", sequence=7)], {"patch": [conflict]})
    sidecar = Sidecar(offline_config(), api, threading.Event())

    sidecar.register()

    assert api.calls == [("get", None), ("patch", "1"), ("get", None), ("patch", "2")]
    assert sidecar.sequence == 7


def test_a_create_that_loses_a_race_adopts_the_winner(offline_config: OfflineConfig) -> None:
    exists = ApiError(409, "AlreadyExists", 'agents "cost-agent" already exists')
    api = ScriptedApi([None, existing_agent("5")], {"create": [exists]})
    sidecar = Sidecar(offline_config(), api, threading.Event())

    sidecar.register()

    assert api.calls == [("get", None), ("create", None), ("get", None), ("patch", "5")]


def test_probe_classifies_answers(fake_agent: FakeAgent) -> None:
    fake_agent.slow_seconds = 0.3
    assert probe(fake_agent.url, timeout=1.0, slow_after=0.2).status == ReportedStatus.HEALTHY
    fake_agent.set_mode("slow")
    slow = probe(fake_agent.url, timeout=1.0, slow_after=0.2)
    assert (slow.status, slow.reason) == (ReportedStatus.DEGRADED, "slow")
    fake_agent.set_mode("error")
    error = probe(fake_agent.url, timeout=1.0, slow_after=0.2)
    assert (error.status, error.reason) == (ReportedStatus.DEGRADED, "http-500")
    fake_agent.set_mode("down")
    down = probe(fake_agent.url, timeout=1.0, slow_after=0.2)
    assert (down.status, down.reason) == (ReportedStatus.UNHEALTHY, "no-answer")
    fake_agent.slow_seconds = 2.0
    fake_agent.set_mode("slow")
    hanging = probe(fake_agent.url, timeout=0.5, slow_after=0.2)
    assert (hanging.status, hanging.reason) == (ReportedStatus.UNHEALTHY, "no-answer")


def test_probe_reads_the_health_body(fake_agent: FakeAgent) -> None:
    declared = ["spot_migration", "rightsizing"]

    def check(body: Any) -> ProbeResult:
        fake_agent.body = body
        return probe(fake_agent.url, timeout=1.0, slow_after=0.5, capabilities=declared)

    full = check(
        {
            "status": "healthy",
            "capabilities": {"rightsizing": {"status": "degraded", "reason": "r"}},
            "load": {"in_flight": 3, "max": 10},
            "uptime_seconds": 12,  # keys of the agent's own are no mistake
        }
    )
    assert (full.status, full.reason, full.problems) == (ReportedStatus.HEALTHY, "ok", ())
    assert full.capabilities == {"rightsizing": CapabilityReport(status=ReportedStatus.DEGRADED, reason="r")}
    assert full.load == Load(in_flight=3, max=10)

    worse = check({"status": "unhealthy"})
    assert (worse.status, worse.reason) == (ReportedStatus.UNHEALTHY, "reported-unhealthy")

    # Bodies that say nothing: healthy, no report, nothing to complain about.
    for plain in (b"", b"OK", None, {}):
        fake_agent.content_type = "text/plain" if plain == b"OK" else "application/json"
        said_nothing = check(plain if plain is not None else b"null")
        assert (said_nothing.status, said_nothing.capabilities, said_nothing.load, said_nothing.problems) == (
            ReportedStatus.HEALTHY,
            {},
            None,
            (),
        ), plain
    fake_agent.content_type = "application/json"

    # Bodies that break the shape: ignored as a whole, and why.
    bad = {
        b"not json": [("body", "must be valid JSON")],
        b'["healthy"]': [("body", "must be a JSON object")],
        json.dumps({"load": {"in_flight": "3", "max": 10}, "status": "healthy"}).encode(): [
            ("load.in_flight", "Input should be a valid integer")
        ],
        json.dumps({"load": [1, 2]}).encode(): [("load", "must be a JSON object")],
        json.dumps({"capabilities": {"rightsizing": "degraded"}}).encode(): [
            ("capabilities.rightsizing", "must be a JSON object")
        ],
        json.dumps({"capabilities": {"rightsizing": {"status": "degraded", "reason": "x" * 257}}}).encode(): [
            ("capabilities.rightsizing.reason", "String should have at most 256 characters")
        ],
    }
    for body, problems in bad.items():
        ignored = check(body)
        assert (ignored.status, ignored.capabilities, ignored.load) == (ReportedStatus.HEALTHY, {}, None), body
        assert [(p.field, p.rule) for p in ignored.problems] == problems, body

    # Non-2xx bodies are not reports; a slow 2xx keeps its report and stays degraded.
    fake_agent.body = {"status": "healthy", "load": {"in_flight": 1, "max": 2}}
    fake_agent.set_mode("error")
    error = probe(fake_agent.url, timeout=1.0, slow_after=0.5, capabilities=declared)
    assert (error.status, error.load, error.problems) == (ReportedStatus.DEGRADED, None, ())
    fake_agent.slow_seconds = 0.6
    fake_agent.set_mode("slow")
    slow = probe(fake_agent.url, timeout=2.0, slow_after=0.5, capabilities=declared)
    assert (slow.status, slow.reason, slow.load) == (ReportedStatus.DEGRADED, "slow", Load(in_flight=1, max=2))


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    backoff = Backoff(first=0.5, cap=4.0)
    waits = [backoff.next() for _ in range(8)]
    assert 0.25 <= waits[0] <= 0.5
    assert all(2.0 <= wait <= 4.0 for wait in waits[4:])
    backoff.reset()
    assert backoff.next() <= 0.5
