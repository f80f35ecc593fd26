"""The routing benchmark's N agents (``bench.routing``): one type, load reported by Lease
renewal as a sidecar reports it, and a tally of what the route picked among them."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from agent_registry.index import IndexReader
from agent_registry.kubeapi import paths
from agent_registry.schema import lease
from agent_registry.schema.agent import Load
from bench.fleet import MERGE_PATCH, SIDECAR_PARAMS, SOURCE, Fleet, Timing
from bench.load import Recorder, request, timed
from bench.taskfleet import LOAD, until_index

AGENT_TYPE = "performance"
SHARED_CAPABILITIES = ("plan", "report")
ZONES = 4
TIMING = Timing(interval=3600, unreachable_after=86400, gc_after=86400)
"""Nothing heartbeats on its own during a run: the only renewals are the switches."""


@dataclass
class OneTypeFleet(Fleet):
    """``bench.fleet.Fleet`` with every agent of one type, all with the shared capabilities."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.types = [AGENT_TYPE] * self.n
        self.capabilities = [[*SHARED_CAPABILITIES, f"zone-{i % ZONES}"] for i in range(self.n)]


class Picks:
    """What the route answered: how often each agent, the load it had reported, and any
    answer that cannot be right (an unknown id, another type, not healthy)."""

    def __init__(self, fleet: Fleet, loads: list[Load | None]) -> None:
        self.position = {agent_id: i for i, agent_id in enumerate(fleet.ids)}
        self.loads = loads
        self.counts: Counter[int] = Counter()
        self.odd: Counter[str] = Counter()

    def add(self, body: bytes) -> None:
        answer = json.loads(body)
        i = self.position.get(answer.get("id"))
        if i is None:
            self.odd["unknown id"] += 1
            return
        if answer.get("type") != AGENT_TYPE or answer.get("status") != "healthy":
            self.odd[f"{answer.get('type')}/{answer.get('status')}"] += 1
        self.counts[i] += 1

    def summary(self) -> dict[str, Any]:
        total = sum(self.counts.values())
        out: dict[str, Any] = {
            "picks": total,
            "agents_picked": len(self.counts),
            "most_picks_of_one_agent": max(self.counts.values(), default=0),
            "odd_answers": dict(self.odd),
        }
        reported = {i: load.in_flight for i, load in enumerate(self.loads) if load is not None}
        if reported and total:
            # What the picked agents had reported, against the fleet: below it, picks follow load.
            picked = sum(reported.get(i, 0) * count for i, count in self.counts.items())
            out["picked_in_flight_mean"] = round(picked / total, 3)
            out["fleet_in_flight_mean"] = round(sum(reported.values()) / len(reported), 3)
            agents, picks = Counter(reported.values()), Counter[int]()
            for i, count in self.counts.items():
                picks[reported.get(i, 0)] += count
            out["picks_per_agent_by_in_flight"] = {f: round(picks[f] / agents[f], 2) for f in sorted(agents)}
        return out


async def renew_leases(api: Any, fleet: Fleet, loads: list[Load | None], concurrency: int = 32) -> dict[str, Any]:
    """Every agent's Lease renewed as its sidecar renews it (``schema.lease.renewal_patch``),
    with ``loads[i]`` as agent i's load annotation (None removes it)."""
    recorder = Recorder("renew")
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(fleet.n):
        queue.put_nowait(i)

    async def renew(i: int) -> None:
        name = fleet.names[i]
        spec = lease.renewal(SOURCE, fleet.timing.unreachable_after, datetime.now(UTC))
        patch = lease.renewal_patch(name, fleet.uids[i], spec, load=loads[i])
        path = paths.leases(fleet.namespace, lease.lease_name(name))
        call = partial(request, api, "PATCH", path, json_body=patch, content_type=MERGE_PATCH, params=SIDECAR_PARAMS)
        for _ in range(5):
            ok, _answer = await timed(recorder, call)
            if ok:
                return
            await asyncio.sleep(0.5)

    async def worker() -> None:
        while not queue.empty():
            await renew(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    recorder.close()
    return recorder.summary()


async def switch(
    api: Any, reader: IndexReader, fleet: Fleet, mode: str, rng: random.Random, max_load: int
) -> tuple[list[Load | None], dict[str, Any]]:
    """Renew every Lease in ``mode`` and wait until the index shows each agent's load (or none)."""
    if mode == LOAD:
        loads: list[Load | None] = [Load(in_flight=rng.randrange(max_load), max=max_load) for _ in range(fleet.n)]
    else:
        loads = [None] * fleet.n
    started = time.monotonic()
    renewals = await renew_leases(api, fleet, loads)
    renewed = time.monotonic() - started
    expected = dict(zip(fleet.ids, loads, strict=True))
    await until_index(
        reader,
        fleet.namespace,
        AGENT_TYPE,
        set(fleet.ids),
        lambda record: record.agent.status == "healthy" and record.load == expected[record.id],
        timeout=600,
    )
    took = {
        "renew_seconds": round(renewed, 1),
        "indexed_seconds": round(time.monotonic() - started, 1),
        "renewals_ok": renewals["ok"],
        "renewals_failed": sum(renewals["errors"].values()),
    }
    return loads, took
