"""Lease timing in leader election, on a clock the test controls, against a fake Lease store
(no cluster). Expiry is judged by when this process saw the record change, never by the
holder's renewTime against the local wall clock (clock skew between nodes).

The tests drive one election round at a time (``_tick``), as ``run`` does between sleeps.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest

from agent_registry import kubeapi
from agent_registry.controller import leader
from agent_registry.controller.leader import LeaderElector

DURATION = 4.0


class Clock:
    """Stands in for the ``time`` module inside ``leader`` only."""

    def __init__(self) -> None:
        self.now = 500.0

    def monotonic(self) -> float:
        return self.now


class Leases:
    """One Lease, kept the way the API server keeps it: replace needs the current resourceVersion."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    def hold(self, holder: str | None, renew_time: str, duration: int = int(DURATION)) -> None:
        """Another replica writes the lease (or renews it with a new renewTime)."""
        spec = {"holderIdentity": holder, "renewTime": renew_time, "leaseDurationSeconds": duration}
        self.version += 1
        self.lease = {"metadata": {"name": "operator", "resourceVersion": str(self.version)}, "spec": spec}

    async def get(self, path: str, timeout: float) -> dict[str, Any] | None:
        return copy.deepcopy(self.lease)

    async def create(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        if self.lease is not None:
            raise kubeapi.Conflict(409, "AlreadyExists", "leases.coordination.k8s.io exists")
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return self.lease

    async def replace(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.lease is not None
        if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise kubeapi.Conflict(409, "Conflict", "the object has been modified")
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return self.lease

    @property
    def holder(self) -> str | None:
        holder: str | None = (self.lease or {}).get("spec", {}).get("holderIdentity")
        return holder


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(leader, "time", fake)
    return fake


@pytest.fixture
def leases() -> Leases:
    return Leases()


@pytest.fixture
def elector(leases: Leases) -> LeaderElector:
    async def nothing() -> None:
        pass

    kube: Any = SimpleNamespace(api=leases, timeout=5.0)
    return LeaderElector(kube, "operator", "ns", "op-a", DURATION, 1.0, nothing, nothing)


async def test_no_lease_is_created_and_held(clock: Clock, leases: Leases, elector: LeaderElector) -> None:
    await elector._tick()
    assert elector.is_leader
    assert leases.holder == "op-a"


async def test_a_lease_renewed_long_ago_by_the_wall_clock_is_not_taken_on_first_sight(
    clock: Clock, leases: Leases, elector: LeaderElector
) -> None:
    # The holder's clock may be far behind ours: its renewTime says nothing about our time.
    leases.hold("op-b", "2001-01-01T00:00:00.000000Z")
    await elector._tick()
    assert not elector.is_leader
    assert leases.holder == "op-b"


async def test_a_holder_that_keeps_renewing_keeps_the_lease(
    clock: Clock, leases: Leases, elector: LeaderElector
) -> None:
    leases.hold("op-b", "2001-01-01T00:00:00.000000Z")
    for renewal in range(1, 6):
        await elector._tick()
        clock.now += DURATION - 1
        leases.hold("op-b", f"2001-01-01T00:00:0{renewal}.000000Z")
    await elector._tick()
    assert not elector.is_leader
    assert leases.holder == "op-b"


async def test_a_record_unchanged_for_longer_than_its_duration_is_taken_over(
    clock: Clock, leases: Leases, elector: LeaderElector
) -> None:
    leases.hold("op-b", "2001-01-01T00:00:00.000000Z")
    await elector._tick()
    clock.now += DURATION
    await elector._tick()
    assert not elector.is_leader  # exactly the duration is not yet past it
    clock.now += 0.1
    await elector._tick()
    assert elector.is_leader
    assert leases.holder == "op-a"
    assert leases.lease is not None and leases.lease["spec"]["leaseDurationSeconds"] == int(DURATION)


async def test_expiry_uses_the_duration_the_lease_record_states(
    clock: Clock, leases: Leases, elector: LeaderElector
) -> None:
    leases.hold("op-b", "2001-01-01T00:00:00.000000Z", duration=15)
    await elector._tick()
    clock.now += 10  # past this elector's own duration, within the holder's
    await elector._tick()
    assert not elector.is_leader
    clock.now += 5.1
    await elector._tick()
    assert elector.is_leader


async def test_a_released_lease_is_taken_at_once(clock: Clock, leases: Leases, elector: LeaderElector) -> None:
    # A replica that shuts down clears holderIdentity so the standby need not wait out the lease.
    leases.hold(None, "2001-01-01T00:00:00.000000Z", duration=1)
    await elector._tick()
    assert elector.is_leader


async def test_losing_the_race_to_take_over_is_no_leadership(
    clock: Clock, leases: Leases, elector: LeaderElector, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases.hold("op-b", "2001-01-01T00:00:00.000000Z")
    await elector._tick()
    clock.now += DURATION + 1
    replace = leases.replace

    async def someone_else_first(path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        leases.hold("op-c", "2001-01-01T00:00:09.000000Z")  # op-c wrote between our get and our put
        return await replace(path, body, timeout)

    monkeypatch.setattr(leases, "replace", someone_else_first)
    await elector._tick()
    assert not elector.is_leader
    assert leases.holder == "op-c"


async def test_a_leader_whose_lease_was_taken_steps_down(clock: Clock, leases: Leases, elector: LeaderElector) -> None:
    stepped_down: list[bool] = []

    async def stopped() -> None:
        stepped_down.append(True)

    elector.on_stopped_leading = stopped
    await elector._tick()
    assert elector.is_leader
    leases.hold("op-b", "2001-01-01T00:00:00.000000Z")
    await elector._tick()
    assert not elector.is_leader
    assert stepped_down == [True]
