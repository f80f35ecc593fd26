"""Routing by load, side by side in one run: what picking the less loaded of two agents
costs ``GET /agents/route`` against round robin, and what it buys a fleet whose workers
differ in speed.

1. Per N (``--agents``), one stack: N agents of one type (capabilities ``plan``, ``report``
   and one of four zones) created through the API server, their Leases created once. The
   agents' timings are long (an hour's interval, a day before Unreachable), so nothing
   heartbeats while a series runs; the only renewals are the switches between rounds.
   Rounds alternate ``rr`` (no agent reports load: round robin) and ``load`` (every Lease
   renewed with a load annotation, in_flight drawn from [0, max - 1], so none is full);
   a switch waits until every record in the index shows it. Each round measures the route
   (``type`` and ``capability=plan``: all N are candidates) in a closed loop and at a fixed
   rate, for its p99. Once per N, the sticky route (``key`` random per request), for
   information. LOAD / RR is judged against "within 10 %": throughput >= 0.9x, p99 <= 1.1x.
2. ``--fleet``: ``bench.taskfleet``, in a stack (and namespace) of its own: simulated
   workers of two speeds, each task routed on its own, ``rr`` and ``load`` phases
   interleaved; task latency and where the tasks went.

    python -m bench.routing --agents 1000 --fleet 20
    python -m bench.routing --agents 10000 --fleet 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_registry.index import IndexReader, KeyLayout, connect, scripts
from agent_registry.index.reader import route_args
from agent_registry.schema.agent import Load
from bench.discovery import Once, add_experiment_arguments, closed_series
from bench.fleet import create_agent_leases, create_agents
from bench.load import Recorder, fixed_rate, request, session, timed
from bench.procs import TICKS, Sampler
from bench.routing_agents import AGENT_TYPE, SHARED_CAPABILITIES, TIMING, OneTypeFleet, Picks, switch
from bench.routing_report import figures, markdown
from bench.run import experiment_meta, other_work
from bench.stack import CLIENT_ACCOUNT, KEY_PREFIX, Stack, progress
from bench.taskfleet import MODES, FleetShape, run_fleet, until_index

NAMESPACE = "routing"
FLEET_NAMESPACE = "taskfleet"
ROUTE = {"type": AGENT_TYPE, "capability": SHARED_CAPABILITIES[0]}
QUERY_CONNECTIONS = 64
TIMEOUT = 10.0


def route_once(facade: Any, picks: Picks, params: Callable[[], dict[str, str]]) -> Once:
    async def once(recorder: Recorder) -> None:
        ok, body = await timed(
            recorder, lambda: request(facade, "GET", "/agents/route", params=params(), timeout=TIMEOUT)
        )
        if ok:
            picks.add(body)

    return once


async def open_loop(name: str, rate: float, seconds: float, once: Once, sampler: Sampler) -> dict[str, Any]:
    """``once`` at ``rate`` per second, on schedule (as ``bench.discovery``'s open loop)."""
    recorder = Recorder(name)

    async def fire(k: int, due: float) -> None:
        recorder.send_lags.append(max(0.0, time.monotonic() - due))
        await once(recorder)

    sampler.mark(name)
    await fixed_rate(rate, seconds, fire, max_in_flight=QUERY_CONNECTIONS)
    recorder.close()
    sampler.end(name)
    return {"offered_per_s": rate, **recorder.summary(), "usage": sampler.summary(name)}


async def sticky_consistent(facade: Any, keys: int = 20, asks: int = 3) -> bool:
    """Whether each of ``keys`` sticky keys, asked ``asks`` times, got one agent every time."""
    for k in range(keys):
        seen = set()
        for _ in range(asks):
            status, body = await request(
                facade, "GET", "/agents/route", params={**ROUTE, "key": f"check-{k}"}, timeout=TIMEOUT
            )
            seen.add(json.loads(body).get("id") if status == 200 else f"http {status}")
        if len(seen) != 1:
            return False
    return True


async def close_all(clients: list[Any]) -> None:
    """HTTP sessions (``close``) and Redis clients (``aclose``)."""
    for client in clients:
        await (client.aclose() if hasattr(client, "aclose") else client.close())


async def script_calls(redis: Any) -> tuple[int, int]:
    """Scripts Redis has run (EVALSHA) and the microseconds they took, as Redis counts them."""
    stats = (await redis.info("commandstats")).get("cmdstat_evalsha") or {}
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def _cpu_times() -> list[int]:
    """The machine's CPU jiffies by kind, all cores: user, nice, system, idle, iowait, irq, softirq, steal."""
    with open("/proc/stat") as fh:
        return [int(v) for v in fh.readline().split()[1:9]]


async def observed(redis: Any, series: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """``series``' figures, with the Redis time per script call meanwhile (nothing else runs
    scripts during a series here: no agent heartbeats, so the operator writes nothing), and
    the cores the hypervisor took (steal) and interrupts used, which no process is charged for."""
    calls, usec = await script_calls(redis)
    cpu, started = _cpu_times(), time.monotonic()
    result = await series
    elapsed, spent = time.monotonic() - started, [b - a for a, b in zip(cpu, _cpu_times(), strict=True)]
    after_calls, after_usec = await script_calls(redis)
    ran = after_calls - calls
    result["redis_us_per_script"] = round((after_usec - usec) / ran, 1) if ran else None
    result["steal_cores"] = round(spent[7] / TICKS / elapsed, 2)
    result["interrupt_cores"] = round((spent[5] + spent[6]) / TICKS / elapsed, 2)
    return result


@dataclass
class Rig:
    """One N's stack as the series use it."""

    fleet: OneTypeFleet
    api: Any
    facade: Any
    redis: Any
    reader: IndexReader
    profile: tuple[Path, int] | None


async def set_up(stack: Stack, n: int, options: argparse.Namespace, result: dict[str, Any], clients: list[Any]) -> Rig:
    """The agents and their Leases, then the operator and the facade, until the index holds
    every agent, healthy. Every client made goes into ``clients``, for the caller to close."""
    stack.start()
    api = session(stack.api_url, token=stack.token, ssl_context=stack.api_ssl_context(), connections=64)
    clients.append(api)
    fleet = OneTypeFleet(n, NAMESPACE, TIMING)
    progress(f"N={n}: creating the agents, then, once the GC watches Agents, their Leases")
    started = time.monotonic()
    result["create_agents"] = await create_agents(api, fleet)
    result["create_agents_seconds"] = round(time.monotonic() - started, 1)
    await asyncio.to_thread(stack.wait_gc_watches_crds)
    account = f"system:serviceaccount:{NAMESPACE}:{CLIENT_ACCOUNT}"
    result["create_leases"] = await create_agent_leases(api, fleet, account)
    stack.start_operator()
    await asyncio.to_thread(stack.wait_operator)
    stack.start_facade(dict(options.facade_setting))
    await asyncio.to_thread(stack.wait_facade)
    facade = session(stack.facade_url, token=stack.token, ssl_context=None, connections=QUERY_CONNECTIONS)
    clients.append(facade)
    redis = connect(stack.redis_url)
    clients.append(redis)
    reader = IndexReader(redis, prefix=KEY_PREFIX)
    await until_index(
        reader, NAMESPACE, AGENT_TYPE, set(fleet.ids), lambda record: record.agent.status == "healthy", timeout=600
    )
    result["setup_seconds"] = round(time.monotonic() - started, 1)
    progress(f"the index holds all {n} agents, healthy, {result['setup_seconds']:.0f}s after the first create")
    facade_pid = stack.facade.pid if stack.facade is not None else None
    profile = (options.profile, facade_pid) if options.profile and facade_pid else None
    return Rig(fleet, api, facade, redis, reader, profile)


async def one_round(
    rig: Rig, mode: str, round_no: int, loads: list[Load | None], rate: float, options: argparse.Namespace,
    sampler: Sampler,
) -> dict[str, Any]:  # fmt: skip
    """The route at ``rate`` on schedule, then in a closed loop, then its script in a closed
    loop straight to Redis (the floor). The open loop first: its picks start from the fresh
    reports (each pick counts against its agent until the next report, and nothing reports
    during the series)."""
    name = f"n{rig.fleet.n}_{mode}_{round_no}"
    entry: dict[str, Any] = {"round": round_no, "mode": mode}
    picks = Picks(rig.fleet, loads)
    once = route_once(rig.facade, picks, lambda: ROUTE)
    entry["open_loop"] = await observed(rig.redis, open_loop(f"{name}_open", rate, options.seconds, once, sampler))
    entry["open_loop"]["picks"] = picks.summary()
    picks = Picks(rig.fleet, loads)
    once = route_once(rig.facade, picks, lambda: ROUTE)
    entry["closed_loop"] = await observed(
        rig.redis, closed_series(f"{name}_closed", options.callers, options.seconds, once, sampler, rig.profile)
    )
    entry["closed_loop"]["picks"] = picks.summary()
    entry["floor"] = await observed(
        rig.redis,
        closed_series(
            f"{name}_floor", options.callers, options.seconds, route_in_redis(rig.redis, rig.fleet.n), sampler
        ),
    )
    return entry


def route_in_redis(redis: Any, n: int) -> Once:
    """The facade's route script, straight to Redis, its answer left unparsed: the floor."""
    layout = KeyLayout(KEY_PREFIX)
    route = redis.register_script(scripts.ROUTE)
    capabilities = [ROUTE["capability"]]
    keys = [layout.current, layout.route_counter(NAMESPACE, AGENT_TYPE, capabilities)]

    async def once(recorder: Recorder) -> None:
        started = time.monotonic()
        try:
            await route(keys=keys, args=route_args(layout, NAMESPACE, AGENT_TYPE, capabilities))
        except Exception as exc:  # counted, as the facade's failures are
            recorder.failure(type(exc).__name__)
            return
        recorder.success(time.monotonic() - started)

    return once


async def measure_n(n: int, options: argparse.Namespace, sampler: Sampler) -> dict[str, Any]:
    stack = Stack(NAMESPACE, sampler)
    result: dict[str, Any] = {"agents": n, "other_work": other_work(), "rounds": []}
    clients: list[Any] = []
    try:
        rig = await set_up(stack, n, options, result, clients)
        rate = options.rate
        if not rate:
            # Half of what a short closed loop serves: an open loop near saturation measures
            # its queue, not the route.
            calibrate = route_once(rig.facade, Picks(rig.fleet, [None] * n), lambda: ROUTE)
            calibration = await closed_series(f"n{n}_calibration", options.callers, 5.0, calibrate, sampler)
            rate = max(10.0, round(calibration["throughput_per_s"] / 2, -1))
            result["calibration"] = calibration
        result["open_loop_rate"] = rate
        rng = random.Random(options.seed)
        loads: list[Load | None] = [None] * n
        for round_no in range(1, options.rounds + 1):
            for mode in MODES:
                loads, took = await switch(rig.api, rig.reader, rig.fleet, mode, rng, options.max_load)
                progress(f"  round {round_no} {mode}: index switched in {took['indexed_seconds']}s")
                entry = await one_round(rig, mode, round_no, loads, rate, options, sampler)
                entry["switch"] = took
                result["rounds"].append(entry)
                closed, opened = entry["closed_loop"], entry["open_loop"]
                progress(
                    f"    closed {closed['throughput_per_s']}/s p50 {closed['p50_ms']} p99 {closed['p99_ms']} ms, "
                    f"{closed['redis_us_per_script']} us in Redis; open {rate:.0f}/s p50 {opened['p50_ms']} "
                    f"p99 {opened['p99_ms']} ms; errors {closed['errors'] or opened['errors'] or 0}; "
                    f"open-loop picks {opened['picks']}"
                )
        picks = Picks(rig.fleet, loads)

        def keyed() -> dict[str, str]:
            return {**ROUTE, "key": f"{random.getrandbits(64):016x}"}

        sticky = await observed(
            rig.redis,
            closed_series(
                f"n{n}_sticky", options.callers, options.seconds, route_once(rig.facade, picks, keyed), sampler
            ),
        )
        result["sticky"] = {"mode": MODES[-1], "closed_loop": {**sticky, "picks": picks.summary()}}
        result["sticky"]["consistent"] = await sticky_consistent(rig.facade)
        progress(
            f"  sticky: {sticky['throughput_per_s']}/s p50 {sticky['p50_ms']} p99 {sticky['p99_ms']} ms, "
            f"{sticky['redis_us_per_script']} us in Redis; consistent: {result['sticky']['consistent']}"
        )
    finally:
        await close_all(clients)
        stack.close()
    result["figures"] = figures(result)
    return result


async def measure_fleet(options: argparse.Namespace, sampler: Sampler) -> dict[str, Any]:
    stack = Stack(FLEET_NAMESPACE, sampler)
    clients: list[Any] = []
    shape = FleetShape(
        options.fleet,
        options.fleet_slots,
        options.fleet_fast_ms,
        options.fleet_slowdown,
        options.fleet_heartbeat_seconds,
    )
    try:
        stack.start()
        stack.start_operator()
        await asyncio.to_thread(stack.wait_operator)
        stack.start_facade(dict(options.facade_setting))
        await asyncio.to_thread(stack.wait_facade)
        # The facade creates each worker's Lease at its first heartbeat.
        await asyncio.to_thread(stack.wait_gc_watches_crds)
        facade = session(stack.facade_url, token=stack.token, ssl_context=None, connections=QUERY_CONNECTIONS)
        clients.append(facade)
        redis = connect(stack.redis_url)
        clients.append(redis)
        reader = IndexReader(redis, prefix=KEY_PREFIX)
        progress(
            f"fleet: {shape.size} workers, {shape.capacity_per_s:.0f} tasks/s at most, "
            f"offered {options.fleet_share:.0%} of it"
        )
        result = await run_fleet(
            facade, reader, FLEET_NAMESPACE, shape, share=options.fleet_share, rounds=options.rounds,
            seconds=options.fleet_seconds, sampler=sampler,
        )  # fmt: skip
    finally:
        await close_all(clients)
        stack.close()
    return {"other_work": other_work(), **result}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="1000", help="comma-separated N; empty: none (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (rr, load), interleaved (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each route series (default %(default)s)")
    parser.add_argument("--callers", type=int, default=16, help="closed-loop callers (default %(default)s)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="open-loop rate, req/s; 0: half what a 5 s closed loop serves"
    )
    parser.add_argument("--max-load", type=int, default=8, help="the load reports' max (default %(default)s)")
    parser.add_argument("--seed", type=int, default=15, help="seeds the reported loads (default %(default)s)")
    parser.add_argument("--fleet", type=int, default=20, help="simulated workers; 0: no fleet (default %(default)s)")
    parser.add_argument("--fleet-seconds", type=float, default=60.0, help="arrivals per phase, s (default %(default)s)")
    parser.add_argument(
        "--fleet-share", type=float, default=0.7, help="offered share of capacity (default %(default)s)"
    )
    parser.add_argument("--fleet-slots", type=int, default=4, help="tasks a worker runs at once (default %(default)s)")
    parser.add_argument(
        "--fleet-fast-ms", type=float, default=40.0, help="fast workers' mean task (default %(default)s)"
    )
    parser.add_argument("--fleet-slowdown", type=float, default=4.0, help="slow / fast task time (default %(default)s)")
    parser.add_argument(
        "--fleet-heartbeat-seconds", type=float, default=1.0, help="workers' heartbeat period (default %(default)s)"
    )
    add_experiment_arguments(parser, name_help="file name without extension; default <date>-routing-...")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    sizes = [int(part) for part in options.agents.split(",") if part.strip()]
    words = [f"n{'-'.join(str(n) for n in sizes)}"] if sizes else []
    words += [f"fleet{options.fleet}"] if options.fleet else []
    name = options.name or "-".join([datetime.now(UTC).strftime("%Y-%m-%d"), "routing", *words])
    options.results_dir.mkdir(parents=True, exist_ok=True)
    path = options.results_dir / f"{name}.json"
    results: dict[str, Any] = {
        "meta": experiment_meta("bench.routing", argv, options),
        "routes": [],
        "fleet": None,
    }

    def write() -> None:
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        path.with_suffix(".md").write_text(markdown(results))

    progress(f"results go to {path} (and .md)")
    sampler = Sampler().start()
    sampler.watch("bench", os.getpid())  # the load generator shares the 2 cores
    failed = False
    try:
        for n in sizes:
            try:
                results["routes"].append(asyncio.run(measure_n(n, options, sampler)))
            except Exception as exc:  # the other parts still run; the error is in the results
                failed = True
                results["routes"].append({"agents": n, "error": f"{type(exc).__name__}: {exc}"})
                progress(f"N={n} failed: {exc!r}")
            write()
        if options.fleet:
            try:
                results["fleet"] = asyncio.run(measure_fleet(options, sampler))
            except Exception as exc:
                failed = True
                results["fleet"] = {"error": f"{type(exc).__name__}: {exc}"}
                progress(f"the fleet failed: {exc!r}")
            write()
    except KeyboardInterrupt:
        progress("interrupted")
        write()
        return 130
    finally:
        sampler.stop()
    print(path.with_suffix(".md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
