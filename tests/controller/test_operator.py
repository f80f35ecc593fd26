"""The operator, running for real against the real API server and Redis, with short intervals."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from datetime import timedelta
from typing import Any

import pytest

from agent_registry import kubeapi
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import OperatorProcess
from agent_registry.localcluster.process import wait_for
from agent_registry.schema import constants as c
from operator_harness import Agents, HeartbeatPump
from repo import CRD_DIR

# 1 s heartbeats, Unreachable after 3 s of silence, deleted 4 s after that.
FAST = {"heartbeat": {"intervalSeconds": 1, "unreachableAfterSeconds": 3, "gcAfterSeconds": 4}}
# Same silence threshold, but kept long enough that nothing is deleted during a test.
KEEP = {"heartbeat": {"intervalSeconds": 1, "unreachableAfterSeconds": 3, "gcAfterSeconds": 600}}
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _initialised(agents: Agents, name: str) -> dict[str, Any] | None:
    obj = agents.get(name)
    return obj if obj and obj.get("status", {}).get("agentId") else None


def test_create_initialises_status_label_and_event(
    operator: OperatorProcess, agents: Agents, controlplane: LocalControlPlane, namespace: str
) -> None:
    agents.create("cost-1", capabilities=["spot_migration"])
    obj = wait_for(
        "status initialised", lambda: (o := agents.get("cost-1")) and o.get("status", {}).get("agentId") and o
    )
    status = obj["status"]
    assert UUID_RE.match(status["agentId"])
    assert obj["metadata"]["labels"][c.AGENT_ID_LABEL] == status["agentId"]
    assert obj["metadata"]["labels"][c.AGENT_TYPE_LABEL] == "cost"
    assert status["phase"] == "Healthy"
    assert status["registeredAt"]
    assert {cond["type"]: cond["status"] for cond in status["conditions"]} == {"Ready": "True", "Reachable": "True"}
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    wait_for("Registered event", lambda: "Registered" in agents.reasons("cost-1"))
    table = controlplane.kubectl("get", "agents", "-n", namespace).stdout
    assert re.search(r"cost-1\s+cost\s+Healthy", table), table
    # Neither finalizers nor kopf annotations on the object.
    assert not obj["metadata"].get("finalizers")
    assert not any("kopf" in key for key in obj["metadata"].get("annotations", {}))


def test_heartbeats_phases_unreachable_recovery_and_gc(operator: OperatorProcess, agents: Agents) -> None:
    agents.create("perf-1", type="performance", **FAST)
    wait_for("Healthy", lambda: agents.phase("perf-1") == "Healthy")

    with HeartbeatPump(agents, ["perf-1"]):
        time.sleep(5)  # longer than unreachable-after: heartbeats keep it alive
        assert agents.phase("perf-1") == "Healthy"
    with HeartbeatPump(agents, ["perf-1"], status="degraded"):
        wait_for("Degraded", lambda: agents.phase("perf-1") == "Degraded")
    with HeartbeatPump(agents, ["perf-1"], status="unhealthy"):
        wait_for("Unhealthy", lambda: agents.phase("perf-1") == "Unhealthy")

    silent_from = time.monotonic()
    wait_for("Unreachable", lambda: agents.phase("perf-1") == "Unreachable", timeout=15)
    # Within unreachable-after (3 s) plus one sweep (0.5 s), with slack for a loaded machine.
    assert time.monotonic() - silent_from < 3 + 0.5 + 5
    obj = agents.get("perf-1")
    assert obj is not None
    conditions = {cond["type"]: cond for cond in obj["status"]["conditions"]}
    assert conditions["Reachable"]["status"] == "False" and conditions["Ready"]["status"] == "False"
    wait_for("Unreachable event", lambda: "Unreachable" in agents.reasons("perf-1"))

    agents.heartbeat("perf-1")
    wait_for("recovered", lambda: agents.phase("perf-1") == "Healthy")
    wait_for("Recovered event", lambda: "Recovered" in agents.reasons("perf-1"))

    wait_for("deleted after gc-after", lambda: agents.get("perf-1") is None, timeout=30)
    assert "Removed" in agents.reasons("perf-1")
    assert operator.metric("agent_registry_gc_deletions_total") is not None


@pytest.mark.parametrize("skew_minutes", [10, -10])
def test_clock_skew_changes_nothing(operator: OperatorProcess, agents: Agents, skew_minutes: int) -> None:
    agents.create("skewed", **FAST)
    wait_for("Healthy", lambda: agents.phase("skewed") == "Healthy")
    with HeartbeatPump(agents, ["skewed"], skew=timedelta(minutes=skew_minutes)):
        time.sleep(5)
        assert agents.phase("skewed") == "Healthy", "a live agent with a skewed clock must stay Healthy"
    wait_for("Unreachable once silent", lambda: agents.phase("skewed") == "Unreachable", timeout=15)


def test_restart_gives_everyone_a_fresh_grace_period(make_operator: Any, agents: Agents) -> None:
    op = make_operator().start()
    agents.create("steady", **FAST)
    wait_for("Healthy", lambda: agents.phase("steady") == "Healthy")
    agents.heartbeat("steady")
    op.stop()
    time.sleep(5)  # the agent's timestamps age past unreachable-after while the operator is down
    restarted = time.monotonic()
    op2 = make_operator(identity="op-b").start()
    # Not Unreachable before a full unreachable-after has passed since the restart.
    while time.monotonic() - restarted < 2.5:
        assert agents.phase("steady") == "Healthy"
        time.sleep(0.2)
    wait_for("Unreachable after a full grace period", lambda: agents.phase("steady") == "Unreachable", timeout=15)
    assert time.monotonic() - restarted >= 3
    op2.stop()


def test_delete_completes_while_operator_is_down(make_operator: Any, agents: Agents) -> None:
    op = make_operator().start()
    agents.create("doomed")
    wait_for("Healthy", lambda: agents.phase("doomed") == "Healthy")
    op.kill()
    agents.delete("doomed")
    wait_for("deleted without the operator", lambda: agents.get("doomed") is None, timeout=10)


def test_self_preservation_pauses_gc_and_resumes(operator: OperatorProcess, agents: Agents) -> None:
    names = [f"fleet-{i}" for i in range(5)]
    for name in names:
        agents.create(name, **FAST)
    wait_for("all Healthy", lambda: all(agents.phase(n) == "Healthy" for n in names))
    survivor = names[0]
    with HeartbeatPump(agents, [survivor]):
        # 4 of 5 go silent at once: more than 50%, at least 3.
        wait_for("mass Unreachable", lambda: all(agents.phase(n) == "Unreachable" for n in names[1:]), timeout=15)
        wait_for("self-preservation Event", lambda: "SelfPreservationActivated" in agents.reasons(), timeout=10)
        assert operator.metric("agent_registry_self_preservation_active") == 1
        time.sleep(6)  # past gc-after: nobody is deleted while paused
        assert all(agents.get(n) is not None for n in names)
        pump_all = HeartbeatPump(agents, names[1:])
        with pump_all:
            wait_for("recovery", lambda: all(agents.phase(n) == "Healthy" for n in names), timeout=15)
            wait_for("resume Event", lambda: "SelfPreservationDeactivated" in agents.reasons(), timeout=10)
            assert operator.metric("agent_registry_self_preservation_active") == 0


def test_self_preservation_is_time_boxed(make_operator: Any, agents: Agents) -> None:
    make_operator(self_preservation_max_pause_seconds=3).start()
    names = [f"boxed-{i}" for i in range(4)]
    for name in names:
        agents.create(name, **FAST)
    wait_for("all Healthy", lambda: all(agents.phase(n) == "Healthy" for n in names))
    wait_for("self-preservation Event", lambda: "SelfPreservationActivated" in agents.reasons(), timeout=15)
    wait_for("expiry Event", lambda: "SelfPreservationExpired" in agents.reasons(), timeout=15)
    wait_for("GC resumed", lambda: not agents.list(), timeout=20)


def test_malformed_status_does_not_stop_others(operator: OperatorProcess, agents: Agents) -> None:
    agents.create("good", **KEEP)
    agents.create("odd", **KEEP)
    wait_for("both Healthy", lambda: agents.phase("good") == "Healthy" and agents.phase("odd") == "Healthy")
    # A writer sending a status the API server rejects: it names the field, nothing changes.
    with pytest.raises(kubeapi.Invalid) as excinfo:
        agents.api.merge_patch(agents.path("odd", "status"), {"status": {"phase": "Zombie"}})
    assert "status.phase" in excinfo.value.message
    # A writer that sets a phase by hand without heartbeats: the operator keeps its own judgement.
    agents.api.merge_patch(agents.path("odd", "status"), {"status": {"reportedStatus": "degraded"}})
    wait_for("odd Degraded", lambda: agents.phase("odd") == "Degraded")
    with HeartbeatPump(agents, ["good"]):
        time.sleep(4)
        assert agents.phase("good") == "Healthy"
    assert operator.running


def test_only_the_leader_acts_and_the_standby_takes_over(make_operator: Any, agents: Agents) -> None:
    first = make_operator(identity="replica-1").start()
    wait_for("a leader", lambda: first.metric("agent_registry_leader") == 1)
    second = make_operator(identity="replica-2").start()
    time.sleep(2)
    assert second.metric("agent_registry_leader") == 0
    agents.create("led", **KEEP)
    wait_for("initialised by the leader", lambda: agents.phase("led") == "Healthy")
    first.kill()  # no lease release: the standby must wait for expiry, then act
    wait_for("standby takes over", lambda: second.metric("agent_registry_leader") == 1, timeout=20)
    agents.create("after-failover", **KEEP)
    wait_for("initialised by the new leader", lambda: agents.phase("after-failover") == "Healthy")


def test_liveness_probe_reports_leadership_and_agents(operator: OperatorProcess, agents: Agents) -> None:
    agents.create("probed", **KEEP)
    wait_for("Healthy", lambda: agents.phase("probed") == "Healthy")

    def probe() -> dict[str, Any] | None:
        url = f"http://127.0.0.1:{operator.liveness_port}/healthz"
        with urllib.request.urlopen(url, timeout=2) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data if data.get("agents") == 1 else None

    data = wait_for("probe with one agent", probe)
    assert data["leader"] is True


def test_malformed_agent_gets_an_event_and_others_carry_on(
    operator: OperatorProcess, agents: Agents, controlplane: LocalControlPlane
) -> None:
    """An object the current schema would reject (written under an older, looser CRD)."""
    crd = json.loads(controlplane.kubectl("get", "crd", c.CRD_NAME, "-o", "json").stdout)
    loose = json.loads(json.dumps(crd))
    for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
        loose["metadata"].pop(key, None)
    loose.pop("status", None)
    version = loose["spec"]["versions"][0]
    version["schema"]["openAPIV3Schema"]["properties"]["spec"] = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    version.pop("additionalPrinterColumns", None)
    try:
        controlplane.kubectl("replace", "-f", "-", input=json.dumps(loose))
        wait_for(
            "the loose schema served",
            lambda: _try_create(agents, "broken", {"type": "cost", "host": "h", "port": "eighty"}),
            timeout=20,
        )
    finally:
        controlplane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    agents.create("fine", **KEEP)
    wait_for("InvalidSpec event", lambda: "InvalidSpec" in agents.reasons("broken"))
    wait_for("the valid agent is served", lambda: agents.phase("fine") == "Healthy")
    assert operator.running
    assert "invalid spec" in operator.logs()
    agents.delete("broken")


def _try_create(agents: Agents, name: str, spec: dict[str, Any]) -> bool:
    try:
        agents.api.create(
            agents.path(), {"apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": name}, "spec": spec}
        )
    except kubeapi.StatusError:
        return False
    return True


# Blindness: while the operator cannot see the API server, silence is no evidence.
# 1 s heartbeats, Unreachable after 4 s; the operator probes its sight every 0.5 s and
# counts 1.5 s without an answer as blind.
STALL_TIMING = {"heartbeat": {"intervalSeconds": 1, "unreachableAfterSeconds": 4, "gcAfterSeconds": 600}}
SIGHT = {"sight_probe_interval_seconds": 0.5, "sight_gap_seconds": 1.5, "kube_timeout_seconds": 2}


def _reachable_since(agents: Agents, name: str) -> str | None:
    obj = agents.get(name) or {}
    for condition in obj.get("status", {}).get("conditions", []):
        if condition["type"] == "Reachable":
            return str(condition["lastTransitionTime"])
    return None


def _stall(controlplane: LocalControlPlane, fault: str) -> None:
    if fault == "pause kube-apiserver":
        controlplane.pause("kube-apiserver")
    elif fault == "pause etcd":
        controlplane.pause("etcd")
    elif fault == "restart etcd":
        controlplane.stop_etcd()
    else:
        controlplane.stop_apiserver()


def _end_stall(controlplane: LocalControlPlane, fault: str) -> None:
    if fault == "pause kube-apiserver":
        controlplane.resume("kube-apiserver")
    elif fault == "pause etcd":
        controlplane.resume("etcd")
    elif fault == "restart etcd":
        controlplane.start_etcd()
    else:
        controlplane.start_apiserver()
    controlplane.wait_ready(timeout=60)


@pytest.mark.parametrize("fault", ["pause kube-apiserver", "pause etcd", "restart kube-apiserver", "restart etcd"])
def test_an_outage_the_operator_cannot_see_through_flips_no_live_agent(
    controlplane: LocalControlPlane, make_operator: Any, agents: Agents, fault: str
) -> None:
    operator = make_operator(**SIGHT).start()
    live = [f"live-{i}" for i in range(4)]
    for name in [*live, "dies"]:
        agents.create(name, **STALL_TIMING)
    with HeartbeatPump(agents, live, interval=1.0, timeout=1.0):
        with HeartbeatPump(agents, ["dies"], interval=1.0, timeout=1.0):
            wait_for("all Healthy", lambda: all(agents.phase(n) == "Healthy" for n in [*live, "dies"]))
            time.sleep(2)
            before = {name: _reachable_since(agents, name) for name in live}
        # "dies" stops heartbeating for good just as the outage begins; the others keep trying.
        _stall(controlplane, fault)
        try:
            wait_for("the operator to know it is blind", lambda: operator.metric("agent_registry_blind") == 1)
            time.sleep(12)  # three times unreachable-after
        finally:
            _end_stall(controlplane, fault)
        # Timed from when the operator sees again: a restarted etcd is reached by the API
        # server only after its own reconnection backoff (seconds, varying), which is not
        # the operator's to shorten.
        wait_for("the operator to see again", lambda: operator.metric("agent_registry_blind") == 0, timeout=30)
        resumed = time.monotonic()
        wait_for("the dead agent found Unreachable", lambda: agents.phase("dies") == "Unreachable", timeout=20)
        found_after = time.monotonic() - resumed
        time.sleep(6)  # past a full unreachable-after since the resume: any false flip has happened
        for name in live:
            assert agents.phase(name) == "Healthy", f"{name} flipped although its writer kept trying"
            assert _reachable_since(agents, name) == before[name], f"{name}'s Reachable condition changed"
            assert set(agents.reasons(name)) <= {"Registered"}, f"{name} got Events: {agents.reasons(name)}"
    # Within unreachable-after (4 s) + one sweep (0.5 s) of the operator seeing again, plus
    # its watches delivering again (each one that does gives a fresh grace period).
    assert found_after <= 4 + 0.5 + 3, (
        f"the dead agent took {found_after:.1f}s after the resume:\n{operator.logs()[-6000:]}"
    )
    assert (operator.metric("agent_registry_blind_gaps_total") or 0) >= 1
    assert "fresh grace period" in operator.logs()


def test_leaving_self_preservation_deletes_no_agent_that_comes_back(operator: OperatorProcess, agents: Agents) -> None:
    names = [f"fleet-{i}" for i in range(6)]
    for name in names:
        agents.create(name, **FAST)  # Unreachable after 3 s, deleted 4 s after that
    with HeartbeatPump(agents, names):
        wait_for("all Healthy", lambda: all(agents.phase(n) == "Healthy" for n in names))
    # All six fall silent together: the pause holds their deletion well past gc-after.
    wait_for("self-preservation", lambda: "SelfPreservationActivated" in agents.reasons(), timeout=15)
    time.sleep(6)
    assert len(agents.list()) == 6
    # They come back one a second; "fleet-5" never does. The pause ends when three are back.
    with HeartbeatPump(agents, []) as pump:
        for name in names[:5]:
            pump.names.add(name)
            time.sleep(1)
        wait_for("the pause to end", lambda: "SelfPreservationDeactivated" in agents.reasons(), timeout=10)
        wait_for("the dead one collected", lambda: agents.get("fleet-5") is None, timeout=20)
        time.sleep(2)
        remaining = {a["metadata"]["name"]: a["status"]["phase"] for a in agents.list()}
    assert remaining == dict.fromkeys(names[:5], "Healthy"), "a live agent was deleted leaving the pause"
    assert agents.reasons("fleet-5").count("Removed") == 1
    assert all("Removed" not in agents.reasons(n) for n in names[:5])


def test_registered_events_beyond_the_budget_are_summed_up(make_operator: Any, agents: Agents) -> None:
    make_operator(registered_events_burst=2, registered_events_per_second=0.001).start()
    names = [f"new-{i}" for i in range(5)]
    for name in names:
        agents.create(name)
    wait_for("every new agent has a phase", lambda: all(agents.phase(n) == "Healthy" for n in names))
    summary = wait_for(
        "the summary Event",
        lambda: next((e for e in agents.events() if e.get("reason") == "RegisteredEventsSuppressed"), None),
        timeout=30,
    )
    assert summary["message"].startswith("3 agents registered"), summary["message"]
    assert summary["involvedObject"]["kind"] == "Lease"
    assert sum(1 for n in names if "Registered" in agents.reasons(n)) == 2
