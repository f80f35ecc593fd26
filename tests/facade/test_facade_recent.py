"""Which of its own writes the facade keeps for queries (pure logic; the HTTP behaviour is in
test_facade_contract's read-your-writes test)."""

from __future__ import annotations

from typing import Any

from agent_registry.facade.recent import RecentWrites


def resource(version: int) -> dict[str, Any]:
    return {"metadata": {"name": "a", "namespace": "ns", "resourceVersion": str(version), "managedFields": [{}]}}


def ids_for_queries(recent: RecentWrites) -> list[str]:
    return [write.agent_id for write in recent.in_namespace("ns")]


def test_a_registration_is_kept_for_queries_and_slimmed() -> None:
    recent = RecentWrites(60)
    recent.wrote("id-1", "ns", "a", resource(1))
    assert ids_for_queries(recent) == ["id-1"]
    write = recent.get("id-1")
    assert write is not None and write.resource is not None
    assert "managedFields" not in write.resource["metadata"]


def test_a_routine_heartbeat_is_kept_for_reads_by_id_only() -> None:
    recent = RecentWrites(60)
    recent.wrote("id-1", "ns", "a", resource(5), changes_queries=False)
    assert ids_for_queries(recent) == []
    write = recent.get("id-1")
    assert write is not None and write.resource_version == "5"


def test_a_heartbeat_after_a_registration_stays_visible_to_queries() -> None:
    recent = RecentWrites(60)
    recent.wrote("id-1", "ns", "a", resource(1))
    recent.wrote("id-1", "ns", "a", resource(2), changes_queries=False)
    assert ids_for_queries(recent) == ["id-1"]
    write = recent.get("id-1")
    assert write is not None and write.resource_version == "2"


def test_a_delete_is_kept_for_queries_and_a_later_routine_heartbeat_is_not() -> None:
    recent = RecentWrites(60)
    recent.deleted("id-1", "ns", "a")
    assert ids_for_queries(recent) == ["id-1"]
    recent.wrote("id-1", "ns", "a", resource(9), changes_queries=False)
    assert ids_for_queries(recent) == []


def test_expired_writes_are_forgotten() -> None:
    recent = RecentWrites(-1)  # a zero or negative window keeps nothing
    recent.wrote("id-1", "ns", "a", resource(1))
    assert recent.get("id-1") is None and ids_for_queries(recent) == []
