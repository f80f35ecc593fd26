"""How the index picks a route (``scripts.ROUTE``) against a real redis-server: capability
health, load, sticky keys and given candidates."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from tests.helpers.index_records import record

from agent_registry.facade.routing import rendezvous
from agent_registry.index import IndexedAgent, IndexReader, IndexWriter
from agent_registry.index import keys as k
from agent_registry.index.reader import RedisClient
from agent_registry.schema.agent import Load


def unhealthy(*capabilities: str, degraded: Sequence[str] = ()) -> dict[str, object]:
    """An Agent status reporting these capabilities unhealthy (and those degraded)."""
    entries = [{"name": cap, "status": "unhealthy", "reason": "backend down"} for cap in capabilities]
    entries += [{"name": cap, "status": "degraded", "reason": "slow"} for cap in degraded]
    return {"capabilityHealth": entries}


async def put(writer: IndexWriter, *records: IndexedAgent) -> dict[str, str]:
    """Index the records; their ids by name."""
    for agent in records:
        await writer.upsert(agent)
    return {agent.name: agent.id for agent in records}


async def picks(
    reader: IndexReader, capabilities: Sequence[str], count: int, seed: int = 7, **kwargs: object
) -> Counter[str]:
    """Names picked by ``count`` routes for cost agents, with a fixed sequence of seeds."""
    draws = random.Random(seed)
    named: Counter[str] = Counter()
    for _ in range(count):
        picked = await reader.route(
            "team-a",
            "cost",
            capabilities,
            seed=draws.randrange(1, 2**31 - 1),
            **kwargs,  # type: ignore[arg-type]
        )
        assert picked is not None and picked.listed is not None
        named[picked.listed.name] += 1
    return named


async def test_a_capability_reported_unhealthy_is_never_routed_to_and_the_others_still_are(
    writer: IndexWriter, reader: IndexReader
) -> None:
    caps = ["summarize", "translate"]
    await put(
        writer,
        record("sick-summary", capabilities=caps, phase="Healthy", status=unhealthy("summarize")),
        record("fine", capabilities=caps, phase="Healthy"),
    )
    assert await picks(reader, ["summarize"], 12) == {"fine": 12}
    assert set(await picks(reader, ["translate"], 12)) == {"sick-summary", "fine"}
    # The list filters agree: asking for healthy agents with the capability leaves it out,
    # asking without a status does not (the agent has the capability, and is Healthy).
    healthy = await reader.query("team-a", "cost", ["summarize"], "healthy")
    assert [agent.name for agent in healthy] == ["fine"]
    assert len(await reader.query("team-a", "cost", ["summarize"])) == 2
    assert len(await reader.query("team-a", "cost", ["translate"], "healthy")) == 2


async def test_healthy_capabilities_are_preferred_over_degraded_ones(writer: IndexWriter, reader: IndexReader) -> None:
    await put(
        writer,
        record("slow", capabilities=["summarize"], phase="Healthy", status=unhealthy(degraded=["summarize"])),
        record("quick", capabilities=["summarize"], phase="Healthy"),
    )
    assert await picks(reader, ["summarize"], 10) == {"quick": 10}
    assert set(await picks(reader, [], 10)) == {"slow", "quick"}  # degraded in a capability nobody asked for
    await writer.remove(next(a.id for a in await reader.query("team-a") if a.name == "quick"))
    assert await picks(reader, ["summarize"], 3) == {"slow": 3}  # degraded is better than nothing


async def test_the_idle_agent_gets_most_picks(writer: IndexWriter, reader: IndexReader) -> None:
    await put(
        writer,
        record("idle", phase="Healthy", load=Load(in_flight=0, max=10)),
        record("busy", phase="Healthy", load=Load(in_flight=9, max=10)),
    )
    got = await picks(reader, [], 12)
    # Both are drawn every time. Each pick counts against "idle" until its next report, so
    # it wins the first 9 (0/10 .. 8/10 against 9/10), and from then on they are even.
    assert got["idle"] >= 9 and sum(got.values()) == 12, got


async def test_picks_count_against_an_agent_until_its_next_report(
    writer: IndexWriter, reader: IndexReader, client: RedisClient
) -> None:
    idle = record("idle", phase="Healthy", load=Load(in_flight=0, max=4))
    await put(writer, idle, record("half", phase="Healthy", load=Load(in_flight=2, max=4)))
    got = await picks(reader, [], 4)
    # idle takes picks until its estimate (0 + picks) passes half's 2 of 4, then they share.
    assert got["idle"] == 3 and got["half"] == 1, got
    gen = await client.get(writer.layout.current)
    estimate = await client.hgetall(writer.layout.key(str(gen), k.PICKS))
    assert estimate[idle.id] == "3"
    await writer.upsert(idle)  # its next report replaces the estimate
    assert await client.hget(writer.layout.key(str(gen), k.PICKS), idle.id) is None


async def test_a_full_agent_gets_no_pick_while_another_is_free(writer: IndexWriter, reader: IndexReader) -> None:
    free = record("free", phase="Healthy", load=Load(in_flight=9, max=10))
    await put(writer, record("full", phase="Healthy", load=Load(in_flight=10, max=10)), free)
    assert await picks(reader, [], 20) == {"free": 20}
    await put(writer, free.model_copy(update={"load": Load(in_flight=12, max=10)}))
    assert sum((await picks(reader, [], 4)).values()) == 4  # all full: still an answer


async def test_without_load_reports_picks_stay_round_robin(writer: IndexWriter, reader: IndexReader) -> None:
    await put(writer, *(record(name, phase="Healthy") for name in "abcd"))
    assert await picks(reader, [], 12) == {"a": 3, "b": 3, "c": 3, "d": 3}


async def test_an_agent_without_a_report_counts_as_half_busy(writer: IndexWriter, reader: IndexReader) -> None:
    reporting = record("reporting", phase="Healthy", load=Load(in_flight=0, max=1000))
    # Its metadata cannot pass for a load report.
    silent = record("silent", phase="Healthy", metadata={"load": {"in_flight": 0, "max": 100000}})
    await put(writer, silent, reporting)
    # A load report in the namespace makes picks load-aware; "silent" counts as half busy.
    assert await picks(reader, [], 12) == {"reporting": 12}
    await put(writer, reporting.model_copy(update={"load": Load(in_flight=900, max=1000)}))
    assert await picks(reader, [], 6) == {"silent": 6}


async def test_a_key_sticks_to_its_agent_while_it_stays_eligible(writer: IndexWriter, reader: IndexReader) -> None:
    ids = await put(writer, *(record(f"agent-{i}", phase="Healthy") for i in range(5)))
    first = await picks(reader, [], 8, key="conversation-17")
    assert len(first) == 1
    (winner,) = first
    # The script and the fallback in the facade hash alike, so a key keeps its agent when
    # Redis is down.
    assert rendezvous("conversation-17", sorted(ids.items()), lambda item: item[1]) == (winner, ids[winner])
    spread = {next(iter(await picks(reader, [], 1, key=f"task-{n}"))) for n in range(40)}
    assert len(spread) >= 4  # keys spread over the agents
    await put(writer, record(winner, phase="Unreachable", agent_id=ids[winner]))
    moved = await picks(reader, [], 4, key="conversation-17")
    assert len(moved) == 1 and winner not in moved
    await put(writer, record(winner, phase="Healthy", agent_id=ids[winner]))
    assert await picks(reader, [], 2, key="conversation-17") == {winner: 2}


async def test_picks_among_given_candidates(writer: IndexWriter, reader: IndexReader) -> None:
    ids = await put(writer, *(record(name, phase="Healthy") for name in "abc"))
    chosen = [ids["a"], ids["c"]]
    got = await picks(reader, [], 10, among=chosen)
    assert set(got) == {"a", "c"}
    # A candidate the index does not know (too new for it) can be picked: its id comes back.
    picked = await reader.route("team-a", "cost", [], seed=5, among=["not-indexed"])
    assert picked is not None and picked.id == "not-indexed" and picked.listed is None


async def test_recovering_leaves_the_degraded_and_full_sets(
    writer: IndexWriter, reader: IndexReader, client: RedisClient
) -> None:
    sick = record("sick", capabilities=["summarize"], phase="Healthy", status=unhealthy(degraded=["summarize"]))
    sick = sick.model_copy(update={"load": Load(in_flight=3, max=3)})
    await put(writer, sick)
    gen = str(await client.get(writer.layout.current))
    degraded = writer.layout.key(gen, k.degraded_capability_set("team-a", "summarize"))
    full = writer.layout.key(gen, k.full_set("team-a"))
    assert await client.sismember(degraded, sick.id) and await client.sismember(full, sick.id)
    await put(writer, record("sick", capabilities=["summarize"], phase="Healthy", agent_id=sick.id))
    assert not await client.sismember(degraded, sick.id) and not await client.sismember(full, sick.id)
