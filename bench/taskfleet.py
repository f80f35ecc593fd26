"""A simulated fleet of workers of two speeds, each task routed by ``GET /agents/route``:
what routing by load does to task latency, against round robin, in one run.

Each worker is an agent registered through the REST API, in a namespace (and stack) of its
own, with ``slots`` tasks at once and a service time per task: half the fleet ``fast_ms``,
the other half ``slowdown`` times slower, each draw half fixed and half exponential
(mean as given). Workers heartbeat through the facade every ``heartbeat_seconds``; in the
``load`` mode each heartbeat reports ``{"in_flight": unfinished tasks, "max": slots}``, in
the ``rr`` mode it reports none (the index then holds no load and the route is round robin).
"Unfinished" counts a task from the moment the worker is handed it, waiting or running:
a worker with a backlog reports itself full, which is what a caller would want to know.

Tasks arrive open-loop at a fixed rate (``bench.load.fixed_rate``); each asks for a
worker, waits for a free slot there and runs. A task's latency is from its due time to
its completion, so the route, the queue and the service all count. A phase ends when the
last task that arrived in it has completed (the backlog drains, its latency counted).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from agent_registry.facade.settings import FacadeSettings
from agent_registry.index import IndexedAgent, IndexReader, IndexUnavailable
from bench.load import Recorder, fixed_rate, ms, percentile, request, timed
from bench.procs import Sampler
from bench.stack import progress

RR = "rr"
LOAD = "load"
MODES = (RR, LOAD)
AGENT_TYPE = "performance"
CAPABILITY = "task"
TIMEOUT = 10.0
# Tasks waiting for a slot are cheap coroutines: the generator must never hold arrivals
# back (that would thin the very backlog being measured).
UNBOUNDED = 1_000_000
READ_YOUR_WRITES_SECONDS = float(FacadeSettings.model_fields["read_your_writes_seconds"].default)


@dataclass
class Worker:
    index: int
    kind: str
    """``fast`` or ``slow``."""
    service_seconds: float
    slots: int
    agent_id: str = ""
    unfinished: int = 0
    """Tasks handed to it and not completed, waiting or running: what its load report says."""
    peak: int = 0
    _free: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._free = asyncio.Semaphore(self.slots)

    def load(self) -> dict[str, int]:
        return {"in_flight": self.unfinished, "max": self.slots}

    async def run(self, rng: random.Random) -> None:
        """One task: wait for a slot, then the service time."""
        self.unfinished += 1
        self.peak = max(self.peak, self.unfinished)
        try:
            async with self._free:
                await asyncio.sleep(self.service_seconds * (0.5 + rng.expovariate(2.0)))
        finally:
            self.unfinished -= 1


@dataclass(frozen=True)
class FleetShape:
    size: int = 20
    slots: int = 4
    fast_ms: float = 40.0
    slowdown: float = 4.0
    heartbeat_seconds: float = 1.0

    @property
    def capacity_per_s(self) -> float:
        """Tasks per second the whole fleet completes when every slot is busy."""
        fast = (self.size + 1) // 2
        slow_ms = self.fast_ms * self.slowdown
        return self.slots * (fast * 1000 / self.fast_ms + (self.size - fast) * 1000 / slow_ms)


class TaskFleet:
    """The workers, their heartbeats, and the phases that send them tasks."""

    def __init__(self, facade: Any, shape: FleetShape, *, seed: int = 1) -> None:
        self.facade = facade
        self.shape = shape
        self.rng = random.Random(seed)
        self.workers = [
            Worker(
                i,
                "fast" if i % 2 == 0 else "slow",
                shape.fast_ms / 1000 * (1 if i % 2 == 0 else shape.slowdown),
                shape.slots,
            )
            for i in range(shape.size)
        ]
        self.by_id: dict[str, Worker] = {}
        self.mode = RR
        self.heartbeats = Recorder("heartbeats")
        self._beating: list[asyncio.Task[None]] = []

    async def register(self) -> None:
        for worker in self.workers:
            body = {
                "name": f"worker-{worker.index:02d}-{worker.kind}",
                "type": AGENT_TYPE,
                "host": f"10.1.0.{worker.index + 1}",
                "port": 9000,
                "capabilities": [CAPABILITY],
            }
            status, answer = await request(self.facade, "POST", "/agents/register", json_body=body, timeout=TIMEOUT)
            if status != 201:
                raise RuntimeError(f"registering {body['name']}: HTTP {status}: {answer.decode()[:300]}")
            worker.agent_id = str(json.loads(answer)["agent_id"])
            self.by_id[worker.agent_id] = worker

    def start_heartbeats(self) -> None:
        self._beating = [asyncio.create_task(self._beat(worker)) for worker in self.workers]

    async def stop_heartbeats(self) -> None:
        for task in self._beating:
            task.cancel()
        await asyncio.gather(*self._beating, return_exceptions=True)
        self._beating = []

    async def _beat(self, worker: Worker) -> None:
        period = self.shape.heartbeat_seconds
        # Spread over the period, so the index never sees the whole fleet change at once.
        next_due = time.monotonic() + period * worker.index / len(self.workers)
        path = f"/agents/{worker.agent_id}/heartbeat"
        while True:
            await asyncio.sleep(max(0.0, next_due - time.monotonic()))
            next_due += period
            body: dict[str, Any] = {"status": "healthy"}
            if self.mode == LOAD:
                body["load"] = worker.load()
            await timed(self.heartbeats, partial(request, self.facade, "POST", path, json_body=body, timeout=TIMEOUT))

    async def switch(self, mode: str, reader: IndexReader, namespace: str, timeout: float = 60.0) -> float:
        """Heartbeats in ``mode`` from now on; returns the seconds until the index shows every
        worker healthy with a load (``load``) or without one (``rr``)."""
        assert all(worker.unfinished == 0 for worker in self.workers), "a phase left tasks behind"
        for worker in self.workers:
            worker.peak = 0
        self.mode = mode
        started = time.monotonic()

        def settled(record: IndexedAgent) -> bool:
            return record.agent.status == "healthy" and (record.load is not None) == (mode == LOAD)

        await until_index(reader, namespace, AGENT_TYPE, set(self.by_id), settled, timeout)
        # One more heartbeat round: every report now carries the mode's shape and a fresh count.
        await asyncio.sleep(self.shape.heartbeat_seconds)
        return time.monotonic() - started

    async def phase(self, name: str, rate: float, seconds: float, sampler: Sampler) -> dict[str, Any]:
        """Tasks at ``rate`` per second for ``seconds``, then until the last of them completes."""
        latencies: dict[str, list[float]] = {"fast": [], "slow": []}
        routes = Recorder(f"{name}-route")
        failed: Counter[str] = Counter()
        params = {"type": AGENT_TYPE, "capability": CAPABILITY}
        beats_before = self.heartbeats.count, sum(self.heartbeats.errors.values())

        async def task(k: int, due: float) -> None:
            routes.send_lags.append(max(0.0, time.monotonic() - due))
            ok, body = await timed(
                routes, lambda: request(self.facade, "GET", "/agents/route", params=params, timeout=TIMEOUT)
            )
            if not ok:
                failed["route"] += 1
                return
            worker = self.by_id.get(str(json.loads(body).get("id")))
            if worker is None:
                failed["unknown_agent"] += 1
                return
            await worker.run(self.rng)
            latencies[worker.kind].append(time.monotonic() - due)

        sampler.mark(name)
        started = time.monotonic()
        fired = await fixed_rate(rate, seconds, task, max_in_flight=UNBOUNDED)
        drained = time.monotonic() - started - seconds
        routes.close()
        sampler.end(name)
        both = latencies["fast"] + latencies["slow"]
        peaks = {kind: max(w.peak for w in self.workers if w.kind == kind) for kind in latencies}
        return {
            "mode": self.mode,
            "offered_per_s": round(rate, 1),
            "tasks": fired,
            "completed": len(both),
            "failed": dict(failed),
            "drain_seconds": round(max(0.0, drained), 1),
            **_latency(both),
            "by_kind": {kind: {"tasks": len(values), **_latency(values)} for kind, values in latencies.items()},
            "fast_share": round(len(latencies["fast"]) / len(both), 3) if both else None,
            "peak_unfinished": peaks,
            "route": routes.summary(),
            "heartbeats": {
                "sent": self.heartbeats.count - beats_before[0],
                "failed": sum(self.heartbeats.errors.values()) - beats_before[1],
            },
            "usage": sampler.summary(name),
        }


def _latency(values: list[float]) -> dict[str, float | None]:
    return {
        "p50_ms": ms(percentile(values, 50)),
        "p95_ms": ms(percentile(values, 95)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(max(values) if values else None),
    }


async def until_index(
    reader: IndexReader,
    namespace: str,
    agent_type: str,
    ids: set[str],
    settled: Callable[[IndexedAgent], bool],
    timeout: float,
) -> None:
    """Until the index holds a record for every id in ``ids`` and each is ``settled``."""
    deadline = time.monotonic() + timeout
    waiting = len(ids)
    while True:
        asked = time.monotonic()
        try:
            records = await reader.query(namespace, agent_type)
        except IndexUnavailable:
            records = []
        # Parsing 10,000 records takes the load generator a while: ask less often then.
        pause = max(0.5, 2 * (time.monotonic() - asked))
        waiting = len(ids) - sum(1 for record in records if record.id in ids and settled(record))
        if waiting <= 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{waiting} of {len(ids)} agents not yet as wanted in the index after {timeout:.0f}s")
        await asyncio.sleep(pause)


def fleet_figures(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode: the tail over its phases (each phase's own figures, averaged), and LOAD / RR."""
    out: dict[str, Any] = {}
    for mode in MODES:
        mine = [p for p in phases if p["mode"] == mode]
        if not mine:
            continue
        out[mode] = {
            key: mean_of([p[key] for p in mine]) for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "fast_share")
        }
    if RR in out and LOAD in out:
        out["load_vs_rr"] = {
            key: ratio_of(out[LOAD][key], out[RR][key]) for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms")
        }
    return out


def mean_of(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 3) if present else None


def ratio_of(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 3) if top is not None and bottom else None


async def run_fleet(
    facade: Any, reader: IndexReader, namespace: str, shape: FleetShape, *, share: float, rounds: int, seconds: float,
    sampler: Sampler,
) -> dict[str, Any]:  # fmt: skip
    """Register the fleet, then ``rounds`` of (``rr``, ``load``) phases of ``seconds`` each."""
    fleet = TaskFleet(facade, shape)
    await fleet.register()
    fleet.start_heartbeats()
    # For a while after a write of its own (the registrations) the facade lists a route's
    # candidates itself before the index picks among them: not the path under test.
    await asyncio.sleep(READ_YOUR_WRITES_SECONDS + 1)
    rate = share * shape.capacity_per_s
    phases: list[dict[str, Any]] = []
    try:
        for round_no in range(1, rounds + 1):
            for mode in MODES:
                switched = await fleet.switch(mode, reader, namespace)
                progress(f"  fleet round {round_no} {mode}: {rate:.0f} tasks/s for {seconds:.0f}s")
                phase = await fleet.phase(f"fleet_{mode}_{round_no}", rate, seconds, sampler)
                phase["round"], phase["switch_seconds"] = round_no, round(switched, 1)
                phases.append(phase)
                progress(
                    f"    p50 {phase['p50_ms']} ms, p99 {phase['p99_ms']} ms, max {phase['max_ms']} ms, "
                    f"fast share {phase['fast_share']}, drained in {phase['drain_seconds']}s, failed {phase['failed']}"
                )
    finally:
        await fleet.stop_heartbeats()
    return {
        "shape": {**asdict(shape), "capacity_per_s": round(shape.capacity_per_s, 1)},
        "offered_share": share,
        "offered_per_s": round(rate, 1),
        "phases": phases,
        "heartbeats": fleet.heartbeats.summary(),
        "figures": fleet_figures(phases),
    }
