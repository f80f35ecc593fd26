"""Under a query storm, excess reads get 429 at once and writes are never refused."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx

from agent_registry.localcluster.launcher import FacadeProcess
from facade_harness import registration


def storm_of(facade: FacadeProcess) -> tuple[list[httpx.Response], list[httpx.Response]]:
    """80 reads and 12 heartbeats at once; their answers."""
    with facade.client() as http:
        ids = [http.post("/agents/register", json=registration(f"storm-{i}")).json()["agent_id"] for i in range(3)]

    async def storm() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=facade.url, timeout=30) as client:
            # No operator here, so no index: every read is a LIST against the API server,
            # slow enough that far more than two are in progress at once.
            queries = [client.get("/agents") for _ in range(80)]
            writes = [client.post(f"/agents/{ids[i % 3]}/heartbeat", json={"status": "healthy"}) for i in range(12)]
            answers = await asyncio.gather(*queries, *writes)
            return list(answers[:80]), list(answers[80:])

    return asyncio.run(storm())


def test_a_query_storm_gets_429_while_heartbeats_all_succeed(make_facade: Callable[..., FacadeProcess]) -> None:
    facade = make_facade(max_concurrent_queries=2, max_queued_queries=0)
    queries, writes = storm_of(facade)
    statuses = Counter(r.status_code for r in queries)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] > 0 and statuses[200] >= 2, statuses
    refused = next(r for r in queries if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert "queries in progress" in refused.json()["error"]
    assert [r.status_code for r in writes] == [200] * 12, [r.text for r in writes if r.status_code != 200]
    assert f"agent_registry_facade_queries_rejected_total {float(statuses[429])}" in facade.metrics()


def test_reads_beyond_the_limit_wait_for_a_turn_instead_of_failing(make_facade: Callable[..., FacadeProcess]) -> None:
    facade = make_facade(max_concurrent_queries=2, max_queued_queries=100, query_queue_seconds=30)
    queries, writes = storm_of(facade)
    assert [r.status_code for r in queries] == [200] * 80, Counter(r.status_code for r in queries)
    assert all(r.json()["count"] == 3 for r in queries)
    assert [r.status_code for r in writes] == [200] * 12
    assert "agent_registry_facade_queries_rejected_total 0.0" in facade.metrics()
