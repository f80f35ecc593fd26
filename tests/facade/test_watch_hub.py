"""The watch's parts below HTTP: which event a change is for a filtered watch (pure), and the
hub reading a real Redis change feed for several watches, one of them too slow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tests.helpers.index_records import TTL, record

from agent_registry.facade.watch import Subscription, WatchFilter, WatchHub, encoded
from agent_registry.index import IndexedAgent, IndexWriter, connect
from agent_registry.index.changes import Change, ChangeFeed, ChangeKind, Position
from agent_registry.index.reader import RedisClient


def change(kind: ChangeKind, old: IndexedAgent | None, new: IndexedAgent | None) -> Change:
    return Change(
        Position(1, 0),
        kind,
        (new or old).id if (new or old) else "",
        old.model_dump_json() if old else "",
        new.model_dump_json() if new else "",
    )


HEALTHY = WatchFilter("team-a", status="healthy")
EVERYTHING = WatchFilter("team-a")


def event_lines(data: bytes) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in data.decode().strip().split("\n"))


def test_an_agent_leaving_a_filtered_view_is_removed_from_it_and_entering_it_is_sent() -> None:
    healthy = record("agent-a", phase="Healthy")
    gone = healthy.model_copy(update={"agent": healthy.agent.model_copy(update={"status": "unreachable"})})
    leaving = change(ChangeKind.PHASE, healthy, gone)
    data = encoded(leaving, HEALTHY)
    assert data is not None
    lines = event_lines(data)
    assert lines["event"] == "removed" and lines["id"] == "1-0"
    assert '"deleted":false' in lines["data"] and '"status":"unreachable"' in lines["data"]
    # Unfiltered, the same change is a phase change with the status before it.
    everything = encoded(leaving, EVERYTHING)
    assert everything is not None and b"event: phase" in everything and b'"previous_status":"healthy"' in everything
    coming_back = encoded(change(ChangeKind.PHASE, gone, healthy), HEALTHY)
    assert coming_back is not None and b"event: phase" in coming_back
    assert encoded(change(ChangeKind.UPDATED, gone, gone), HEALTHY) is None
    deleted = encoded(change(ChangeKind.REMOVED, healthy, None), HEALTHY)
    assert deleted is not None and b'"deleted":true' in deleted
    assert encoded(change(ChangeKind.REGISTERED, None, healthy), WatchFilter("team-b")) is None


def test_one_change_is_encoded_once_for_every_watch_that_sends_it() -> None:
    fresh = change(ChangeKind.REGISTERED, None, record("agent-a", phase="Healthy"))
    first, second = encoded(fresh, HEALTHY), encoded(fresh, WatchFilter("team-a", agent_type="cost"))
    assert first is not None and first is second


def test_a_subscription_further_behind_than_its_bound_is_ended_as_slow() -> None:
    subscription = Subscription(limit=2)
    fresh = change(ChangeKind.REGISTERED, None, record("agent-a"))
    subscription.offer(fresh)
    subscription.offer(fresh)
    assert subscription.ended is None
    subscription.offer(fresh)
    assert subscription.slow and subscription.ended is not None and "more than 2" in subscription.ended
    subscription.end("again")  # the first reason stays
    assert "more than 2" in subscription.ended
    assert [subscription.queue.get_nowait() for _ in range(3)] == [fresh, fresh, None]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RedisClient]:
    redis = connect(redis_url, timeout_seconds=10)
    yield redis
    await redis.aclose()


async def test_the_hub_hands_every_change_to_every_watch_and_drops_only_the_slow_one(client: RedisClient) -> None:
    writer = IndexWriter(client, ttl_seconds=TTL)
    await writer.replace_all([])
    hub = WatchHub(ChangeFeed(client, writer.layout), max_open=10, buffer_events=5)
    keeping_up = await hub.subscribe()
    slow = await hub.subscribe()
    received: list[Change] = []

    async def consume() -> None:
        while (item := await keeping_up.queue.get()) is not None:
            received.append(item)

    consumer = asyncio.create_task(consume())
    try:
        for n in range(20):
            await writer.upsert(record(f"agent-{n}"), ChangeKind.REGISTERED)
            await asyncio.sleep(0.01)
        async with asyncio.timeout(10):
            while len(received) < 20:
                await asyncio.sleep(0.05)
        assert [c.records()[1].name for c in received if c.records()[1]] == [f"agent-{n}" for n in range(20)]
        assert slow.slow and slow.ended is not None
        assert keeping_up.ended is None
        hub.unsubscribe(slow)
        assert hub.open == 1
        hub.close()
        assert keeping_up.ended is not None and "shutting down" in keeping_up.ended
    finally:
        consumer.cancel()
        await hub.aclose()
