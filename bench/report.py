"""The scale targets, judged on a run's figures, and the markdown tables of the results."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def dig(data: Any, path: str) -> Any:
    """``dig(run, "phases.heartbeats.facade.p99_ms")``; None where anything is missing."""
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _cpu(run: dict[str, Any], phase: str, process: str) -> float | None:
    return dig(run, f"phases.{phase}.usage.processes.{process}.cpu_cores_avg")


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or not b:
        return None
    return round(float(a) / float(b), 2)


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    unit: str
    limit: Callable[[dict[str, Any]], float]
    value: Callable[[dict[str, Any]], float | None]
    compare: Callable[[float, float], bool] = operator.le

    def judge(self, run: dict[str, Any]) -> dict[str, Any]:
        value = self.value(run)
        limit = self.limit(run)
        met = None if value is None else bool(self.compare(value, limit))
        return {"label": self.label, "value": value, "limit": limit, "unit": self.unit, "met": met}


def _discovery_p99(name: str) -> Callable[[dict[str, Any]], float | None]:
    """p99 of a fixed-rate discovery series, or None if the offered rate was not served."""

    def value(run: dict[str, Any]) -> float | None:
        series = dig(run, f"phases.discovery.{name}") or {}
        return series.get("p99_ms")

    return value


def _served_share(name: str) -> Callable[[dict[str, Any]], float | None]:
    def value(run: dict[str, Any]) -> float | None:
        series = dig(run, f"phases.discovery.{name}") or {}
        offered = series.get("offered_per_s")
        served = series.get("throughput_per_s")
        if not offered or served is None:
            return None
        errors = sum((series.get("errors") or {}).values())
        return round(min(1.0, served / offered) if not errors else 0.0, 3)

    return value


TARGETS = [
    Target(
        "heartbeats_lost",
        "Heartbeats lost (failed, or not observed by the operator)",
        "",
        lambda r: 0,
        lambda r: dig(r, "phases.books.heartbeats_lost"),
    ),
    Target(
        "false_unreachable",
        "False Unreachable transitions",
        "",
        lambda r: 0,
        lambda r: dig(r, "phases.books.false_unreachable"),
    ),
    Target(
        "facade_heartbeat_p99_ratio",
        "Facade heartbeat p99 / direct PATCH p99",
        "x",
        lambda r: 2.0,
        lambda r: _ratio(dig(r, "phases.heartbeats.facade.p99_ms"), dig(r, "phases.heartbeats.direct.p99_ms")),
    ),
    Target(
        "query_p99",
        "GET /agents?type&capability p99 at the offered rate",
        "ms",
        lambda r: 10.0,
        _discovery_p99("query_selective"),
    ),
    Target(
        "query_served",
        "GET /agents?type&capability: share of the offered rate served without errors",
        "",
        lambda r: 0.99,
        _served_share("query_selective"),
        operator.ge,
    ),
    Target(
        "route_p99",
        "GET /agents/route p99 at the offered rate",
        "ms",
        lambda r: 10.0,
        _discovery_p99("route_selective"),
    ),
    Target(
        "route_served",
        "GET /agents/route: share of the offered rate served without errors",
        "",
        lambda r: 0.99,
        _served_share("route_selective"),
        operator.ge,
    ),
    Target(
        "discovery_vs_list",
        "Query throughput, facade / API-server label-selector LIST",
        "x",
        lambda r: 20.0,
        lambda r: dig(r, "phases.discovery.throughput_ratio_selective"),
        operator.ge,
    ),
    Target(
        "operator_rss",
        "Operator RSS, peak over the run",
        "MB",
        lambda r: 300.0,
        lambda r: dig(r, "process_peaks.operator"),
    ),
    Target(
        "operator_cpu",
        "Operator CPU, average over the steady heartbeats",
        "cores",
        lambda r: 1.0,
        lambda r: _cpu(r, "heartbeats", "operator"),
    ),
    Target(
        "cold_start",
        "Operator cold start to a complete index",
        "s",
        lambda r: 60.0,
        lambda r: dig(r, "phases.cold_start.seconds_to_complete_index"),
    ),
    Target(
        "unreachable_detection_p99",
        "Unreachable detected after the last heartbeat, p99",
        "s",
        lambda r: float(dig(r, "phases.unreachable.target_s") or 0),
        lambda r: dig(r, "phases.unreachable.detection_p99_s"),
    ),
    Target(
        "facade_rss",
        "Facade RSS, peak over the run",
        "MB",
        lambda r: 150.0,
        lambda r: dig(r, "process_peaks.facade"),
    ),
    Target(
        "sidecar_rss",
        "Sidecar RSS",
        "MB",
        lambda r: 50.0,
        lambda r: dig(r, "phases.sidecar.rss_mb_peak"),
    ),
]


def judge(run: dict[str, Any]) -> dict[str, Any]:
    verdicts = {target.key: target.judge(run) for target in TARGETS}
    return {"targets": verdicts, "all_met": all(v["met"] for v in verdicts.values())}


# --- markdown -------------------------------------------------------------------------------------------

COST_ROWS: list[tuple[str, str]] = [
    ("Heartbeats per second (total)", "fleet.heartbeats_per_second"),
    ("Create N agents, s", "phases.create.requests.seconds"),
    ("Operator first start: every agent initialised, s", "phases.initialise.seconds"),
    ("Operator cold start to a complete index, s", "phases.cold_start.seconds_to_complete_index"),
    ("Facade heartbeat p50 / p99, ms", "phases.heartbeats.facade.p50_ms|phases.heartbeats.facade.p99_ms"),
    ("Direct status PATCH p50 / p99, ms", "phases.heartbeats.direct.p50_ms|phases.heartbeats.direct.p99_ms"),
    ("Heartbeats sent / lost", "phases.books.heartbeats_sent|phases.books.heartbeats_lost"),
    ("False Unreachable", "phases.books.false_unreachable"),
    (
        "Query (selective) p50 / p99 at offered rate, ms",
        "phases.discovery.query_selective.p50_ms|phases.discovery.query_selective.p99_ms",
    ),
    ("Query (selective) served, req/s", "phases.discovery.query_selective.throughput_per_s"),
    (
        "Route (selective) p50 / p99, ms",
        "phases.discovery.route_selective.p50_ms|phases.discovery.route_selective.p99_ms",
    ),
    ("Query (broad) p50 / p99, ms", "phases.discovery.query_broad.p50_ms|phases.discovery.query_broad.p99_ms"),
    ("Query (broad) served, req/s", "phases.discovery.query_broad.throughput_per_s"),
    ("Route (broad) p50 / p99, ms", "phases.discovery.route_broad.p50_ms|phases.discovery.route_broad.p99_ms"),
    ("Query saturation throughput, req/s", "phases.discovery.query_selective_saturation.throughput_per_s"),
    ("API-server LIST throughput (same query), req/s", "phases.discovery.api_list_selective.throughput_per_s"),
    ("Facade / LIST throughput", "phases.discovery.throughput_ratio_selective"),
    ("Facade heartbeat p99 while queries run, ms", "phases.discovery.heartbeats_meanwhile.facade.p99_ms"),
    ("Heartbeats failed while queries run", "@hb_failed_discovery"),
    ("Agents turned Unreachable while queries run", "phases.discovery.unreachable_transitions_meanwhile"),
    ("Unreachable detection p50 / p99, s", "phases.unreachable.detection_p50_s|phases.unreachable.detection_p99_s"),
    ("kube-apiserver CPU (steady heartbeats), cores", "phases.heartbeats.usage.processes.kube-apiserver.cpu_cores_avg"),
    ("etcd CPU (steady heartbeats), cores", "phases.heartbeats.usage.processes.etcd.cpu_cores_avg"),
    (
        "Operator CPU avg / busiest 5 s, cores",
        "phases.heartbeats.usage.processes.operator.cpu_cores_avg|phases.heartbeats.usage.processes.operator.cpu_cores_max_5s",
    ),
    ("Facade CPU (steady heartbeats), cores", "phases.heartbeats.usage.processes.facade.cpu_cores_avg"),
    (
        "Facade CPU at the offered query rate, cores",
        "phases.discovery.query_selective.usage.processes.facade.cpu_cores_avg",
    ),
    ("Redis CPU (steady heartbeats), cores", "phases.heartbeats.usage.processes.redis.cpu_cores_avg"),
    ("Load generator CPU (steady heartbeats), cores", "phases.heartbeats.usage.processes.bench.cpu_cores_avg"),
    ("Machine busy (steady heartbeats), cores of 2", "phases.heartbeats.usage.machine_busy_cores"),
    ("Machine busy (query at offered rate), cores of 2", "phases.discovery.query_selective.usage.machine_busy_cores"),
    ("Operator RSS peak, MB", "process_peaks.operator"),
    ("Facade RSS peak, MB", "process_peaks.facade"),
    ("kube-apiserver RSS peak, MB", "process_peaks.kube-apiserver"),
    ("etcd RSS peak, MB", "process_peaks.etcd"),
    ("Redis RSS peak, MB", "process_peaks.redis"),
    ("Sidecar RSS, MB", "phases.sidecar.rss_mb_peak"),
    ("etcd DB size after the heartbeats, MB", "phases.heartbeats.etcd.db_total_size_bytes_after"),
]

LEASE_ROWS: list[tuple[str, str, str]] = [
    (
        "Writes per second offered",
        "phases.cr_status_path.requests.throughput_per_s",
        "phases.lease_path.requests.throughput_per_s",
    ),
    ("Latency p50, ms", "phases.cr_status_path.requests.p50_ms", "phases.lease_path.requests.p50_ms"),
    ("Latency p99, ms", "phases.cr_status_path.requests.p99_ms", "phases.lease_path.requests.p99_ms"),
    (
        "kube-apiserver CPU, cores",
        "phases.cr_status_path.usage.processes.kube-apiserver.cpu_cores_avg",
        "phases.lease_path.usage.processes.kube-apiserver.cpu_cores_avg",
    ),
    (
        "etcd CPU, cores",
        "phases.cr_status_path.usage.processes.etcd.cpu_cores_avg",
        "phases.lease_path.usage.processes.etcd.cpu_cores_avg",
    ),
    ("Bytes written to etcd per heartbeat", "@cr_bytes", "@lease_bytes"),
    ("etcd DB growth over the phase, MB", "@cr_growth", "@lease_growth"),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _cell(run: dict[str, Any], path: str) -> str:
    return " / ".join(_fmt(_special(run, part)) for part in path.split("|"))


def _special(run: dict[str, Any], path: str) -> Any:
    if path == "@hb_failed_discovery":
        meanwhile = dig(run, "phases.discovery.heartbeats_meanwhile") or {}
        if not meanwhile:
            return None
        return sum(sum((series.get("errors") or {}).values()) for series in meanwhile.values())
    if path.startswith("@"):
        which, what = path[1:].split("_")
        phase = "cr_status_path" if which == "cr" else "lease_path"
        etcd = dig(run, f"phases.{phase}.etcd") or {}
        if what == "bytes":
            ok = dig(run, f"phases.{phase}.requests.ok")
            received = etcd.get("grpc_received_bytes")
            return round(received / ok) if ok and received is not None else None
        growth = etcd.get("db_total_size_bytes")
        return None if growth is None else round(growth / 1e6, 2)
    value = dig(run, path)
    if path.endswith("db_total_size_bytes_after") and value is not None:
        return round(value / 1e6, 1)
    return value


def markdown(results: dict[str, Any]) -> str:
    runs = [r for r in results["runs"] if "phases" in r]
    meta = results["meta"]
    lines = [f"# Agent Registry benchmark, {meta['started']}", ""]
    lines.append(f"Command: `{meta['command']}`  ")
    lines.append(
        f"Machine: {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}), "
        f"{meta['machine']['memory_gb']} GB; Kubernetes {meta['versions']['kubernetes']}, "
        f"etcd {meta['versions']['etcd']}, Python {meta['versions']['python']}; commit {meta['commit']}  "
    )
    loads = ", ".join(f"N={r['agents']}: {r.get('load_before')} → {r.get('load_after')}" for r in results["runs"])
    lines.append(f"Load average (1/5/15 min) before → after each run: {loads}")
    if meta.get("other_work"):
        lines.append(f"Other work seen on the machine during the run: {', '.join(meta['other_work'])}")
    lines.append("")
    if not runs:
        return "\n".join([*lines, "No run finished.", ""])
    header = "| | target | " + " | ".join(f"N = {r['agents']:,}" for r in runs) + " |"
    rule = "|---|---|" + "---|" * len(runs)
    lines += ["## Targets", "", header, rule]
    for target in TARGETS:
        cells = []
        for run in runs:
            verdict = run["verdict"]["targets"][target.key]
            mark = {True: "✓", False: "✗", None: "?"}[verdict["met"]]
            cells.append(f"{_fmt(verdict['value'])} {mark}")
        op = "≥" if target.compare is operator.ge else "≤"
        limit = runs[0]["verdict"]["targets"][target.key]["limit"]
        lines.append(f"| {target.label} | {op} {_fmt(limit)} {target.unit} | " + " | ".join(cells) + " |")
    met = [r["agents"] for r in runs if r["verdict"]["all_met"]]
    lines += ["", f"Largest N meeting every target: {max(met):,}" if met else "No N met every target.", ""]
    lines += ["## Cost curve", "", "| | " + " | ".join(f"N = {r['agents']:,}" for r in runs) + " |"]
    lines.append("|---|" + "---|" * len(runs))
    for label, path in COST_ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(r, path) for r in runs) + " |")
    lines += ["", "## Heartbeats as Agent status patches vs as Lease renewals (same rate, same run)", ""]
    lines.append("| | " + " | ".join(f"N = {r['agents']:,} CR status | Lease" for r in runs) + " |")
    lines.append("|---|" + "---|---|" * len(runs))
    for label, cr, lease in LEASE_ROWS:
        lines.append(f"| {label} | " + " | ".join(f"{_cell(r, cr)} | {_cell(r, lease)}" for r in runs) + " |")
    lines.append("")
    fleet = runs[0]["fleet"]
    lines.append(
        f"Fleet: heartbeat every {fleet['interval_seconds']} s, "
        f"Unreachable after {fleet['unreachable_after_seconds']} s, "
        f"sweep {fleet['sweep_seconds']} s; facade authentication {'on' if fleet['facade_auth'] else 'off'}"
        ". "
        f"Selective query `{_q(fleet['selective_query'])}` matches "
        + ", ".join(f"{r['fleet']['selective_matches']}" for r in runs)
        + " agents; broad query `"
        + _q(fleet["broad_query"])
        + "` matches "
        + ", ".join(f"{r['fleet']['broad_matches']:,}" for r in runs)
        + "."
    )
    lines.append("")
    return "\n".join(lines)


def _q(query: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in query.items())
