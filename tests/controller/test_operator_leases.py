"""Lease renewals as heartbeats: the operator for real, against the real API server and Redis."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from agent_registry.localcluster.launcher import OperatorProcess
from agent_registry.localcluster.process import wait_for
from operator_harness import Agents, HeartbeatPump

# 1 s heartbeats, Unreachable after 3 s of silence; nothing deleted during a test.
KEEP = {"heartbeat": {"intervalSeconds": 1, "unreachableAfterSeconds": 3, "gcAfterSeconds": 600}}
FAST = {"heartbeat": {"intervalSeconds": 1, "unreachableAfterSeconds": 3, "gcAfterSeconds": 4}}


def healthy(agents: Agents, name: str) -> dict[str, Any]:
    obj = wait_for(
        f"{name} Healthy", lambda: (o := agents.get(name)) and (o.get("status") or {}).get("phase") == "Healthy" and o
    )
    assert isinstance(obj, dict)
    return obj


def test_renewals_keep_an_agent_healthy_with_no_agent_write(operator: OperatorProcess, agents: Agents) -> None:
    agents.create("leased", **KEEP)
    healthy(agents, "leased")
    agents.renew("leased")
    time.sleep(1)  # the operator's reaction to the first renewal, if any, has landed
    before = agents.get("leased")
    assert before is not None
    with HeartbeatPump(agents, ["leased"], by_lease=True) as pump:
        time.sleep(6)  # twice unreachable-after
        assert agents.phase("leased") == "Healthy"
    assert not pump.errors
    after = agents.get("leased")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], "a renewal wrote the Agent"
    wait_for("Unreachable once the renewals stop", lambda: agents.phase("leased") == "Unreachable", timeout=15)


@pytest.mark.parametrize("skew_minutes", [10, -10])
def test_a_skewed_renew_time_changes_nothing(operator: OperatorProcess, agents: Agents, skew_minutes: int) -> None:
    agents.create("skewed", **KEEP)
    healthy(agents, "skewed")
    with HeartbeatPump(agents, ["skewed"], by_lease=True, skew=timedelta(minutes=skew_minutes)):
        time.sleep(5)
        assert agents.phase("skewed") == "Healthy", "a live agent with a skewed clock must stay Healthy"
    wait_for("Unreachable once silent", lambda: agents.phase("skewed") == "Unreachable", timeout=15)


def test_a_mixed_fleet_old_and_new_heartbeats_both_count(operator: OperatorProcess, agents: Agents) -> None:
    agents.create("old-way", **KEEP)
    agents.create("new-way", **KEEP)
    healthy(agents, "old-way")
    healthy(agents, "new-way")
    with HeartbeatPump(agents, ["old-way"]), HeartbeatPump(agents, ["new-way"], by_lease=True):
        time.sleep(5)
        assert (agents.phase("old-way"), agents.phase("new-way")) == ("Healthy", "Healthy")
    wait_for("both Unreachable", lambda: {agents.phase("old-way"), agents.phase("new-way")} == {"Unreachable"})


def test_a_renewal_brings_an_unreachable_agent_back(operator: OperatorProcess, agents: Agents) -> None:
    agents.create("comeback", **KEEP)
    healthy(agents, "comeback")
    agents.renew("comeback")
    wait_for("Unreachable", lambda: agents.phase("comeback") == "Unreachable", timeout=15)
    agents.renew("comeback")
    wait_for("Healthy again", lambda: agents.phase("comeback") == "Healthy")
    wait_for("Recovered event", lambda: "Recovered" in agents.reasons("comeback"))


def test_a_deleted_lease_is_no_heartbeat_and_a_recreated_one_is(operator: OperatorProcess, agents: Agents) -> None:
    agents.create("relet", **KEEP)
    healthy(agents, "relet")
    agents.renew("relet")
    agents.delete_lease("relet")
    wait_for("Unreachable without its Lease", lambda: agents.phase("relet") == "Unreachable", timeout=15)
    agents.renew("relet")  # creates it again
    wait_for("Healthy with a new Lease", lambda: agents.phase("relet") == "Healthy")


def test_a_lease_of_a_deleted_agent_does_not_keep_its_successor_alive(
    operator: OperatorProcess, agents: Agents
) -> None:
    """Same name, new Agent: the old Lease (not collected yet) is not the new agent's heartbeat
    until a renewal makes it the new Agent's (every renewal carries the owner)."""
    agents.create("reborn", **KEEP)
    healthy(agents, "reborn")
    agents.renew("reborn")
    old = agents.lease("reborn")
    assert old is not None
    agents.delete("reborn")
    wait_for("deleted", lambda: agents.get("reborn") is None)
    agents.create("reborn", **KEEP)
    new = healthy(agents, "reborn")
    with HeartbeatPump(agents, ["reborn"], by_lease=True):
        time.sleep(5)
        assert agents.phase("reborn") == "Healthy"
    lease = agents.lease("reborn")
    assert lease is not None
    assert [ref["uid"] for ref in lease["metadata"]["ownerReferences"]] == [new["metadata"]["uid"]]


def test_restart_gives_every_leased_agent_a_fresh_grace_period(make_operator: Any, agents: Agents) -> None:
    op = make_operator().start()
    agents.create("steady", **FAST)
    healthy(agents, "steady")
    agents.renew("steady")
    op.stop()
    time.sleep(5)  # the Lease ages past unreachable-after while the operator is down
    restarted = time.monotonic()
    op2 = make_operator(identity="op-b").start()
    while time.monotonic() - restarted < 2.5:
        assert agents.phase("steady") == "Healthy"
        time.sleep(0.2)
    wait_for("Unreachable after a full grace period", lambda: agents.phase("steady") == "Unreachable", timeout=15)
    assert time.monotonic() - restarted >= 3
    op2.stop()


def test_a_collected_agents_lease_goes_with_it(operator: OperatorProcess, agents: Agents) -> None:
    agents.create("gone", **FAST)
    healthy(agents, "gone")
    agents.renew("gone")
    wait_for("collected", lambda: agents.get("gone") is None, timeout=30)
    # The operator deletes the Lease first itself: no garbage collector needed.
    assert agents.lease("gone") is None
