"""Routing's round robin as pure logic (no cluster): each question spreads its picks over
every candidate, starts at a random place, and the counters stay bounded."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from agent_registry.facade import routing
from agent_registry.facade.routing import RoundRobin

AGENTS = ["cost-a", "cost-b", "cost-c"]


@pytest.fixture
def start_at_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every new counter starts at the first candidate, so a test can say which comes next."""
    monkeypatch.setattr(random, "randrange", lambda _stop: 0)


def test_picks_go_round_every_candidate_in_turn() -> None:
    rr = RoundRobin()
    picks = [rr.pick("cost", AGENTS) for _ in range(3 * len(AGENTS))]
    assert Counter(picks) == {name: 3 for name in AGENTS}
    assert picks[0] is not None
    first = AGENTS.index(picks[0])
    assert picks == [AGENTS[(first + i) % len(AGENTS)] for i in range(len(picks))]


def test_no_candidates_is_no_pick_and_leaves_the_turn_alone(start_at_zero: None) -> None:
    rr = RoundRobin()
    assert rr.pick("cost", AGENTS) == "cost-a"
    assert rr.pick("cost", []) is None
    assert rr.pick("cost", AGENTS) == "cost-b"


def test_each_question_has_its_own_turn(start_at_zero: None) -> None:
    rr = RoundRobin()
    assert [rr.pick("cost", AGENTS) for _ in range(2)] == ["cost-a", "cost-b"]
    assert rr.pick(("ns", "cost", ("gpu",)), AGENTS) == "cost-a"
    assert rr.pick("cost", AGENTS) == "cost-c"


def test_a_fresh_picker_does_not_always_start_with_the_same_agent() -> None:
    # Several replicas, or a restarted one, must not all send their first pick to one agent.
    candidates = [f"agent-{i}" for i in range(10)]
    assert len({RoundRobin().pick("cost", candidates) for _ in range(50)}) > 1


def test_a_changed_candidate_list_keeps_turning_within_its_length(start_at_zero: None) -> None:
    rr = RoundRobin()
    for _ in range(4):
        rr.pick("cost", AGENTS)
    assert rr.pick("cost", AGENTS[:2]) == "cost-a"  # turn 4 of 2 candidates


def test_the_least_recently_asked_question_is_forgotten_past_the_bound(start_at_zero: None) -> None:
    rr = RoundRobin()
    rr.pick("old", AGENTS)
    rr.pick("kept", AGENTS)
    for i in range(routing._MAX_KEYS - 2):
        rr.pick(i, AGENTS)
    rr.pick("kept", AGENTS)  # asked again: now the most recent
    rr.pick("new", AGENTS)  # one question too many: the oldest goes
    assert rr.pick("kept", AGENTS) == "cost-c"
    assert rr.pick("old", AGENTS) == "cost-a"  # starts over, as a new question
