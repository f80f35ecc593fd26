"""The Redis index against a real redis-server (the session fixture in conftest.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError
from tests.helpers.cards import a2a_card
from tests.helpers.index_records import TTL, record, resource

from agent_registry.index import (
    IndexedAgent,
    IndexLost,
    IndexReader,
    IndexUnavailable,
    IndexWriter,
    connect,
    record_from_resource,
)
from agent_registry.index import keys as k
from agent_registry.index.reader import Listing, RedisClient, _ParsedRecords, _SharedReads
from agent_registry.localcluster.redis_server import LocalRedis
from agent_registry.schema import constants as c
from agent_registry.schema.agent import Phase
from agent_registry.schema.card import StoredCard


def changed(base: IndexedAgent, **view: Any) -> IndexedAgent:
    """The same agent with some REST fields changed."""
    return base.model_copy(update={"agent": base.agent.model_copy(update=view)})


def names(records: Iterable[IndexedAgent]) -> list[str]:
    return [r.name for r in records]


def fleet(count: int, tag: str) -> list[IndexedAgent]:
    """Agents spread over namespaces, types, capabilities and phases."""
    phases = [None, "Healthy", "Degraded", "Unhealthy", "Unreachable"]
    return [
        record(
            f"{tag}-{i:05d}",
            namespace=f"ns-{i % 7}",
            agent_type=c.KNOWN_AGENT_TYPES[i % 4],
            capabilities=[cap for n, cap in ((2, "scale"), (3, "spot_migration"), (5, "tune")) if i % n == 0],
            phase=phases[i % 5],
        )
        for i in range(count)
    ]


async def current_generation(writer: IndexReader) -> str:
    gen = await writer.redis.get(writer.layout.current)
    assert gen is not None
    return str(gen)


async def foreign_generation_keys(writer: IndexReader) -> list[str]:
    """Keys of generations other than the live one (old, abandoned)."""
    live = writer.layout.generation(await current_generation(writer))
    keys = [key async for key in writer.redis.scan_iter(match=writer.layout.generations_pattern, count=1000)]
    return [key for key in keys if not key.startswith(live)]


# --- records ---------------------------------------------------------------------------


def test_record_from_resource_carries_rest_view_and_lookup_fields() -> None:
    registered = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    heartbeat = datetime(2025, 1, 2, 3, 5, 0, tzinfo=UTC)
    agent_id = str(uuid.uuid4())
    body = resource(
        "cost-1",
        namespace="team-b",
        capabilities=["scale"],
        phase="Degraded",
        metadata={"zone": "a"},
        status={
            "agentId": agent_id,
            "registeredAt": registered.isoformat(),
            "lastHeartbeatTime": heartbeat.isoformat(),
            "reportedMetadata": {"load": 3},
        },
    )
    result = record_from_resource(body)
    assert result.id == agent_id
    assert (result.namespace, result.name, result.uid) == ("team-b", "cost-1", body["metadata"]["uid"])
    assert (result.resource_version, result.phase) == ("42", Phase.DEGRADED)
    assert result.to_json() == {
        "id": agent_id,
        "name": "cost-1",
        "type": "cost",
        "host": "10.0.0.7",
        "port": 8080,
        "capabilities": ["scale"],
        "status": "degraded",
        "version": "1.0.0",
        "registered_at": "2025-01-02T03:04:05Z",
        "last_seen": "2025-01-02T03:05:00Z",
        "metadata": {"zone": "a", "load": 3},
    }

    observed = datetime(2025, 1, 2, 3, 6, 0, tzinfo=UTC)
    overridden = record_from_resource(body, phase=Phase.UNREACHABLE, last_seen=observed)
    assert (overridden.phase, overridden.agent.status, overridden.agent.last_seen) == (
        Phase.UNREACHABLE,
        "unreachable",
        observed,
    )
    assert "metadata" not in record("plain").to_json()
    fresh = record("fresh")
    assert (fresh.phase, fresh.agent.status) == (None, "healthy")


def test_records_that_would_corrupt_key_names_are_refused() -> None:
    good = record("ok")
    with pytest.raises(ValidationError, match="without an id"):
        IndexedAgent(agent=good.agent.model_copy(update={"id": ""}), namespace="team-a")
    with pytest.raises(ValidationError, match="type"):
        IndexedAgent(agent=good.agent.model_copy(update={"type": "cost:cap:x"}), namespace="team-a")
    with pytest.raises(ValidationError, match="namespace"):
        IndexedAgent(agent=good.agent, namespace="*")


# --- lookups and live changes --------------------------------------------------------------


async def test_upsert_then_every_lookup(writer: IndexWriter, reader: IndexReader) -> None:
    cost = record("cost-1", capabilities=["scale", "tune"], phase="Healthy")
    perf = record("perf-1", agent_type="performance", capabilities=["tune"], phase="Degraded")
    other = record("cost-2", namespace="team-b", capabilities=["scale"], phase="Unreachable")
    for item in (cost, perf, other):
        await writer.upsert(item)

    assert await reader.get(cost.id) == cost
    assert await reader.get(str(uuid.uuid4())) is None
    assert await reader.get_by_name("team-a", "perf-1") == perf
    assert await reader.get_by_name("team-b", "perf-1") is None
    assert await reader.query("team-a") == [cost, perf]
    assert await reader.query("team-a", type="cost") == [cost]
    assert await reader.query("team-a", capabilities=["tune"]) == [cost, perf]
    assert await reader.query("team-a", status="degraded") == [perf]
    assert await reader.query("team-a", type="cost", capabilities=["scale"], status="healthy") == [cost]
    assert await reader.query("team-a", type="cost", status="degraded") == []
    assert await reader.query(None, type="cost") == [cost, other]
    assert await reader.query(None, status="unreachable") == [other]
    assert await reader.query(None, type="resource") == []
    assert await reader.count(None) == 3
    assert await reader.count(None, capabilities=["scale"]) == 2
    assert await reader.count("team-b", type="cost") == 1
    assert await reader.ping()
    assert await reader.is_intact()


async def test_changes_move_set_membership(writer: IndexWriter, reader: IndexReader) -> None:
    before = record("agent-1", capabilities=["scale", "tune"], phase="Healthy")
    await writer.upsert(before)
    after = changed(before, type="performance", capabilities=["tune", "spot_migration"], status="unreachable")
    await writer.upsert(after)

    assert await reader.get(before.id) == after
    assert await reader.query("team-a", type="cost") == []
    assert await reader.query(None, type="cost") == []
    assert await reader.query("team-a", capabilities=["scale"]) == []
    assert await reader.query(None, capabilities=["scale"]) == []
    assert await reader.query("team-a", status="healthy") == []
    assert await reader.query(None, status="healthy") == []
    assert await reader.query("team-a", type="performance", capabilities=["tune", "spot_migration"]) == [after]
    assert await reader.query(None, status="unreachable") == [after]
    assert await reader.count(None) == 1


async def test_remove(writer: IndexWriter, reader: IndexReader) -> None:
    gone = record("gone", capabilities=["scale"])
    kept = record("kept", capabilities=["scale"])
    await writer.upsert(gone)
    await writer.upsert(kept)
    await writer.remove(gone.id)
    await writer.remove(gone.id)  # idempotent: the operator may see a deletion twice

    assert await reader.get(gone.id) is None
    assert await reader.get_by_name("team-a", "gone") is None
    assert await reader.query(None, capabilities=["scale"]) == [kept]
    assert await reader.query("team-a", type="cost", status="healthy") == [kept]
    assert await reader.count(None) == 1
    assert await reader.is_intact()


async def test_capabilities_must_all_match(writer: IndexWriter, reader: IndexReader) -> None:
    both = record("both", capabilities=["scale", "tune"])
    scale = record("scale-only", capabilities=["scale"])
    tune = record("tune-only", capabilities=["tune"])
    for item in (both, scale, tune):
        await writer.upsert(item)

    assert await reader.query("team-a", capabilities=["scale", "tune"]) == [both]
    assert await reader.query(None, capabilities=["tune", "scale", "tune"]) == [both]
    assert await reader.query("team-a", capabilities=["scale"]) == [both, scale]
    assert await reader.query("team-a", capabilities=["scale", "unknown"]) == []
    assert await reader.count("team-a", capabilities=["scale", "tune"]) == 1


async def test_namespaces_are_isolated_and_none_means_all(writer: IndexWriter, reader: IndexReader) -> None:
    a = record("same-name", namespace="team-a")
    b = record("same-name", namespace="team-b")
    z = record("alpha", namespace="team-z")
    for item in (a, b, z):
        await writer.upsert(item)

    assert await reader.query("team-a") == [a]
    assert await reader.query("team-b", type="cost") == [b]
    assert await reader.query("team-c") == []
    assert await reader.get_by_name("team-b", "same-name") == b
    # Sorted by name, then namespace.
    assert await reader.query(None) == [z, a, b]
    # A namespace from a URL cannot widen the scope to every namespace.
    assert await reader.query("*") == []
    assert await reader.count("*") == 0


async def test_name_taken_over_by_a_new_agent(writer: IndexWriter, reader: IndexReader) -> None:
    """An Agent deleted and re-created under the same name gets a new id; the late
    removal of the old one must not take the name away from the new one."""
    old = record("reborn")
    new = record("reborn")
    await writer.upsert(old)
    await writer.upsert(new)
    assert await reader.get_by_name("team-a", "reborn") == new
    await writer.remove(old.id)
    assert await reader.get_by_name("team-a", "reborn") == new
    assert await reader.query("team-a") == [new]


# --- full resync ----------------------------------------------------------------------


async def test_replace_all_with_10000_agents(writer: IndexWriter, reader: IndexReader) -> None:
    stale = fleet(50, "stale")
    await writer.replace_all(stale)
    await writer.drain()
    old_generation = await current_generation(writer)

    agents = fleet(10_000, "agent")
    started = time.perf_counter()
    assert await writer.replace_all(agents) == 10_000
    print(f"\nreplace_all: 10,000 agents in {time.perf_counter() - started:.2f}s")
    await writer.drain()

    everything = await reader.query(None)
    assert names(everything) == sorted(r.name for r in agents)
    assert everything[1234] == agents[1234]
    assert await reader.get(agents[9999].id) == agents[9999]
    assert await reader.get(stale[0].id) is None
    assert await reader.get_by_name("ns-3", agents[3].name) == agents[3]
    for namespace in ("ns-0", "ns-6"):
        for agent_type in c.KNOWN_AGENT_TYPES:
            for status in k.REST_STATUSES:
                expected = [
                    r
                    for r in agents
                    if (r.namespace, r.agent.type, r.agent.status) == (namespace, agent_type, status)
                    and {"scale", "tune"} <= set(r.agent.capabilities)
                ]
                found = await reader.query(namespace, type=agent_type, capabilities=["scale", "tune"], status=status)
                assert found == sorted(expected, key=lambda r: r.name)
    assert await reader.count(None, capabilities=["spot_migration"]) == len(range(0, 10_000, 3))
    assert await reader.is_intact()

    # The old generation is gone; only the live one's keys remain.
    assert await current_generation(writer) != old_generation
    assert await foreign_generation_keys(writer) == []


async def test_readers_never_see_a_half_done_resync(writer: IndexWriter, reader: IndexReader) -> None:
    old, new = fleet(700, "old"), fleet(900, "new")
    old_names, new_names = names(old), names(new)
    old_costs = [r.name for r in old if (r.namespace, r.agent.type) == ("ns-1", "cost")]
    new_costs = [r.name for r in new if (r.namespace, r.agent.type) == ("ns-1", "cost")]
    await writer.replace_all(old)
    done = asyncio.Event()
    seen: list[str] = []

    async def read() -> None:
        while not done.is_set():
            assert names(await reader.query(None)) in (old_names, new_names)
            assert names(await reader.query("ns-1", type="cost")) in (old_costs, new_costs)
            assert await reader.count(None) in (len(old), len(new))
            probe = await reader.get(old[5].id)
            assert probe in (None, old[5])
            seen.append("read")

    async def resync() -> None:
        try:
            for _ in range(3):
                await writer.replace_all(new)
                await writer.replace_all(old)
            # Concurrent resyncs of the same content: the last to commit wins.
            await asyncio.gather(writer.replace_all(new), writer.replace_all(new))
        finally:
            done.set()

    await asyncio.gather(resync(), read(), read(), read())
    assert seen, "the readers never ran"
    assert names(await reader.query(None)) == new_names
    await writer.drain()
    assert await foreign_generation_keys(writer) == []


async def test_changes_made_during_a_resync_survive_it(writer: IndexWriter, reader: IndexReader) -> None:
    listed = record("listed", capabilities=["scale"])
    deleted = record("deleted")
    await writer.replace_all([listed, deleted])

    async with writer.resync() as resync:
        # The snapshot is listed after the resync began; these changes race with it.
        snapshot = [listed, deleted, record("steady")]
        updated = changed(listed, capabilities=["tune"], status="degraded")
        created = record("created")
        await writer.upsert(updated)
        await writer.remove(deleted.id)
        await writer.upsert(created)
        assert await reader.get(updated.id) == updated  # the live generation took the change too
        await resync.load(snapshot)

    assert names(await reader.query("team-a")) == ["created", "listed", "steady"]
    assert await reader.get(listed.id) == updated
    assert await reader.query(None, capabilities=["scale"]) == []
    assert await reader.get(deleted.id) is None
    assert await reader.is_intact()


async def test_a_failed_resync_leaves_the_live_index_alone(writer: IndexWriter, reader: IndexReader) -> None:
    live = record("live")
    await writer.replace_all([live])
    with pytest.raises(RuntimeError, match="listing failed"):
        async with writer.resync() as resync:
            await resync.load(fleet(20, "half"))
            raise RuntimeError("listing failed")
    await writer.drain()
    assert await reader.query(None) == [live]
    assert await foreign_generation_keys(writer) == []


async def test_garbage_collection_spares_a_generation_being_built(writer: IndexWriter, reader: IndexReader) -> None:
    agents = fleet(30, "agent")
    async with writer.resync() as resync:
        await resync.load(agents)
        assert await writer.collect_garbage() == 0
    assert names(await reader.query(None)) == names(agents)


async def test_prefixes_keep_installs_apart(client: RedisClient) -> None:
    first, second = IndexWriter(client, prefix="install-1"), IndexWriter(client, prefix="install-2")
    one, two = record("one"), record("two")
    await first.replace_all([one])
    await second.replace_all([two])
    await first.replace_all([one])
    await first.drain()
    await second.drain()
    assert await IndexReader(client, prefix="install-1").query(None) == [one]
    assert await second.query(None) == [two]
    assert await second.is_intact()


# --- skills and cards ---------------------------------------------------------------------


def as_read_back(item: IndexedAgent) -> IndexedAgent:
    """A record as the index gives it back: its card lives beside it, not in it."""
    return item.model_copy(update={"card_json": None})


async def test_skills_are_found_like_capabilities_all_must_match(writer: IndexWriter, reader: IndexReader) -> None:
    translator = record("translator", capabilities=["scale"], phase="Healthy", card=a2a_card(skills=("translate",)))
    both = record("both", phase="Healthy", card=a2a_card(skills=("translate", "summarize")))
    plain = record("plain", capabilities=["scale"], phase="Healthy")
    for item in (translator, both, plain):
        await writer.upsert(item)

    assert names(await reader.query("team-a", skills=["translate"])) == ["both", "translator"]
    assert names(await reader.query("team-a", skills=["translate", "summarize"])) == ["both"]
    assert names(await reader.query(None, skills=["summarize"], status="healthy")) == ["both"]
    assert names(await reader.query("team-a", capabilities=["scale"], skills=["translate"])) == ["translator"]
    assert names(await reader.query("team-a", capabilities=["scale"])) == ["plain", "translator"]
    assert await reader.query("team-b", skills=["translate"]) == []
    assert await reader.count("team-a", skills=["translate"]) == 2
    assert (await reader.get(both.id)) == as_read_back(both)
    assert both.agent.skills == ["translate", "summarize"]

    # A new card moves the agent between skill sets, as any change moves it between sets.
    relabelled = record_from_resource(
        resource("both", agent_id=both.id, phase="Healthy"),
        card=StoredCard.validated(a2a_card(skills=("summarize",))),
    )
    await writer.upsert(relabelled)
    assert names(await reader.query("team-a", skills=["translate"])) == ["translator"]
    assert names(await reader.query("team-a", skills=["summarize"])) == ["both"]


async def test_cards_live_beside_the_records(writer: IndexWriter, reader: IndexReader) -> None:
    carded = record("carded", phase="Healthy", card=a2a_card(name="carded"))
    sick = record("sick", phase="Unhealthy", card=a2a_card(name="sick"))
    plain = record("plain", phase="Healthy")
    for item in (carded, sick, plain):
        await writer.upsert(item)

    found = await reader.card(carded.id)
    assert found is not None
    assert found[0] == as_read_back(carded) and found[0].card_hash == carded.card_hash
    assert carded.card_json is not None and found[1] == carded.card_json.decode()
    assert json.loads(found[1] or "")["name"] == "carded"
    assert await reader.card(plain.id) == (as_read_back(plain), None)
    assert await reader.card(str(uuid.uuid4())) is None
    # The records do not carry the cards: a list answer reads no card.
    raw = await writer.redis.hget(writer.layout.key(await current_generation(writer), k.RECORDS), carded.id)
    assert raw is not None and "supportedInterfaces" not in raw

    catalogue = await reader.query_cards("team-a", status="healthy")
    assert [(entry.listed.name, entry.card) for entry in catalogue] == [("carded", found[1])]
    assert [entry.listed.name for entry in await reader.query_cards("team-a")] == ["carded", "sick"]

    # Re-indexed without a card: the card goes; removed: the card goes with the record.
    await writer.upsert(as_read_back(carded).model_copy(update={"card_hash": None}))
    assert await reader.card(carded.id) == (as_read_back(carded).model_copy(update={"card_hash": None}), None)
    await writer.remove(sick.id)
    assert await reader.card(sick.id) is None
    cards_key = writer.layout.key(await current_generation(writer), k.CARDS)
    assert await writer.redis.hlen(cards_key) == 0


async def test_a_full_resync_carries_the_cards(writer: IndexWriter, reader: IndexReader, client: RedisClient) -> None:
    items = [record(f"agent-{n}", phase="Healthy", card=a2a_card(name=f"agent-{n}")) for n in range(30)]
    await writer.replace_all([*items, record("plain")])
    await writer.drain()
    catalogue = await reader.query_cards(None)
    assert [entry.listed.name for entry in catalogue] == sorted(item.name for item in items)
    assert all(json.loads(entry.card)["name"] == entry.listed.name for entry in catalogue)
    cards_key = writer.layout.key(await current_generation(writer), k.CARDS)
    assert 0 < await client.ttl(cards_key) <= TTL


# --- expiry and loss ------------------------------------------------------------------


async def test_every_key_has_a_ttl_and_refresh_extends_it(writer: IndexWriter, client: RedisClient) -> None:
    await writer.replace_all(fleet(40, "agent"))
    await writer.upsert(record("late", capabilities=["brand-new"], card=a2a_card()))
    await writer.drain()
    all_keys = [key async for key in client.scan_iter(match=f"{writer.layout.root}:*")]
    assert writer.layout.current in all_keys
    assert any(key.endswith(":cap:brand-new") for key in all_keys)
    assert any(key.endswith(":skill:rightsizing") for key in all_keys)
    assert any(key.endswith(f":{k.CARDS}") for key in all_keys)
    for key in all_keys:
        assert 0 < await client.ttl(key) <= TTL, key

    for key in all_keys:
        await client.expire(key, 5)
    assert await writer.refresh()
    for key in all_keys:
        assert await client.ttl(key) > 5, key


async def test_loss_is_detected_after_flushall(writer: IndexWriter, reader: IndexReader, client: RedisClient) -> None:
    agent = record("agent")
    await writer.upsert(agent)
    assert await writer.is_intact()
    await client.flushall()

    assert not await writer.is_intact()
    assert not await writer.refresh()
    with pytest.raises(IndexLost):
        await writer.upsert(agent)
    with pytest.raises(IndexLost):
        await writer.remove(agent.id)
    with pytest.raises(IndexLost):
        await reader.get(agent.id)
    with pytest.raises(IndexLost):
        await reader.query(None)

    await writer.replace_all([agent])
    assert await reader.get(agent.id) == agent
    assert await writer.is_intact()


async def test_loss_is_detected_when_parts_expire(writer: IndexWriter, client: RedisClient) -> None:
    agents = fleet(5, "agent")
    await writer.replace_all(agents)
    current = await current_generation(writer)
    # Some records gone (eviction, a partial expiry): the count no longer matches.
    await client.hdel(writer.layout.key(current, k.RECORDS), agents[0].id)
    assert not await writer.is_intact()

    await writer.replace_all(agents)
    assert await writer.is_intact()
    current = await current_generation(writer)
    await client.delete(writer.layout.key(current, k.META))  # the marker expired
    assert not await writer.is_intact()
    with pytest.raises(IndexLost):
        await writer.upsert(agents[0])

    await writer.replace_all(agents)
    await client.delete(writer.layout.current)  # the pointer expired
    assert not await writer.is_intact()


async def test_loss_is_detected_after_a_redis_restart(
    redis_server: LocalRedis, writer: IndexWriter, reader: IndexReader
) -> None:
    agent = record("agent")
    await writer.upsert(agent)
    redis_server.kill()
    redis_server.start()  # empty: the test server keeps nothing on disk

    assert not await writer.is_intact()
    with pytest.raises(IndexLost):
        await reader.get(agent.id)
    await writer.replace_all([agent])  # scripts are loaded again on the new server
    assert await reader.get(agent.id) == agent


async def test_redis_down_raises_index_unavailable(
    redis_server: LocalRedis, writer: IndexWriter, reader: IndexReader
) -> None:
    agent = record("agent")
    await writer.upsert(agent)
    redis_server.stop()
    try:
        for call in (
            reader.get(agent.id),
            reader.get_by_name("team-a", "agent"),
            reader.query(None, type="cost"),
            reader.count(None),
            reader.is_intact(),
            reader.ping(),
            writer.upsert(agent),
            writer.remove(agent.id),
            writer.replace_all([agent]),
            writer.refresh(),
            writer.collect_garbage(),
        ):
            with pytest.raises(IndexUnavailable) as caught:
                await call
            assert not isinstance(caught.value, IndexLost)
    finally:
        redis_server.start()
    assert not await reader.is_intact()  # it came back empty


async def test_unresponsive_redis_raises_instead_of_hanging() -> None:
    """A Redis that accepts connections and never answers (a stuck server, a black-holed
    route) must fail fast enough for the facade to fall back to the API server."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(_: asyncio.StreamReader, stream: asyncio.StreamWriter) -> None:
        connections.append(stream)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = connect(f"redis://127.0.0.1:{port}/0", timeout_seconds=0.2)
    try:
        with pytest.raises(IndexUnavailable):
            await IndexReader(redis).query(None)
        with pytest.raises(IndexUnavailable):
            await IndexWriter(redis).upsert(record("agent"))
    finally:
        await redis.aclose()
        for stream in connections:
            stream.close()
        server.close()
        await server.wait_closed()


async def test_a_resync_that_redis_loses_midway_fails(writer: IndexWriter, client: RedisClient) -> None:
    with pytest.raises(IndexUnavailable, match="generation is gone"):
        async with writer.resync() as resync:
            await resync.load(fleet(10, "before"))
            await client.flushall()  # a restart without persistence, mid-resync
            await resync.load(fleet(10, "after"))
    assert not await writer.is_intact()


def test_parsed_records_are_shared_per_json_and_bounded() -> None:
    parsed = _ParsedRecords(listed=2, parsed=2)
    a, b, c = (record(name).model_dump_json() for name in ("a", "b", "c"))
    listed = parsed.listed(a)
    assert parsed.listed(a) is listed and parsed.listed(a.encode()) is listed
    first = parsed.parse(a)
    assert parsed.parse(a) is first  # the same JSON: parsed once
    assert parsed.parse(a.encode()) is first  # bytes from a client that does not decode
    assert parsed.parse(changed(first, status="degraded").model_dump_json()).agent.status == "degraded"
    parsed.parse(b)
    parsed.parse(c)
    assert parsed.parse(a) is not first  # the oldest made room
    assert parsed.parse(a) == first
    parsed.listed(b)
    parsed.listed(c)
    assert parsed.listed(a) is not listed and parsed.listed(a) == listed


def test_list_entries_do_not_push_out_records_kept_for_lookups_by_id() -> None:
    parsed = _ParsedRecords(listed=8, parsed=2)
    kept = record("kept").model_dump_json()
    first = parsed.parse(kept)
    for name in "abcdef":
        parsed.listed(record(name).model_dump_json())
    assert parsed.parse(kept) is first
    assert parsed.listed(kept).id == first.id


async def evalsha_calls(client: RedisClient) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_identical_queries_at_once_share_one_read(
    writer: IndexWriter, reader: IndexReader, client: RedisClient
) -> None:
    for name in "abc":
        await writer.upsert(record(name))
    await reader.query_listed("team-a")  # the script is loaded: later calls are EVALSHA
    before = await evalsha_calls(client)
    answers = await asyncio.gather(*(reader.query_listed("team-a") for _ in range(20)))
    # The first caller's read, then one more for everyone who arrived while it ran.
    assert await evalsha_calls(client) - before <= 2
    assert all([entry.name for entry in answer.entries] == ["a", "b", "c"] for answer in answers)
    assert len({id(answer) for answer in answers}) <= 2
    assert answers[0].body() is answers[0].body()  # the joined body is built once per answer
    # Different questions are not merged.
    other = await asyncio.gather(reader.query_listed("team-a", type="cost"), reader.query_listed("team-b"))
    assert [len(answer.entries) for answer in other] == [3, 0]


async def test_a_shared_read_starts_after_every_caller_it_answers() -> None:
    """Read-your-writes: a caller that arrives while a read is in flight gets the next read,
    not the one that may predate its own write."""
    shared = _SharedReads()
    started: list[asyncio.Event] = []
    release: list[asyncio.Event] = []

    async def read() -> Listing:
        started.append(asyncio.Event())
        release.append(asyncio.Event())
        number = len(started)
        started[-1].set()
        await release[number - 1].wait()
        return Listing([])

    first = asyncio.ensure_future(shared.read("q", read))
    await asyncio.sleep(0)
    assert len(started) == 1
    late = [asyncio.ensure_future(shared.read("q", read)) for _ in range(5)]
    await asyncio.sleep(0)
    assert len(started) == 1  # nobody started a read of their own while one runs
    release[0].set()
    first_answer = await first
    await asyncio.sleep(0.01)
    assert len(started) == 2  # one more read, for all five
    release[1].set()
    late_answers = await asyncio.gather(*late)
    assert all(answer is late_answers[0] for answer in late_answers)
    assert late_answers[0] is not first_answer


async def test_a_caller_that_hangs_up_does_not_cancel_a_shared_read() -> None:
    shared = _SharedReads()
    gate = asyncio.Event()
    calls = 0

    async def read() -> Listing:
        nonlocal calls
        calls += 1
        await gate.wait()
        return Listing([])

    first = asyncio.ensure_future(shared.read("q", read))
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(shared.read("q", read)) for _ in range(2)]
    await asyncio.sleep(0)
    first.cancel()  # the read in flight goes with its only caller
    waiting[0].cancel()  # one of the two waiting for the next read hangs up
    await asyncio.sleep(0.01)
    gate.set()
    assert isinstance(await waiting[1], Listing)
    assert calls == 2
    assert await shared.read("q", read) is not None  # nothing left behind for the next caller


async def test_a_failed_shared_read_fails_every_caller_and_the_next_read_is_fresh() -> None:
    shared = _SharedReads()
    gate = asyncio.Event()
    outcomes = iter([IndexLost("first"), IndexLost("second")])

    async def read() -> Listing:
        await gate.wait()
        raise next(outcomes)

    callers = [asyncio.ensure_future(shared.read("q", read)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert [str(result) for result in results] == ["first", "second", "second"]

    async def fine() -> Listing:
        return Listing([])

    assert (await shared.read("q", fine)).entries == []


# --- routing and wire forms --------------------------------------------------------------


async def test_route_picks_round_robin_among_healthy_matches(writer: IndexWriter, reader: IndexReader) -> None:
    candidates = [record(name, capabilities=["tune", "scale"], phase="Healthy") for name in "abc"]
    others = [
        record("degraded", capabilities=["tune", "scale"], phase="Degraded"),
        record("no-scale", capabilities=["tune"], phase="Healthy"),
        record("other-type", agent_type="performance", capabilities=["tune", "scale"], phase="Healthy"),
        record("elsewhere", namespace="team-b", capabilities=["tune", "scale"], phase="Healthy"),
    ]
    for agent in candidates + others:
        await writer.upsert(agent)

    picks = [await reader.route("team-a", "cost", ["scale", "tune"]) for _ in range(30)]

    assert all(pick is not None for pick in picks)
    counts = {name: sum(1 for p in picks if p is not None and p.listed.record.name == name) for name in "abc"}
    assert counts == {"a": 10, "b": 10, "c": 10}
    # A turn lasts one pick: consecutive picks of a stable set never repeat.
    assert all(
        p is not None and q is not None and p.listed.record.id != q.listed.record.id
        for p, q in itertools.pairwise(picks)
    )


async def test_route_counter_is_shared_by_readers_and_per_question(
    writer: IndexWriter, reader: IndexReader, redis_url: str
) -> None:
    for name in "ab":
        await writer.upsert(record(name, capabilities=["tune"], phase="Healthy"))
    other = IndexReader(connect(redis_url))
    try:
        first = await reader.route("team-a", "cost", ["tune"])
        second = await other.route("team-a", "cost", ["tune"])  # another replica takes the next turn
        assert first is not None and second is not None
        assert first.listed.record.name != second.listed.record.name
        # The same question with the capabilities in another order shares the counter.
        again = await other.route("team-a", "cost", ["tune", "tune"])
        assert again is not None and again.listed.record.name == first.listed.record.name
    finally:
        await other.redis.aclose()  # type: ignore[attr-defined,unused-ignore]


async def test_route_without_a_match_or_an_index(writer: IndexWriter, reader: IndexReader, client: RedisClient) -> None:
    await writer.upsert(record("sick", capabilities=["tune"], phase="Unhealthy"))
    assert await reader.route("team-a", "cost", ["tune"]) is None
    assert await reader.route("team-a", "resource", []) is None
    assert await reader.route("*", "cost", []) is None  # not a namespace: matches nothing
    await client.flushall()
    with pytest.raises(IndexLost):
        await reader.route("team-a", "cost", ["tune"])


async def test_listed_wire_is_the_rest_agent_as_json(writer: IndexWriter, reader: IndexReader) -> None:
    agents = [record("b", metadata={"zone": "ü"}), record("a")]
    for agent in agents:
        await writer.upsert(agent)
    listed = (await reader.query_listed("team-a")).entries
    assert [entry.record.name for entry in listed] == ["a", "b"]
    assert [(entry.id, entry.name, entry.resource_version) for entry in listed] == [
        (entry.record.id, entry.record.name, entry.record.resource_version) for entry in listed
    ]
    for entry in listed:
        assert json.loads(entry.wire) == entry.record.to_json()
    assert "metadata" not in json.loads(listed[0].wire)  # empty metadata is omitted, as the original did
    assert json.loads(listed[1].wire)["metadata"] == {"zone": "ü"}
