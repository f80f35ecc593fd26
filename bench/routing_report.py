"""The routing benchmark's figures and table (``bench.routing``): LOAD / RR per N against
the goal "within 10 %", the sticky route, and the simulated fleet's phases."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from bench.report import _fmt
from bench.taskfleet import LOAD, MODES, RR, mean_of, ratio_of

GOALS = {"throughput": 0.9, "p99": 1.1}
"""LOAD / RR: throughput at least, p99 (open loop) at most."""


def cpu_ms_per_request(series: dict[str, Any], process: str) -> float | None:
    """CPU the process spent per answered request over the series, in ms."""
    usage = series.get("usage") or {}
    cores = ((usage.get("processes") or {}).get(process) or {}).get("cpu_cores_avg")
    if cores is None or not series.get("ok"):
        return None
    return round(float(cores) * float(usage["seconds"]) * 1000 / int(series["ok"]), 3)


def others_cores(series: dict[str, Any]) -> float | None:
    """Cores busy over the series beyond the processes sampled (the stack and the load
    generator): other work on the shared machine, which makes a series unlike its pair."""
    usage = series.get("usage") or {}
    busy = usage.get("machine_busy_cores")
    if busy is None:
        return None
    return round(float(busy) - sum(float(p["cpu_cores_avg"]) for p in (usage.get("processes") or {}).values()), 2)


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """Per mode, each series' figures averaged over the rounds; LOAD / RR, against the goals,
    and the same ratio round by round (each LOAD series against the RR series just before it)."""
    by_mode: dict[str, Any] = {}
    for mode in MODES:
        rounds = [r for r in result.get("rounds", []) if r["mode"] == mode]
        by_mode[mode] = {
            "closed_per_s": mean_of([r["closed_loop"]["throughput_per_s"] for r in rounds]),
            "closed_p99_ms": mean_of([r["closed_loop"]["p99_ms"] for r in rounds]),
            "open_p50_ms": mean_of([r["open_loop"]["p50_ms"] for r in rounds]),
            "open_p99_ms": mean_of([r["open_loop"]["p99_ms"] for r in rounds]),
            "redis_us_per_script": mean_of([r["closed_loop"].get("redis_us_per_script") for r in rounds]),
            "facade_cpu_ms_per_route": mean_of([cpu_ms_per_request(r["closed_loop"], "facade") for r in rounds]),
            "floor_per_s": mean_of([(r.get("floor") or {}).get("throughput_per_s") for r in rounds]),
            "floor_us_per_script": mean_of([(r.get("floor") or {}).get("redis_us_per_script") for r in rounds]),
        }
    throughput = ratio_of(by_mode[LOAD]["closed_per_s"], by_mode[RR]["closed_per_s"])
    p99 = ratio_of(by_mode[LOAD]["open_p99_ms"], by_mode[RR]["open_p99_ms"])
    pairs = []
    rounds = result.get("rounds", [])
    for before, after in pairwise(rounds):
        if before["mode"] == RR and after["mode"] == LOAD and before["round"] == after["round"]:
            pairs.append(
                {
                    "round": after["round"],
                    "throughput": ratio_of(
                        after["closed_loop"]["throughput_per_s"], before["closed_loop"]["throughput_per_s"]
                    ),
                    "open_p99": ratio_of(after["open_loop"]["p99_ms"], before["open_loop"]["p99_ms"]),
                }
            )
    return {
        **by_mode,
        "load_vs_rr": {
            "throughput": throughput,
            "throughput_met": throughput is not None and throughput >= GOALS["throughput"],
            "open_p99": p99,
            "open_p99_met": p99 is not None and p99 <= GOALS["p99"],
            "closed_p99": ratio_of(by_mode[LOAD]["closed_p99_ms"], by_mode[RR]["closed_p99_ms"]),
            "redis_us_per_script": ratio_of(by_mode[LOAD]["redis_us_per_script"], by_mode[RR]["redis_us_per_script"]),
            "facade_cpu_per_route": ratio_of(
                by_mode[LOAD]["facade_cpu_ms_per_route"], by_mode[RR]["facade_cpu_ms_per_route"]
            ),
            "floor_throughput": ratio_of(by_mode[LOAD]["floor_per_s"], by_mode[RR]["floor_per_s"]),
            "floor_us_per_script": ratio_of(by_mode[LOAD]["floor_us_per_script"], by_mode[RR]["floor_us_per_script"]),
            "by_round": pairs,
        },
    }


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    cpu = meta["machine"]
    lines = [
        "# Routing by load",
        "",
        f"Command: `{meta['command']}`; commit {meta['commit']}; started {meta['started']}; "
        f"{cpu['cpus']} cores ({cpu['cpu_model']}), {cpu['memory_gb']} GB.",
        "",
    ]
    if results["routes"]:
        lines += [
            "## The route at N agents, round by round",
            "",
            "| N | round | mode | closed req/s | closed p50 / p99, ms | open offered/s | open p50 / p99, ms "
            "| errors | Redis per script, us | facade CPU per route, ms | others (steal), cores "
            "| floor req/s, us per script | open loop: picked in_flight (fleet's) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in results["routes"]:
            for entry in run.get("rounds", []):
                closed, opened = entry["closed_loop"], entry["open_loop"]
                errors = sum(closed["errors"].values()) + sum(opened["errors"].values())
                pk, floor = opened["picks"], entry.get("floor") or {}
                lines.append(
                    f"| {run['agents']:,} | {entry['round']} | {entry['mode']} | {_fmt(closed['throughput_per_s'])} "
                    f"| {_fmt(closed['p50_ms'])} / {_fmt(closed['p99_ms'])} | {_fmt(opened['offered_per_s'])} "
                    f"| {_fmt(opened['p50_ms'])} / {_fmt(opened['p99_ms'])} | {errors} "
                    f"| {_fmt(closed.get('redis_us_per_script'))} | {_fmt(cpu_ms_per_request(closed, 'facade'))} "
                    f"| {_fmt(others_cores(closed))} ({_fmt(closed.get('steal_cores'))}) "
                    f"| {_fmt(floor.get('throughput_per_s'))}, {_fmt(floor.get('redis_us_per_script'))} "
                    f"| {_fmt(pk.get('picked_in_flight_mean'))} ({_fmt(pk.get('fleet_in_flight_mean'))}) |"
                )
        lines += [
            "",
            f"| N | LOAD / RR throughput (goal >= {GOALS['throughput']}) | LOAD / RR open p99 "
            f"(goal <= {GOALS['p99']}) | round by round | closed p99 | Redis per script | facade CPU per route "
            "| floor throughput, us per script | met |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for run in results["routes"]:
            if "figures" not in run:
                lines.append(f"| {run['agents']:,} | {run.get('error', '-')} | | | | | | | |")
                continue
            ratio = run["figures"]["load_vs_rr"]
            met = ratio["throughput_met"] and ratio["open_p99_met"]
            by_round = ", ".join(f"{_fmt(p['throughput'])} / {_fmt(p['open_p99'])}" for p in ratio["by_round"])
            lines.append(
                f"| {run['agents']:,} | {_fmt(ratio['throughput'])} | {_fmt(ratio['open_p99'])} | {by_round} "
                f"| {_fmt(ratio['closed_p99'])} | {_fmt(ratio['redis_us_per_script'])} "
                f"| {_fmt(ratio['facade_cpu_per_route'])} "
                f"| {_fmt(ratio['floor_throughput'])}, {_fmt(ratio['floor_us_per_script'])} | {_fmt(met)} |"
            )
        lines += [
            "",
            "| N | sticky route (key per request) req/s | p50 / p99, ms | Redis per script, us "
            "| same key, same agent |",
            "|---|---|---|---|---|",
        ]
        for run in results["routes"]:
            sticky = run.get("sticky")
            if sticky:
                closed = sticky["closed_loop"]
                lines.append(
                    f"| {run['agents']:,} | {_fmt(closed['throughput_per_s'])} "
                    f"| {_fmt(closed['p50_ms'])} / {_fmt(closed['p99_ms'])} "
                    f"| {_fmt(closed.get('redis_us_per_script'))} | {_fmt(sticky['consistent'])} |"
                )
        lines.append("")
    fleet = results.get("fleet")
    if fleet and "error" in fleet:
        lines += ["## A fleet of two speeds", "", f"Failed: {fleet['error']}", ""]
    if fleet and "phases" in fleet:
        shape = fleet["shape"]
        lines += [
            "## A fleet of two speeds",
            "",
            f"{shape['size']} workers, {shape['slots']} slots each, {shape['fast_ms']:g} ms and "
            f"{shape['fast_ms'] * shape['slowdown']:g} ms per task (half and half), heartbeats every "
            f"{shape['heartbeat_seconds']:g} s; {fleet['offered_per_s']:g} tasks/s offered "
            f"({fleet['offered_share']:.0%} of {shape['capacity_per_s']:g}).",
            "",
            "| round | mode | tasks | failed | latency p50 / p95 / p99 / max, ms | fast p99 / slow p99, ms "
            "| to fast / slow | peak unfinished fast / slow | route p99, ms | drained in, s | others, cores |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in fleet["phases"]:
            fast, slow = p["by_kind"]["fast"], p["by_kind"]["slow"]
            lines.append(
                f"| {p['round']} | {p['mode']} | {p['tasks']:,} | {sum(p['failed'].values())} "
                f"| {_fmt(p['p50_ms'])} / {_fmt(p['p95_ms'])} / {_fmt(p['p99_ms'])} / {_fmt(p['max_ms'])} "
                f"| {_fmt(fast['p99_ms'])} / {_fmt(slow['p99_ms'])} | {fast['tasks']:,} / {slow['tasks']:,} "
                f"| {p['peak_unfinished']['fast']} / {p['peak_unfinished']['slow']} "
                f"| {_fmt(p['route']['p99_ms'])} | {_fmt(p['drain_seconds'])} | {_fmt(others_cores(p))} |"
            )
        ratio = fleet["figures"].get("load_vs_rr") or {}
        lines += [
            "",
            f"LOAD / RR, phases averaged: p50 {_fmt(ratio.get('p50_ms'))}, p95 {_fmt(ratio.get('p95_ms'))}, "
            f"p99 {_fmt(ratio.get('p99_ms'))}, max {_fmt(ratio.get('max_ms'))}.",
            "",
        ]
    return "\n".join(lines)
