"""The tracker's decisions as pure logic, on a clock the test controls (no cluster)."""

from __future__ import annotations

from typing import Any

from agent_registry.controller.conditions import build_conditions
from agent_registry.controller.tracker import LeaseSeen, Tracker
from agent_registry.schema.agent import Phase

TIMING = {"intervalSeconds": 1, "unreachableAfterSeconds": 3, "gcAfterSeconds": 10}


def body(name: str, seq: int = 0, reported: str | None = None, phase: str | None = None, rv: str = "1") -> Any:
    status: dict[str, Any] = {"heartbeatSequence": seq}
    if reported:
        status["reportedStatus"] = reported
    if phase:
        status["phase"] = phase
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}", "resourceVersion": rv},
        "spec": {"type": "cost", "heartbeat": TIMING},
        "status": status,
    }


def test_first_sight_counts_as_heard_now_whatever_the_timestamps() -> None:
    tracker = Tracker()
    obs = tracker.observe(body("a"), now=100.0)
    assert obs.is_new and obs.desired_phase == Phase.HEALTHY
    assert tracker.sweep(now=102.9).became_unreachable == []
    assert [a.name for a in tracker.sweep(now=103.1).became_unreachable] == ["a"]


def test_only_heartbeat_field_changes_are_heartbeats() -> None:
    tracker = Tracker()
    tracker.observe(body("a", seq=1), now=0.0)
    assert not tracker.observe(body("a", seq=1, phase="Healthy", rv="2"), now=2.0).is_heartbeat
    assert tracker.observe(body("a", seq=2, rv="3"), now=2.5).is_heartbeat
    assert tracker.sweep(now=5.0).became_unreachable == []  # heard at 2.5


def test_reported_status_drives_phase() -> None:
    tracker = Tracker()
    tracker.observe(body("a"), now=0.0)
    assert tracker.observe(body("a", seq=1, reported="degraded"), now=1.0).desired_phase == Phase.DEGRADED
    assert tracker.observe(body("a", seq=2, reported="unhealthy"), now=2.0).desired_phase == Phase.UNHEALTHY


def test_unreachable_then_recovered_then_gc() -> None:
    tracker = Tracker(min_agents=5)
    tracker.observe(body("a", seq=1), now=0.0)
    agent = tracker.sweep(now=4.0).became_unreachable[0]
    agent.phase = Phase.UNREACHABLE  # what the sweeper does after its patch succeeds
    obs = tracker.observe(body("a", seq=2, phase="Unreachable"), now=5.0)
    assert obs.recovered and obs.desired_phase == Phase.HEALTHY
    tracker.observe(body("a", seq=2, phase="Healthy"), now=5.1)
    tracker.sweep(now=9.0)  # silent since 5.0: unreachable from 9.0
    assert tracker.sweep(now=18.9).to_delete == []
    assert [a.name for a in tracker.sweep(now=19.1).to_delete] == ["a"]


def test_a_failed_unreachable_write_is_asked_for_again() -> None:
    tracker = Tracker(min_agents=5)
    tracker.observe(body("a"), now=0.0)
    assert len(tracker.sweep(now=4.0).became_unreachable) == 1
    assert len(tracker.sweep(now=4.5).became_unreachable) == 1  # phase still not Unreachable


def test_stored_unreachable_keeps_phase_but_gets_a_fresh_gc_clock() -> None:
    tracker = Tracker(min_agents=5)
    obs = tracker.observe(body("a", phase="Unreachable"), now=100.0)
    assert obs.desired_phase == Phase.UNREACHABLE
    assert tracker.sweep(now=109.0).to_delete == []
    assert len(tracker.sweep(now=110.5).to_delete) == 1


def test_self_preservation_enters_blocks_gc_and_exits_on_recovery() -> None:
    tracker = Tracker(share=0.5, min_agents=3, max_pause=100.0)
    for i in range(5):
        tracker.observe(body(f"a{i}", seq=1), now=0.0)
    tracker.observe(body("a0", seq=2), now=3.5)  # a0 stays alive
    result = tracker.sweep(now=4.0)
    assert len(result.became_unreachable) == 4
    assert result.self_preservation.entered and result.self_preservation.active
    for a in result.became_unreachable:
        a.phase = Phase.UNREACHABLE
    tracker.observe(body("a0", seq=3), now=14.0)
    assert tracker.sweep(now=15.0).to_delete == []  # past gc-after, but paused
    for i in range(1, 5):
        tracker.observe(body(f"a{i}", seq=2, phase="Unreachable"), now=16.0)
    state = tracker.sweep(now=16.5).self_preservation
    assert not state.active and state.exited_reason == "recovered"


def test_self_preservation_expires_and_gc_resumes() -> None:
    tracker = Tracker(share=0.5, min_agents=3, max_pause=20.0)
    for i in range(4):
        tracker.observe(body(f"a{i}"), now=0.0)
    assert tracker.sweep(now=4.0).self_preservation.entered
    assert tracker.sweep(now=20.0).to_delete == []
    result = tracker.sweep(now=25.0)
    assert result.self_preservation.exited_reason == "expired"
    assert len(result.to_delete) == 4
    assert not tracker.sweep(now=26.0).self_preservation.active  # no re-entry for the same outage


def test_agents_dying_one_by_one_are_not_an_outage() -> None:
    tracker = Tracker(share=0.5, min_agents=3)
    for i in range(4):
        tracker.observe(body(f"a{i}"), now=0.0)
    for i in range(4):
        tracker.observe(body(f"a{i}", seq=1), now=100.0 * i)  # last heard 0, 100, 200, 300
    states = [tracker.sweep(now=now).self_preservation for now in (104.0, 204.0, 304.0, 404.0)]
    assert not any(s.active for s in states)


def test_conditions_keep_transition_time_while_status_holds() -> None:
    first = build_conditions(Phase.HEALTHY, "2026-01-01T00:00:00Z", None)
    again = build_conditions(Phase.HEALTHY, "2026-01-01T00:05:00Z", first)
    assert [c["lastTransitionTime"] for c in again] == ["2026-01-01T00:00:00Z"] * 2
    down = build_conditions(Phase.UNREACHABLE, "2026-01-01T00:10:00Z", again)
    assert {c["type"]: (c["status"], c["lastTransitionTime"]) for c in down} == {
        "Ready": ("False", "2026-01-01T00:10:00Z"),
        "Reachable": ("False", "2026-01-01T00:10:00Z"),
    }


def test_nobody_is_judged_or_collected_while_the_operator_is_blind() -> None:
    tracker = Tracker(min_agents=5)
    tracker.observe(body("a"), now=0.0)
    tracker.observe(body("dead", phase="Unreachable"), now=0.0)
    result = tracker.sweep(now=50.0, seen_until=lambda ns: None)
    assert result.became_unreachable == [] and result.to_delete == []
    assert tracker.agents[("ns", "a")].unreachable_since is None


def test_silence_is_judged_only_up_to_when_the_operator_could_see() -> None:
    tracker = Tracker(min_agents=5)
    tracker.observe(body("a"), now=0.0)
    # Now is 10, but the last probe answered in time started at 2.5: silent 2.5 s, not 10.
    assert tracker.sweep(now=10.0, seen_until=lambda ns: 2.5).became_unreachable == []
    assert [a.name for a in tracker.sweep(now=10.0, seen_until=lambda ns: 3.5).became_unreachable] == ["a"]


def test_regaining_sight_gives_a_fresh_grace_period_in_that_namespace_only() -> None:
    tracker = Tracker(min_agents=5)
    tracker.observe(body("a"), now=0.0)
    other = body("b")
    other["metadata"]["namespace"] = "elsewhere"
    tracker.observe(other, now=0.0)
    tracker.observe(body("gone", phase="Unreachable"), now=0.0)
    tracker.restart_grace(20.0, namespace="ns")
    result = tracker.sweep(now=21.0)
    assert [a.name for a in result.became_unreachable] == ["b"]
    assert result.to_delete == []  # "gone" got a fresh gc-after from 20.0
    assert [a.name for a in tracker.sweep(now=30.5).to_delete] == ["gone"]


def test_leaving_self_preservation_gives_the_still_silent_a_fresh_gc_after() -> None:
    tracker = Tracker(share=0.5, min_agents=3, max_pause=1000.0)
    names = [f"a{i}" for i in range(6)]
    for name in names:
        tracker.observe(body(name, seq=1), now=0.0)
    result = tracker.sweep(now=4.0)  # all six silent together: paused
    assert result.self_preservation.entered
    for agent in result.became_unreachable:
        agent.phase = Phase.UNREACHABLE
    assert tracker.sweep(now=30.0).to_delete == []  # past gc-after, paused
    # They come back one at a time, a second apart, and keep heartbeating; "a5" never does.
    back: list[str] = []
    for step in range(16):
        now = 31.0 + step
        if step < 5:
            back.append(names[step])
        for name in back:
            obs = tracker.observe(body(name, seq=2 + step, phase="Healthy"), now=now)
        result = tracker.sweep(now=now + 0.5)
        assert [a.name for a in result.to_delete] in ([], ["a5"])
        if result.to_delete:
            deleted_at = now + 0.5
            tracker.forget("ns", "a5")
        if result.self_preservation.exited_reason:
            assert result.self_preservation.exited_reason == "recovered"
            exited_at = now + 0.5
    assert obs.agent.name == "a4"
    # The exit came when three of six were back (33.5); "a5" went gc-after (10 s) later, once.
    assert exited_at == 33.5
    assert deleted_at == 44.5


# --- Lease renewals -----------------------------------------------------------------------------


def seen(agent_uid: str, signature: str, rv: str = "1") -> LeaseSeen:
    return LeaseSeen(agent_uid=agent_uid, name="agent-a", uid="lease-uid", resource_version=rv, signature=signature)


def test_a_lease_renewal_is_a_heartbeat_on_the_operators_clock() -> None:
    tracker = Tracker()
    tracker.observe(body("a"), now=0.0)
    assert tracker.observe_lease("ns", "a", seen("uid-a", "t1"), now=2.0) is not None
    assert tracker.sweep(now=4.0).became_unreachable == []  # heard at 2.0, unreachable after 3
    assert tracker.observe_lease("ns", "a", seen("uid-a", "t2"), now=4.5) is not None
    assert tracker.sweep(now=7.0).became_unreachable == []
    assert [a.name for a in tracker.sweep(now=8.0).became_unreachable] == ["a"]


def test_the_same_lease_seen_again_is_no_renewal() -> None:
    """A re-listing after a watch reconnect shows every Lease again, unchanged."""
    tracker = Tracker()
    tracker.observe(body("a"), now=0.0)
    tracker.observe_lease("ns", "a", seen("uid-a", "t1"), now=1.0)
    assert tracker.observe_lease("ns", "a", seen("uid-a", "t1", rv="1"), now=3.0) is None
    assert [a.name for a in tracker.sweep(now=4.5).became_unreachable] == ["a"]


def test_a_lease_of_an_earlier_agent_of_the_same_name_does_not_count() -> None:
    tracker = Tracker()
    tracker.observe(body("a"), now=0.0)
    assert tracker.observe_lease("ns", "a", seen("uid-of-a-deleted-agent", "t1"), now=2.0) is None
    assert [a.name for a in tracker.sweep(now=3.5).became_unreachable] == ["a"]


def test_a_lease_seen_before_its_agent_is_kept_for_it() -> None:
    tracker = Tracker()
    assert tracker.observe_lease("ns", "a", seen("uid-a", "t1"), now=0.0) is None
    tracker.observe(body("a"), now=0.5)
    agent = tracker.agents[("ns", "a")]
    assert agent.lease is not None and agent.lease.signature == "t1"
    # So the same Lease, delivered again, is not mistaken for a renewal.
    assert tracker.observe_lease("ns", "a", seen("uid-a", "t1"), now=1.0) is None


def test_a_renewal_ends_unreachable_and_a_deleted_lease_is_forgotten() -> None:
    tracker = Tracker()
    tracker.observe(body("a"), now=0.0)
    tracker.observe_lease("ns", "a", seen("uid-a", "t1"), now=0.0)
    agent = tracker.sweep(now=4.0).became_unreachable[0]
    agent.phase = Phase.UNREACHABLE  # as the sweeper's write does
    assert tracker.observe_lease("ns", "a", seen("uid-a", "t2"), now=5.0) is agent
    assert agent.unreachable_since is None and tracker.desired_phase(agent) == Phase.HEALTHY
    tracker.lease_gone("ns", "a", "lease-uid")
    assert agent.lease is None
