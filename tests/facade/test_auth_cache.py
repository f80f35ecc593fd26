"""The facade's cache of identities and RBAC decisions (``auth._Cache``), on a clock the test
controls (no cluster): fresh for ``fresh`` seconds, usable in an outage for ``stale``, bounded."""

from __future__ import annotations

import pytest

from agent_registry.facade import auth
from agent_registry.facade.auth import _Cache


class Clock:
    """Stands in for the ``time`` module inside ``auth`` only."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(auth, "time", fake)
    return fake


def test_an_entry_is_served_while_fresh_then_not(clock: Clock) -> None:
    cache: _Cache[str] = _Cache(fresh=10, stale=0)
    cache.put("token", "alice")
    clock.now += 10
    assert cache.get("token") == "alice"
    clock.now += 0.1
    assert cache.get("token") is None
    assert "token" not in cache.entries  # past every use: dropped


def test_in_an_outage_an_older_entry_is_honoured_until_stale(clock: Clock) -> None:
    cache: _Cache[str] = _Cache(fresh=10, stale=300)
    cache.put("token", "alice")
    clock.now += 60
    assert cache.get("token") is None  # a normal read asks the API server again...
    assert cache.get("token", outage=True) == "alice"  # ...but the entry is kept for an outage
    clock.now += 240
    assert cache.get("token", outage=True) == "alice"
    clock.now += 0.1
    assert cache.get("token", outage=True) is None
    assert "token" not in cache.entries


def test_a_stale_bound_shorter_than_fresh_does_not_cut_an_outage_short(clock: Clock) -> None:
    cache: _Cache[str] = _Cache(fresh=30, stale=5)
    cache.put("token", "alice")
    clock.now += 20
    assert cache.get("token", outage=True) == "alice"


def test_nothing_is_kept_when_caching_is_off(clock: Clock) -> None:
    cache: _Cache[str] = _Cache(fresh=0, stale=0)
    cache.put("token", "alice")
    assert cache.get("token") is None
    assert not cache.entries


def test_only_stale_caching_still_keeps_entries_for_an_outage(clock: Clock) -> None:
    # auth_cache_seconds=0 with auth_stale_seconds>0: every call is checked, yet an outage is bridged.
    cache: _Cache[str] = _Cache(fresh=0, stale=300)
    cache.put("token", "alice")
    clock.now += 1
    assert cache.get("token") is None
    assert cache.get("token", outage=True) == "alice"


def test_a_put_renews_the_entry(clock: Clock) -> None:
    cache: _Cache[str] = _Cache(fresh=10, stale=0)
    cache.put("token", "alice")
    clock.now += 8
    cache.put("token", "alice-again")
    clock.now += 8
    assert cache.get("token") == "alice-again"


def test_the_least_recently_stored_entry_goes_past_the_bound(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "_CACHE_ENTRIES", 3)
    cache: _Cache[str] = _Cache(fresh=60, stale=0)
    for key in ("a", "b", "c"):
        cache.put(key, key)
    cache.put("a", "a")  # stored again: now the newest
    cache.put("d", "d")
    assert list(cache.entries) == ["c", "a", "d"]
