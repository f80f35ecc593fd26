"""The change feed (``index.changes``) against a real redis-server: what the index scripts
append for each change, what a heartbeat alone does not, and when a position can no longer
be resumed from. Plus the pure rules: which change a record update is, positions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.helpers.index_records import TTL, record

from agent_registry.index import IndexedAgent, IndexLost, IndexWriter
from agent_registry.index.changes import START, Change, ChangeFeed, ChangeKind, Position, change_between, stronger
from agent_registry.index.reader import RedisClient
from agent_registry.schema.agent import Load


def moved(base: IndexedAgent, **view: Any) -> IndexedAgent:
    return base.model_copy(update={"agent": base.agent.model_copy(update=view)})


async def entries(feed: ChangeFeed, since: Position = START) -> list[Change]:
    return await feed.after(since, 10_000)


@pytest.fixture
def feed(writer: IndexWriter) -> ChangeFeed:
    return ChangeFeed(writer.redis, writer.layout)


# --- which change an update is (pure) ------------------------------------------------------


def test_a_heartbeat_alone_is_no_change_and_the_phase_outranks_other_updates() -> None:
    agent = record("agent-a", phase="Healthy")
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert change_between(None, agent) is ChangeKind.REGISTERED
    assert change_between(agent, moved(agent, last_seen=later)) is None
    assert change_between(agent, agent.model_copy(update={"load": Load(in_flight=3, max=4)})) is None
    assert change_between(agent, moved(agent, version="2.0.0")) is ChangeKind.UPDATED
    assert change_between(agent, agent.model_copy(update={"card_hash": "sha256:x"})) is ChangeKind.UPDATED
    assert change_between(agent, moved(agent, status="unreachable", version="2.0.0")) is ChangeKind.PHASE
    assert stronger(ChangeKind.REGISTERED, ChangeKind.PHASE) is ChangeKind.REGISTERED
    assert stronger(ChangeKind.UPDATED, ChangeKind.PHASE) is ChangeKind.PHASE
    assert stronger(None, ChangeKind.UPDATED) is ChangeKind.UPDATED


@pytest.mark.parametrize("text", ["", "12", "1-2-3", "a-1", "-1-0", "1-0\n", " 1-0", "1" * 21 + "-0"])
def test_a_position_is_milliseconds_dash_sequence_and_nothing_else(text: str) -> None:
    with pytest.raises(ValueError, match="position"):
        Position.parse(text)


def test_positions_order_as_the_stream_does() -> None:
    assert Position.parse("1700000000000-2") < Position.parse("1700000000000-10") < Position.parse("1700000000001-0")
    assert str(Position.parse("17-3")) == "17-3"


# --- what the scripts append ---------------------------------------------------------------


async def test_each_change_is_one_entry_with_the_record_before_and_after(writer: IndexWriter, feed: ChangeFeed) -> None:
    start = await feed.head()  # the first resync's relist
    agent = record("agent-a", phase="Healthy")
    await writer.upsert(agent, ChangeKind.REGISTERED)
    await writer.upsert(moved(agent, last_seen=datetime.now(UTC)), None)  # a heartbeat alone
    gone_bad = moved(agent, status="unhealthy")
    await writer.upsert(gone_bad, ChangeKind.PHASE)
    await writer.remove(agent.id)
    await writer.remove(agent.id)  # already gone: nothing to tell
    changes = await entries(feed, start)
    assert [change.kind for change in changes] == [ChangeKind.REGISTERED, ChangeKind.PHASE, ChangeKind.REMOVED]
    registered, phase, removed = changes
    assert registered.records() == (None, agent)
    before, after = phase.records()
    assert before is not None and after == gone_bad and before.agent.last_seen is not None
    assert removed.records() == (gone_bad, None)
    assert all(change.agent_id == agent.id for change in changes)
    assert [change.position for change in changes] == sorted(change.position for change in changes)
    assert await feed.head() == removed.position


async def test_an_agent_the_live_index_lacks_is_registered_whatever_the_writer_says(
    writer: IndexWriter, feed: ChangeFeed
) -> None:
    start = await feed.head()
    await writer.upsert(record("agent-b"), None)
    [change] = await entries(feed, start)
    assert change.kind is ChangeKind.REGISTERED


async def test_a_rebuilt_index_goes_live_with_a_relist_and_its_load_appends_nothing(
    writer: IndexWriter, feed: ChangeFeed
) -> None:
    start = await feed.head()
    await writer.replace_all([record(f"agent-{n}") for n in range(20)])
    assert [change.kind for change in await entries(feed, start)] == [ChangeKind.RELIST]


async def test_the_feed_is_capped_and_expires_with_the_index(client: RedisClient) -> None:
    writer = IndexWriter(client, ttl_seconds=TTL, changes_kept=100)
    await writer.replace_all([])
    agent = record("busy-agent")
    for n in range(400):
        await writer.upsert(moved(agent, version=f"1.0.{n}"), ChangeKind.UPDATED)
    length = await client.xlen(writer.layout.changes)
    assert 100 <= length < 400  # trimmed approximately (whole nodes), never below the cap
    assert 0 < await client.ttl(writer.layout.changes) <= TTL


# --- resuming ------------------------------------------------------------------------------


async def test_continuity_says_when_a_position_cannot_be_resumed_from(client: RedisClient) -> None:
    writer = IndexWriter(client, ttl_seconds=TTL, changes_kept=100)
    feed = ChangeFeed(client, writer.layout)
    assert await feed.continuity(START) is None  # no feed yet, and nothing happened
    await writer.replace_all([])
    first = await feed.head()
    assert await feed.continuity(first) is None
    assert await feed.continuity(START) is None  # nothing trimmed yet
    future = Position(first.ms + 10**9, 0)
    assert "not in this change history" in str(await feed.continuity(future))

    agent = record("busy-agent")
    for n in range(400):
        await writer.upsert(moved(agent, version=f"1.0.{n}"), ChangeKind.UPDATED)
    assert "no longer kept" in str(await feed.continuity(first))
    assert await feed.continuity(await feed.head()) is None

    await client.delete(writer.layout.changes)
    assert "gone" in str(await feed.continuity(first))


async def test_wait_returns_what_comes_after_the_position(writer: IndexWriter, client: RedisClient) -> None:
    feed = ChangeFeed(client, writer.layout)
    position = await feed.head()
    assert await feed.wait(position, block_ms=50) == []
    waiting = asyncio.create_task(feed.wait(position, block_ms=5_000))
    await asyncio.sleep(0.1)
    await writer.upsert(record("late-agent"), ChangeKind.REGISTERED)
    [change] = await asyncio.wait_for(waiting, 5)
    assert change.kind is ChangeKind.REGISTERED and change.position > position


async def test_a_rebuild_of_an_index_the_feed_describes_whole_needs_no_relist(client: RedisClient) -> None:
    writer = IndexWriter(client, ttl_seconds=TTL)
    feed = ChangeFeed(client, writer.layout)
    agent = record("agent-c", phase="Healthy")
    await writer.replace_all([], nothing_pending=True)  # nothing live before: a relist all the same
    start = await feed.head()
    await writer.upsert(agent, ChangeKind.REGISTERED)
    await writer.replace_all([agent], nothing_pending=True)  # its own index, every change written
    assert [change.kind for change in await entries(feed, start)] == [ChangeKind.REGISTERED]

    await writer.replace_all([agent])  # the caller had changes waiting: they come only by a relist
    assert (await entries(feed, start))[-1].kind is ChangeKind.RELIST

    other = IndexWriter(client, ttl_seconds=TTL)  # a new leader cannot vouch for what it did not write
    mark = await feed.head()
    await other.replace_all([agent], nothing_pending=True)
    assert [change.kind for change in await entries(feed, mark)] == [ChangeKind.RELIST]

    await client.delete(writer.layout.current)  # the index lost: a failed write, then a rebuild
    with pytest.raises(IndexLost):
        await other.upsert(agent, ChangeKind.UPDATED)
    mark = await feed.head()
    await other.replace_all([agent], nothing_pending=True)
    assert [change.kind for change in await entries(feed, mark)] == [ChangeKind.RELIST]
