"""Discovery at N agents, side by side in one run: what each read costs through the facade,
the same lookups issued straight to Redis (the physical floor), and what a query storm
does to the heartbeats and registrations served by the same facade.

Agents heartbeat all along (even ones through the facade, odd ones renewing their Leases
directly, as ``python -m bench`` does); the facade authenticates every request.

1. ``idle``: heartbeats and a trickle of registrations through the facade, no queries:
   their idle p50/p99.
2. ``closed_loop``: per read, ``--callers`` callers back to back for ``--seconds``
   (``GET /agents/{id}``, ``/agents/type/{t}``, ``/agents``, the selective filter, the
   route); then the same lookups as the index's own scripts, straight to Redis, without
   parsing the answer (the floor).
3. ``open_loop``: the selective filter and the route at ``--rate`` per second, on schedule
   (a late answer delays nothing: coordinated omission accounted for).
4. ``storm``: the selective filter offered at twice the closed-loop throughput, with the
   heartbeats and registrations of step 1 going on: their p99 against idle, failures,
   queries answered 429, agents turned Unreachable.

    python -m bench.discovery --agents 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_registry.index import keys as k
from agent_registry.index import reader, scripts
from agent_registry.index.reader import connect
from bench.fleet import LEASE, Fleet, Heartbeats, Timing, create_agent_leases, create_agents
from bench.load import Recorder, closed_loop, fixed_rate, request, session, timed
from bench.procs import Sampler
from bench.report import _fmt
from bench.run import RESULTS, machine, uncommitted
from bench.stack import CLIENT_ACCOUNT, KEY_PREFIX, Stack, metric_sum, progress

NAMESPACE = "bench"
QUERY_CONNECTIONS = 64
STORM_CONNECTIONS = 256
TIMEOUT = 10.0
# The baseline: `make run`, no auth, 16 callers, 10 s, N = 1,000 (closed loop, req/s).
BASELINE = {"by_id": 3093.0, "type": 406.0, "all": 73.0, "filtered": 1017.0, "route": 1726.0}
GOALS = {"by_id": 2.0, "type": 5.0, "all": 10.0, "filtered": 5.0, "route": 5.0}

Once = Callable[[Recorder], Awaitable[None]]


def _reads(fleet: Fleet, facade: Any) -> dict[str, Once]:
    """Each workload as one call through the facade."""
    selective = fleet.selective_query

    def get(path: str, params: dict[str, str] | None = None) -> Once:
        async def once(recorder: Recorder) -> None:
            await timed(recorder, lambda: request(facade, "GET", path, params=params, timeout=TIMEOUT))

        return once

    async def by_id(recorder: Recorder) -> None:
        agent_id = fleet.ids[random.randrange(fleet.n)]
        await timed(recorder, lambda: request(facade, "GET", f"/agents/{agent_id}", timeout=TIMEOUT))

    return {
        "by_id": by_id,
        "type": get(f"/agents/type/{fleet.types[0]}"),
        "all": get("/agents"),
        "filtered": get("/agents", selective),
        "route": get("/agents/route", selective),
    }


def _floor(fleet: Fleet, redis: Any) -> dict[str, Once]:
    """The same lookups as the index's scripts, straight to Redis, the answer left unparsed."""
    layout = k.KeyLayout(KEY_PREFIX)
    get, query = (redis.register_script(s) for s in (scripts.GET, scripts.QUERY))
    selective = fleet.selective_query
    gens = layout.generations

    def timed_call(call: Callable[[], Awaitable[Any]]) -> Once:
        async def once(recorder: Recorder) -> None:
            started = time.monotonic()
            try:
                await call()
            except Exception as exc:  # counted, as the facade's failures are
                recorder.failure(type(exc).__name__)
                return
            recorder.success(time.monotonic() - started)

        return once

    def sets(agent_type: str | None, capabilities: list[str], status: str | None = None) -> list[str]:
        return k.query_sets(NAMESPACE, agent_type, capabilities, status)

    filtered = sets(selective["type"], [selective["capability"]])
    floor: dict[str, Once] = {
        "by_id": timed_call(lambda: get(keys=[layout.current], args=[gens, fleet.ids[random.randrange(fleet.n)]])),
        "type": timed_call(lambda: query(keys=[layout.current], args=[gens, "records", *sets(fleet.types[0], [])])),
        "all": timed_call(lambda: query(keys=[layout.current], args=[gens, "records", *sets(None, [])])),
        "filtered": timed_call(lambda: query(keys=[layout.current], args=[gens, "records", *filtered])),
    }
    if hasattr(scripts, "ROUTE"):  # a facade from before routing by the index has no route script
        route = redis.register_script(scripts.ROUTE)
        wanted = [selective["capability"]]
        counter = layout.route_counter(NAMESPACE, selective["type"], wanted)
        keys = [layout.current, counter]
        if hasattr(reader, "route_args"):  # a fresh seed per call, as the facade draws one per request
            floor["route"] = timed_call(
                lambda: route(keys=keys, args=reader.route_args(layout, NAMESPACE, selective["type"], wanted))
            )
        else:  # before routing by load, the script took the generations, the counter's TTL and the sets
            healthy = sets(selective["type"], wanted, "healthy")
            floor["route"] = timed_call(lambda: route(keys=keys, args=[gens, 3600, *healthy]))
    return floor


async def closed_series(
    name: str, callers: int, seconds: float, once: Once, sampler: Sampler, profile: tuple[Path, int] | None = None
) -> dict[str, Any]:
    """``callers`` back to back for ``seconds``; with ``profile`` (a directory, a pid), py-spy
    samples that process meanwhile (CPU only: ``--gil``) into ``<dir>/<name>.txt``."""
    recorder = Recorder(name)
    spy = None
    if profile is not None:
        directory, pid = profile
        directory.mkdir(parents=True, exist_ok=True)
        argv = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid)]
        argv += ["--duration", str(max(1, int(seconds))), "--format", "raw", "--rate", "100", "--gil"]
        argv += ["--nonblocking", "--output", str(directory / f"{name}.txt")]
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sampler.mark(name)
    await closed_loop(callers, seconds, lambda: once(recorder))
    recorder.close()
    sampler.end(name)
    if spy is not None:
        await asyncio.to_thread(spy.wait, 60)
    return {**recorder.summary(), "usage": sampler.summary(name)}


class Registrations:
    """New agents registered through the facade at a steady rate, each unregistered once
    registered (they never heartbeat: left alone they would go Unreachable and be counted)."""

    def __init__(self, facade: Any, rate: float) -> None:
        self.facade = facade
        self.rate = rate
        self.count = 0

    async def run(self, seconds: float) -> dict[str, Any]:
        recorder = Recorder("registrations")

        async def fire(k: int, due: float) -> None:
            self.count += 1
            body = {
                "name": f"reg-{self.count:06d}",
                "type": "performance",
                "host": "10.0.0.9",
                "port": 8000,
                "capabilities": ["churn"],
            }
            recorder.send_lags.append(max(0.0, time.monotonic() - due))
            ok, answer = await timed(
                recorder,
                lambda: request(self.facade, "POST", "/agents/register", json_body=body, timeout=TIMEOUT),
                expect=201,
            )
            if ok:
                agent_id = json.loads(answer)["agent_id"]
                await request(self.facade, "POST", f"/agents/{agent_id}/unregister", timeout=TIMEOUT)

        await fixed_rate(self.rate, seconds, fire)
        recorder.close()
        return recorder.summary()


async def _beside_writes(
    heartbeats: Heartbeats, registrations: Registrations, seconds: float, load: Awaitable[Any] | None = None
) -> dict[str, Any]:
    """Heartbeats and registrations for ``seconds`` (with ``load`` running alongside)."""
    heartbeats.new_phase()
    tasks = [asyncio.ensure_future(registrations.run(seconds))]
    if load is not None:
        tasks.append(asyncio.ensure_future(load))
    done = await asyncio.gather(*tasks)
    recorders = heartbeats.new_phase()
    return {
        "heartbeats_facade": recorders["facade"].summary(),
        "heartbeats_direct": recorders["direct"].summary(),
        "registrations": done[0],
        **({"load": done[1]} if load is not None else {}),
    }


async def measure(options: argparse.Namespace) -> dict[str, Any]:
    n = options.agents
    sampler = Sampler().start()
    stack = Stack(NAMESPACE, sampler)
    result: dict[str, Any] = {"agents": n, "options": {key: str(value) for key, value in vars(options).items()}}
    heartbeats: Heartbeats | None = None
    clients: list[Any] = []
    try:
        stack.start()
        ssl_context = stack.api_ssl_context()
        api = session(stack.api_url, token=stack.token, ssl_context=ssl_context, connections=256)
        control = session(stack.api_url, token=stack.token, ssl_context=ssl_context, connections=16)
        clients += [api, control]
        fleet = Fleet(n, NAMESPACE, Timing(interval=options.interval, unreachable_after=options.interval * 3 // 2))
        progress(f"creating {n} agents and, once the GC watches Agents, their Leases")
        await create_agents(control, fleet)
        await asyncio.to_thread(stack.wait_gc_watches_crds)
        await create_agent_leases(control, fleet, f"system:serviceaccount:{NAMESPACE}:{CLIENT_ACCOUNT}")
        heartbeats = Heartbeats(fleet, None, api)
        heartbeats.route, heartbeats.writer = "direct", LEASE
        heartbeats.start()
        stack.start_operator()
        await asyncio.to_thread(stack.wait_operator)
        stack.start_facade(dict(options.facade_setting))
        await asyncio.to_thread(stack.wait_facade)
        facade = session(stack.facade_url, token=stack.token, ssl_context=None, connections=QUERY_CONNECTIONS)
        writes = session(stack.facade_url, token=stack.token, ssl_context=None, connections=64)
        # More connections than the facade admits queries at once, so that a storm reaches it.
        crowd = session(stack.facade_url, token=stack.token, ssl_context=None, connections=STORM_CONNECTIONS)
        clients += [facade, writes, crowd]
        reads = _reads(fleet, facade)
        await _until_indexed(facade, fleet)
        heartbeats.facade = writes
        heartbeats.route = "mixed"
        progress(f"heartbeats through the facade for one interval ({options.interval}s) before measuring")
        await asyncio.sleep(options.interval + 1)
        registrations = Registrations(writes, options.registration_rate)
        unreachable_before = metric_sum(
            await asyncio.to_thread(stack.operator_metrics), "agent_registry_phase_transitions_total",
            to_phase="Unreachable",
        )  # fmt: skip

        progress(f"idle: heartbeats and {options.registration_rate:.0f} registrations/s, no queries")
        result["idle"] = await _beside_writes(heartbeats, registrations, options.seconds)

        result["closed_loop"] = {}
        facade_pid = stack.facade.pid if stack.facade is not None else None
        profile = (options.profile, facade_pid) if options.profile and facade_pid else None
        for name, once in reads.items():
            series = await closed_series(f"facade_{name}", options.callers, options.seconds, once, sampler, profile)
            result["closed_loop"][name] = series
            progress(f"  {name}: {series['throughput_per_s']}/s, p50 {series['p50_ms']} ms, p99 {series['p99_ms']} ms")
        redis = connect(stack.redis_url)
        result["floor"] = {}
        for name, once in _floor(fleet, redis).items():
            series = await closed_series(f"redis_{name}", options.callers, options.seconds, once, sampler)
            result["floor"][name] = series
            progress(f"  floor {name}: {series['throughput_per_s']}/s, p50 {series['p50_ms']} ms")
        await redis.aclose()

        result["open_loop"] = {}
        for name in ("filtered", "route"):
            recorder = Recorder(f"open_{name}")

            async def fire(k: int, due: float, recorder: Recorder = recorder, once: Once = reads[name]) -> None:
                recorder.send_lags.append(max(0.0, time.monotonic() - due))
                await once(recorder)

            sampler.mark(f"open_{name}")
            await fixed_rate(options.rate, options.seconds, fire, max_in_flight=QUERY_CONNECTIONS)
            recorder.close()
            sampler.end(f"open_{name}")
            result["open_loop"][name] = {
                "offered_per_s": options.rate,
                **recorder.summary(),
                "usage": sampler.summary(f"open_{name}"),
            }
            series = result["open_loop"][name]
            progress(
                f"  open loop {name} at {options.rate:.0f}/s: p99 {series['p99_ms']} ms, errors {series['errors']}"
            )

        capacity = result["closed_loop"]["filtered"]["throughput_per_s"] or 100.0
        storm_rate = 2 * capacity
        progress(f"storm: the selective filter offered at {storm_rate:.0f}/s (twice what the facade served)")
        rejected_before = metric_sum(
            await asyncio.to_thread(stack.facade_metrics), "agent_registry_facade_queries_rejected_total"
        )
        storm = Recorder("storm")
        storm_read = _reads(fleet, crowd)["filtered"]

        async def storm_fire(k: int, due: float) -> None:
            storm.send_lags.append(max(0.0, time.monotonic() - due))
            await storm_read(storm)

        async def storm_load() -> dict[str, Any]:
            await fixed_rate(storm_rate, options.seconds, storm_fire, max_in_flight=STORM_CONNECTIONS)
            storm.close()
            return {"offered_per_s": storm_rate, **storm.summary()}

        sampler.mark("storm")
        result["storm"] = await _beside_writes(heartbeats, registrations, options.seconds, storm_load())
        sampler.end("storm")
        result["storm"]["usage"] = sampler.summary("storm")
        result["storm"]["queries_rejected_429"] = int(
            metric_sum(await asyncio.to_thread(stack.facade_metrics), "agent_registry_facade_queries_rejected_total")
            - rejected_before
        )
        await asyncio.sleep(options.interval)  # the storm's last heartbeats judged before counting
        result["unreachable_transitions"] = int(
            metric_sum(
                await asyncio.to_thread(stack.operator_metrics), "agent_registry_phase_transitions_total",
                to_phase="Unreachable",
            ) - unreachable_before
        )  # fmt: skip
        result["facade_rss_mb_peak"] = max((s.rss.get("facade", 0.0) for s in sampler.samples), default=None)
    finally:
        if heartbeats is not None:
            await heartbeats.stop()
        for client in clients:
            await client.close()
        stack.close()
        sampler.stop()
    result["figures"] = figures(result)
    return result


async def _until_indexed(facade: Any, fleet: Fleet, timeout: float = 600.0) -> None:
    """Until the facade lists every agent (the index is complete). Before that its answers
    come from the API server (a LIST of every agent), which can take long at 10,000."""
    deadline = time.monotonic() + timeout
    listed = 0
    while time.monotonic() < deadline:
        try:
            status, body = await request(facade, "GET", "/agents", timeout=60)
        except (TimeoutError, aiohttp.ClientError):
            status, body = 0, b""
        listed = json.loads(body).get("count", 0) if status == 200 else 0
        if listed >= fleet.n:
            progress(f"the facade lists all {fleet.n} agents")
            return
        await asyncio.sleep(2)
    raise TimeoutError(f"the facade lists {listed} of {fleet.n} agents after {timeout:.0f}s")


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's figures: throughput against its baseline, p50 against the floor, fairness."""
    closed, floor = result.get("closed_loop", {}), result.get("floor", {})
    out: dict[str, Any] = {"throughput_vs_baseline": {}, "p50_vs_floor": {}}
    for name, series in closed.items():
        served = series.get("throughput_per_s")
        out["throughput_vs_baseline"][name] = round(served / BASELINE[name], 2) if served else None
        base = (floor.get(name) or {}).get("p50_ms")
        out["p50_vs_floor"][name] = round(series["p50_ms"] / base, 2) if base and series.get("p50_ms") else None
    idle, storm = result.get("idle", {}), result.get("storm", {})
    for kind in ("heartbeats_facade", "registrations"):
        quiet, busy = (idle.get(kind) or {}).get("p99_ms"), (storm.get(kind) or {}).get("p99_ms")
        out[f"{kind}_p99_storm_vs_idle"] = round(busy / quiet, 2) if quiet and busy else None
    return out


def markdown(result: dict[str, Any], command: str) -> str:
    f = result["figures"]
    lines = [
        f"# Discovery, N = {result['agents']:,}",
        "",
        f"Command: `{command}`",
        "",
        "| read | facade req/s | / baseline (goal) | p50 / p99, ms | Redis floor req/s | floor p50, ms "
        "| facade p50 / floor (goal 3) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, series in result.get("closed_loop", {}).items():
        base = result["floor"].get(name, {})
        lines.append(
            f"| {name} | {_fmt(series['throughput_per_s'])} | {_fmt(f['throughput_vs_baseline'][name])} "
            f"({GOALS[name]:g}x) | {_fmt(series['p50_ms'])} / {_fmt(series['p99_ms'])} "
            f"| {_fmt(base.get('throughput_per_s'))} | {_fmt(base.get('p50_ms'))} | {_fmt(f['p50_vs_floor'][name])} |"
        )
    lines += [
        "",
        "| open loop | offered/s | served/s | p50 / p99, ms (goal p99 10) | errors |",
        "|---|---|---|---|---|",
    ]
    for name, series in result.get("open_loop", {}).items():
        lines.append(
            f"| {name} | {_fmt(series['offered_per_s'])} | {_fmt(series['throughput_per_s'])} "
            f"| {_fmt(series['p50_ms'])} / {_fmt(series['p99_ms'])} | {dict(series['errors']) or 0} |"
        )
    idle, storm = result.get("idle", {}), result.get("storm", {})
    load = storm.get("load", {})
    lines += [
        "",
        f"Storm: the selective filter offered at {_fmt(load.get('offered_per_s'))}/s; served "
        f"{_fmt(load.get('throughput_per_s'))}/s, answered 429: {storm.get('queries_rejected_429')}, "
        f"errors {dict(load.get('errors') or {})}.",
        "",
        "| writes beside it | idle p50 / p99, ms | storm p50 / p99, ms | storm p99 / idle p99 (goal 3) | failed |",
        "|---|---|---|---|---|",
    ]
    for kind in ("heartbeats_facade", "heartbeats_direct", "registrations"):
        quiet, busy = idle.get(kind, {}), storm.get(kind, {})
        ratio = f.get(f"{kind}_p99_storm_vs_idle")
        lines.append(
            f"| {kind} | {_fmt(quiet.get('p50_ms'))} / {_fmt(quiet.get('p99_ms'))} "
            f"| {_fmt(busy.get('p50_ms'))} / {_fmt(busy.get('p99_ms'))} | {_fmt(ratio)} "
            f"| {sum((busy.get('errors') or {}).values())} |"
        )
    lines += [
        "",
        f"Agents turned Unreachable over the run: {result.get('unreachable_transitions')}; "
        f"facade RSS peak {_fmt(result.get('facade_rss_mb_peak'))} MB.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each series")
    parser.add_argument("--callers", type=int, default=16, help="closed-loop callers")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop offered rate, req/s")
    parser.add_argument("--interval", type=int, default=30, help="agents' heartbeat interval, s")
    parser.add_argument("--registration-rate", type=float, default=5.0, help="registrations per second beside")
    add_experiment_arguments(parser)
    return parser.parse_args(argv)


def add_experiment_arguments(parser: argparse.ArgumentParser, name_help: str | None = None) -> None:
    """What the discovery and routing benchmarks both take: extra facade settings, py-spy,
    where the results go and their name."""
    parser.add_argument(
        "--facade-setting",
        action="append",
        default=[],
        type=lambda text: tuple(text.split("=", 1)),
        metavar="FIELD=VALUE",
        help="an extra facade setting by field name (for experiments)",
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the facade in each closed loop, into DIR")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--name", default=None, help=name_help)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    command = "python -m bench.discovery " + " ".join(sys.argv[1:] if argv is None else argv)
    result = asyncio.run(measure(options))
    result["meta"] = {"command": command.strip(), "machine": machine(), "uncommitted": uncommitted()}
    name = options.name or f"discovery-n{options.agents}"
    options.results_dir.mkdir(parents=True, exist_ok=True)
    (options.results_dir / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = markdown(result, command.strip())
    (options.results_dir / f"{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
