"""The operator's judgement of its own sight, as pure logic on a clock the test controls."""

from __future__ import annotations

import asyncio

import pytest

from agent_registry.controller.sight import Sight


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ScriptedProbe:
    """Answers (or fails) as the test says, taking as long on the test's clock as it says."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.takes = 0.1
        self.fails: Exception | None = None
        self.release = asyncio.Event()
        self.hold = False
        self.calls: list[tuple[str | None, float]] = []

    async def __call__(self, scope: str | None, timeout: float) -> None:
        self.calls.append((scope, timeout))
        if self.hold:
            await self.release.wait()
        self.clock.now += self.takes
        if self.fails is not None:
            raise self.fails


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, probe: ScriptedProbe, regained: list[tuple[str | None, float]]) -> Sight:
    async def on_regained(scope: str | None, blind_for: float) -> None:
        regained.append((scope, blind_for))

    return Sight(
        ["team-a", "team-b"],
        probe,
        on_regained,
        grace=lambda scope: regained.append((scope, -1.0)),
        interval=1.0,
        gap=2.0,
        watch_wait=5.0,
        clock=clock,
    )


async def test_silence_is_judged_up_to_the_start_of_the_last_timely_answer(clock: Clock) -> None:
    probe, regained = ScriptedProbe(clock), []
    sight = make(clock, probe, regained)
    clock.now = 110.0
    await sight.check(sight.scopes["team-a"])
    assert sight.seen_until("team-a") == 110.0
    assert sight.seen_until("team-b") == 100.0  # not probed yet: since the start
    assert sight.seen_until("not-watched") is None
    assert regained == []


async def test_a_failed_probe_blinds_the_scope_until_an_answer_brings_a_fresh_grace(clock: Clock) -> None:
    probe, regained = ScriptedProbe(clock), []
    sight = make(clock, probe, regained)
    for resource in ("agents", "leases"):  # both watches have delivered in team-a before
        sight.watch_delivered("team-a", resource)
    probe.fails = ConnectionError("connection refused")
    clock.now = 110.0
    await sight.check(sight.scopes["team-a"])
    assert sight.seen_until("team-a") is None
    assert sight.seen_until("team-b") == 100.0  # another namespace's sight is its own
    assert sight.blind_scopes == ["team-a"]
    probe.fails = None
    clock.now = 122.0
    await sight.check(sight.scopes["team-a"])
    assert regained == [("team-a", -1.0), ("team-a", pytest.approx(12.1))]
    # The API server answers, but judging waits for the watch to deliver again...
    assert sight.seen_until("team-a") is None
    sight.watch_delivered("team-b", "agents")
    assert sight.seen_until("team-a") is None
    sight.watch_delivered("team-a", "agents")
    # ...each watch: the Agents' and the Leases', each bringing one more fresh grace period.
    assert regained[-1] == ("team-a", -1.0) and len(regained) == 3
    assert sight.seen_until("team-a") is None
    sight.watch_delivered("team-a", "leases")
    assert regained[-1] == ("team-a", -1.0) and len(regained) == 4
    assert sight.seen_until("team-a") == 122.0


async def test_a_scope_whose_watch_stays_quiet_is_judged_again_after_the_wait(clock: Clock) -> None:
    probe, regained = ScriptedProbe(clock), []
    sight = make(clock, probe, regained)
    sight.watch_delivered("team-a", "agents")
    probe.fails = ConnectionError("connection refused")
    await sight.check(sight.scopes["team-a"])
    probe.fails = None
    clock.now = 110.0
    await sight.check(sight.scopes["team-a"])
    clock.now = 114.9
    assert sight.seen_until("team-a") is None
    clock.now = 115.2  # every agent there died meanwhile: no event will ever come
    assert sight.seen_until("team-a") == 110.0


async def test_a_probe_unanswered_for_the_gap_blinds_before_it_returns(clock: Clock) -> None:
    probe, regained = ScriptedProbe(clock), []
    sight = make(clock, probe, regained)
    sight.watch_delivered("team-a", "agents")
    probe.hold = True
    clock.now = 110.0
    task = asyncio.create_task(sight.check(sight.scopes["team-a"]))
    await asyncio.sleep(0)
    clock.now = 111.5
    assert sight.seen_until("team-a") == 100.0  # in flight for less than the gap
    clock.now = 112.5
    assert sight.seen_until("team-a") is None  # in flight too long: blind already
    probe.release.set()
    await task
    # A slow answer still counts as a gap: writers were probably failing meanwhile.
    assert regained == [("team-a", -1.0), ("team-a", pytest.approx(2.6))]
    sight.watch_delivered("team-a", "agents")
    sight.watch_delivered("team-a", "leases")
    assert sight.seen_until("team-a") == 110.0


async def test_an_old_probe_answering_late_is_no_news_after_a_newer_one(clock: Clock) -> None:
    probe, regained = ScriptedProbe(clock), []
    sight = make(clock, probe, regained)
    probe.hold = True
    clock.now = 110.0
    old = asyncio.create_task(sight.check(sight.scopes["team-a"]))
    await asyncio.sleep(0)
    probe.hold = False
    clock.now = 110.5
    await sight.check(sight.scopes["team-a"])  # sent later, answered at once
    probe.fails = TimeoutError("read timed out")
    probe.release.set()
    await old
    assert sight.seen_until("team-a") == 110.5
    assert regained == []


async def test_cluster_wide_sight_covers_every_namespace(clock: Clock) -> None:
    probe = ScriptedProbe(clock)

    async def on_regained(scope: str | None, blind_for: float) -> None:
        return None

    sight = Sight([None], probe, on_regained, lambda scope: None, interval=1.0, gap=2.0, watch_wait=5.0, clock=clock)
    clock.now = 105.0
    await sight.check(sight.scopes[None])
    assert sight.seen_until("anything") == 105.0
    assert probe.calls == [(None, 2.0)]  # a probe waits no longer than the gap


async def test_after_a_gap_only_the_watches_that_ever_delivered_are_awaited(clock: Clock) -> None:
    """A fleet of older writers has no Leases: no Lease event will come, so none is awaited."""
    probe, regained = ScriptedProbe(clock), []
    sight = make(clock, probe, regained)
    sight.watch_delivered("team-a", "agents")
    probe.fails = ConnectionError("connection refused")
    await sight.check(sight.scopes["team-a"])
    probe.fails = None
    clock.now = 110.0
    await sight.check(sight.scopes["team-a"])
    assert sight.seen_until("team-a") is None
    sight.watch_delivered("team-a", "agents")
    assert sight.seen_until("team-a") == 110.0
