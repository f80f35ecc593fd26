"""The route script alone, against a Redis of its own: its time per call as Redis counts it
(``INFO commandstats``), round robin against the load pick, interleaved, with the time of
each command it issues. No HTTP, no API server, one caller at a time: what is left of the
machine's noise is the hypervisor's.

The index holds N agents shaped as ``bench.routing``'s (one type, every one a candidate),
written by the operator's own writer; in the ``load`` mode each reports a load drawn from
[0, max - 1], as there.

    python -m bench.route_script --agents 1000,10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_registry.index import IndexedAgent, IndexWriter, connect, record_from_resource, scripts
from agent_registry.index.reader import route_args
from agent_registry.localcluster.redis_server import LocalRedis
from agent_registry.schema.agent import Load, Phase
from bench.report import _fmt
from bench.routing_agents import AGENT_TYPE, SHARED_CAPABILITIES, TIMING, OneTypeFleet
from bench.run import RESULTS, commit, machine
from bench.stack import KEY_PREFIX, progress
from bench.taskfleet import LOAD, MODES, RR, mean_of, ratio_of

NAMESPACE = "routing"
WANTED = [SHARED_CAPABILITIES[0]]


def records(fleet: OneTypeFleet, loads: list[Load | None]) -> list[IndexedAgent]:
    now = datetime.now(UTC)
    out = []
    for i in range(fleet.n):
        resource = fleet.body(i)
        resource["metadata"] |= {"namespace": NAMESPACE, "uid": f"uid-{i}", "resourceVersion": str(i + 1)}
        out.append(record_from_resource(resource, phase=Phase.HEALTHY, last_seen=now, load=loads[i]))
    return out


async def commandstats(redis: Any) -> dict[str, tuple[int, int]]:
    return {name: (int(v["calls"]), int(v["usec"])) for name, v in (await redis.info("commandstats")).items()}


async def measure(redis: Any, writer: IndexWriter, n: int, calls: int, rounds: int, seed: int) -> dict[str, Any]:
    fleet = OneTypeFleet(n, NAMESPACE, TIMING)
    rng = random.Random(seed)
    route = redis.register_script(scripts.ROUTE)
    layout = writer.layout
    keys = [layout.current, layout.route_counter(NAMESPACE, AGENT_TYPE, WANTED)]
    series = []
    for round_no in range(1, rounds + 1):
        for mode in MODES:
            loads = [Load(in_flight=rng.randrange(8), max=8) if mode == LOAD else None for _ in range(n)]
            await writer.replace_all(records(fleet, loads))
            await redis.config_resetstat()
            started = time.perf_counter()
            for _ in range(calls):
                await route(keys=keys, args=route_args(layout, NAMESPACE, AGENT_TYPE, WANTED))
            wall = time.perf_counter() - started
            stats = await commandstats(redis)
            ran, usec = stats.get("cmdstat_evalsha", (0, 0))
            inner = {
                name.removeprefix("cmdstat_"): round(u / ran, 1)
                for name, (c, u) in stats.items()
                # At least every other call: the script's own commands, not the set-up's.
                if 2 * c >= ran and name not in ("cmdstat_evalsha", "cmdstat_config|resetstat")
            }
            entry = {
                "round": round_no,
                "mode": mode,
                "us_per_call": round(usec / ran, 1) if ran else None,
                "round_trip_us": round(wall / calls * 1e6, 1),
                "commands_us_per_call": inner,
            }
            series.append(entry)
            progress(f"  N={n} round {round_no} {mode}: {entry['us_per_call']} us in Redis; {inner}")
    by_mode = {mode: mean_of([s["us_per_call"] for s in series if s["mode"] == mode]) for mode in MODES}
    ratio = ratio_of(by_mode[LOAD], by_mode[RR])
    return {"agents": n, "calls": calls, "series": series, "us_per_call": by_mode, "load_vs_rr": ratio}


async def run(options: argparse.Namespace) -> list[dict[str, Any]]:
    server = LocalRedis().start()
    try:
        redis = connect(server.url)
        writer = IndexWriter(redis, prefix=KEY_PREFIX)
        out = []
        for n in options.agents:
            calls = max(50, options.calls // max(1, n // 1000))  # a call at 10,000 takes 10 ms and more
            out.append(await measure(redis, writer, n, calls, options.rounds, options.seed))
        await redis.aclose()
        return out
    finally:
        server.close()


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# The route script alone",
        "",
        f"Command: `{results['command']}`; commit {results['commit']}.",
        "",
        "| N | calls per series | rr, us per call (by round) | load, us per call (by round) | load / rr |",
        "|---|---|---|---|---|",
    ]
    for n in results["runs"]:
        cells = [", ".join(_fmt(s["us_per_call"]) for s in n["series"] if s["mode"] == mode) for mode in MODES]
        lines.append(f"| {n['agents']:,} | {n['calls']:,} | {cells[0]} | {cells[1]} | {_fmt(n['load_vs_rr'])} |")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.route_script", description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=lambda t: [int(p) for p in t.split(",")], default=[1000, 10000])
    parser.add_argument("--calls", type=int, default=2000, help="calls per series at N = 1,000 (fewer above)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=15, help="seeds the reported loads")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--name", default=None)
    options = parser.parse_args(argv)
    command = "python -m bench.route_script " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {"command": command.strip(), "commit": commit(), "machine": machine()}
    results["runs"] = asyncio.run(run(options))
    sizes = "-".join(str(n) for n in options.agents)
    name = options.name or f"{datetime.now(UTC):%Y-%m-%d}-route-script-n{sizes}"
    options.results_dir.mkdir(parents=True, exist_ok=True)
    (options.results_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (options.results_dir / f"{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
