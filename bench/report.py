"""The scale targets, judged on a run's figures, the cost of a heartbeat by path, and the
markdown tables of the results."""

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


# --- the cost of a heartbeat, by path --------------------------------------------------------------------

PATHS: dict[str, tuple[str, str]] = {
    "new": ("heartbeats", "Leases: even agents through the facade, odd ones renew directly (operator watching)"),
    "sidecar": ("sidecar_lease_path", "Leases, every agent renews directly as the sidecar (facade idle)"),
    "old": ("cr_status_path", "Agent status patches, every agent directly (before Leases)"),
    "floor": ("lease_path", "Bare Lease renewals, operator and facade stopped, one watcher"),
}
"""The heartbeat paths of one run: key -> (phase, what it is). ``new`` is the path the
issue's target is about; ``sidecar`` is the same without the facade, to tell their costs apart."""

_PROCESSES = ("kube-apiserver", "etcd", "kube-controller-manager", "operator", "facade", "redis", "bench")


def _heartbeats_acknowledged(run: dict[str, Any], path: str) -> int | None:
    series = "all" if path == "new" else "requests"
    value = dig(run, f"phases.{PATHS[path][0]}.{series}.ok")
    return int(value) if value is not None else None


def _latency(run: dict[str, Any], path: str, q: str) -> float | None:
    series = "all" if path == "new" else "requests"
    value = dig(run, f"phases.{PATHS[path][0]}.{series}.{q}_ms")
    return float(value) if value is not None else None


def _per(value: float | None, count: float | None, scale: float = 1.0, digits: int = 3) -> float | None:
    if value is None or not count:
        return None
    return round(value / count * scale, digits)


def path_cost(run: dict[str, Any], path: str) -> dict[str, Any]:
    """What one heartbeat cost on ``path`` ("new", "old", "floor"), from that phase's figures.

    CPU per heartbeat is the process's CPU over the phase (cores x seconds) over the
    heartbeats acknowledged in it; etcd bytes per heartbeat are the bytes etcd received
    from the API server over the phase (every write carries the whole object) over the
    same count; etcd growth is the change of its database size (``db_total_size``, what
    the disk holds, and ``db_in_use``), per minute. Whatever else ran meanwhile (the
    operator's own reads, the facade's authentication, leader election) is included: it
    is the price of the path, not noise."""
    phase = PATHS[path][0]
    usage = dig(run, f"phases.{phase}.usage") or {}
    processes = usage.get("processes") or {}
    etcd = dig(run, f"phases.{phase}.etcd") or {}
    seconds = usage.get("seconds")
    heartbeats = _heartbeats_acknowledged(run, path)
    n = run.get("agents")
    cores = {name: processes[name]["cpu_cores_avg"] for name in _PROCESSES if name in processes}
    api = cores.get("kube-apiserver")
    idle = dig(run, "phases.lease_path.idle.usage.processes.kube-apiserver.cpu_cores_avg")
    cpu_seconds = api * seconds if api is not None and seconds else None
    received = etcd.get("grpc_received_bytes")
    minutes = seconds / 60 if seconds else None
    writes = dig(run, f"phases.{phase}.writes")
    requests = dig(run, f"phases.{phase}.api_requests") or {}
    per_request = {
        key: _per(float(value), heartbeats) for key, value in sorted(requests.items(), key=lambda kv: -kv[1])
    }
    return {
        "phase": phase,
        "what": PATHS[path][1],
        "heartbeats": heartbeats,
        "seconds": seconds,
        "heartbeats_per_second": _per(float(heartbeats or 0), seconds, digits=1) if heartbeats else None,
        "status_writes_per_heartbeat": _per(float(writes.get("status", 0)), heartbeats) if writes is not None else None,
        "p50_ms": _latency(run, path, "p50"),
        "p99_ms": _latency(run, path, "p99"),
        "apiserver_cores": api,
        "apiserver_cpu_ms_per_heartbeat": _per(cpu_seconds, heartbeats, 1000.0),
        "apiserver_idle_cores": idle,
        "apiserver_cpu_ms_per_heartbeat_above_idle": (
            _per((api - idle) * seconds, heartbeats, 1000.0)
            if api is not None and idle is not None and seconds
            else None
        ),
        "etcd_bytes_per_heartbeat": _per(received, heartbeats, digits=0),
        "etcd_puts_per_heartbeat": _per(etcd.get("puts"), heartbeats, digits=2),
        "etcd_growth_mb_per_min": _per(etcd.get("db_total_size_bytes"), minutes, 1e-6, 2),
        "etcd_in_use_growth_mb_per_min": _per(etcd.get("db_in_use_bytes"), minutes, 1e-6, 2),
        "etcd_compacted_meanwhile": bool(etcd.get("compact_revision")) if "compact_revision" in etcd else None,
        "api_requests_per_heartbeat": per_request if heartbeats else {},
        "cores": cores,
        "machine_busy_cores": usage.get("machine_busy_cores"),
        "apiserver_cores_per_1000_agents": _per(api, n, 1000.0),
        "etcd_bytes_per_min_per_1000_agents": _per(received, (minutes or 0) * (n or 0), 1000.0, 0)
        if minutes and n
        else None,
    }


def heartbeat_costs(run: dict[str, Any]) -> dict[str, Any]:
    """The three paths side by side, their ratios, and the new path's cost per 1,000 agents."""
    if "phases" not in run:
        return {}
    costs: dict[str, Any] = {path: path_cost(run, path) for path in PATHS}
    new, sidecar, old, floor = costs["new"], costs["sidecar"], costs["old"], costs["floor"]
    cpu = "apiserver_cpu_ms_per_heartbeat"
    above = "apiserver_cpu_ms_per_heartbeat_above_idle"
    costs["ratios"] = {
        "apiserver_cpu_new_vs_floor": _ratio(new[cpu], floor[cpu]),
        "apiserver_cpu_sidecar_vs_floor": _ratio(sidecar[cpu], floor[cpu]),
        "apiserver_cpu_old_vs_floor": _ratio(old[cpu], floor[cpu]),
        "apiserver_cpu_new_vs_old": _ratio(new[cpu], old[cpu]),
        "apiserver_cpu_above_idle_new_vs_floor": _ratio(new[above], floor[above]),
        "etcd_bytes_new_vs_floor": _ratio(new["etcd_bytes_per_heartbeat"], floor["etcd_bytes_per_heartbeat"]),
        "etcd_bytes_sidecar_vs_floor": _ratio(sidecar["etcd_bytes_per_heartbeat"], floor["etcd_bytes_per_heartbeat"]),
        "etcd_bytes_new_vs_old": _ratio(new["etcd_bytes_per_heartbeat"], old["etcd_bytes_per_heartbeat"]),
    }
    n = run.get("agents")
    steady = dig(run, "phases.heartbeats.usage.processes") or {}
    operator_ = steady.get("operator") or {}
    facade = steady.get("facade") or {}
    costs["per_1000_agents"] = {
        "apiserver_cores": new["apiserver_cores_per_1000_agents"],
        "etcd_bytes_per_min": new["etcd_bytes_per_min_per_1000_agents"],
        "etcd_growth_mb_per_min": _per(new["etcd_growth_mb_per_min"], n, 1000.0),
        "operator_cores": _per(operator_.get("cpu_cores_avg"), n, 1000.0),
        "operator_rss_mb": _per(operator_.get("rss_mb_peak"), n, 1000.0, 1),
        "facade_cores": _per(facade.get("cpu_cores_avg"), n, 1000.0),
    }
    return costs


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
        "lease_cpu_vs_floor",
        "API-server CPU per heartbeat, new path (Leases) / bare Lease renewal, same run",
        "x",
        lambda r: 1.1,
        lambda r: dig(r, "heartbeat_cost.ratios.apiserver_cpu_new_vs_floor"),
    ),
    Target(
        "facade_heartbeat_p99_ratio",
        "Facade heartbeat p99 / direct heartbeat (Lease renewal) p99",
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
    (
        "Direct heartbeat (Lease renewal) p50 / p99, ms",
        "phases.heartbeats.direct.p50_ms|phases.heartbeats.direct.p99_ms",
    ),
    ("Heartbeats sent / lost", "phases.books.heartbeats_sent|phases.books.heartbeats_lost"),
    (
        "Writes acknowledged / heartbeats observed by the operator",
        "phases.books.heartbeat_writes_acknowledged|phases.books.heartbeats_observed_by_operator",
    ),
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

PATH_ROWS: list[tuple[str, str]] = [
    ("Heartbeats acknowledged", "heartbeats"),
    ("Heartbeats per second", "heartbeats_per_second"),
    ("Status patches per heartbeat (the sidecar's refresh)", "status_writes_per_heartbeat"),
    ("Latency p50 / p99, ms", "p50_ms|p99_ms"),
    ("kube-apiserver CPU, cores", "apiserver_cores"),
    ("**kube-apiserver CPU per heartbeat, ms**", "apiserver_cpu_ms_per_heartbeat"),
    ("kube-apiserver CPU per heartbeat above its idle, ms", "apiserver_cpu_ms_per_heartbeat_above_idle"),
    ("**etcd bytes received per heartbeat**", "etcd_bytes_per_heartbeat"),
    ("etcd puts per heartbeat", "etcd_puts_per_heartbeat"),
    ("**etcd DB growth, MB/min** (size / in use)", "etcd_growth_mb_per_min|etcd_in_use_growth_mb_per_min"),
    ("etcd compacted during the phase", "etcd_compacted_meanwhile"),
    ("etcd CPU, cores", "cores.etcd"),
    ("Operator CPU, cores", "cores.operator"),
    ("Facade CPU, cores", "cores.facade"),
    ("kube-controller-manager CPU, cores", "cores.kube-controller-manager"),
    ("Load generator CPU, cores", "cores.bench"),
    ("Machine busy, cores of 2", "machine_busy_cores"),
]
"""Rows of the heartbeat cost table: label, key(s) in ``path_cost``'s answer."""

PATH_ROWS_OPTIONAL = {
    "status_writes_per_heartbeat",  # the Lease paths only
    "etcd_compacted_meanwhile",
    "cores.operator",  # not on the floor
    "cores.facade",
    "cores.kube-controller-manager",  # where the control plane runs one
}

RATIO_ROWS: list[tuple[str, str]] = [
    ("kube-apiserver CPU per heartbeat, new / floor (target ≤ 1.1)", "apiserver_cpu_new_vs_floor"),
    ("kube-apiserver CPU per heartbeat, sidecar only / floor", "apiserver_cpu_sidecar_vs_floor"),
    ("kube-apiserver CPU per heartbeat, old / floor", "apiserver_cpu_old_vs_floor"),
    ("kube-apiserver CPU per heartbeat, new / old", "apiserver_cpu_new_vs_old"),
    ("kube-apiserver CPU per heartbeat above idle, new / floor", "apiserver_cpu_above_idle_new_vs_floor"),
    ("etcd bytes per heartbeat, new / floor", "etcd_bytes_new_vs_floor"),
    ("etcd bytes per heartbeat, sidecar only / floor", "etcd_bytes_sidecar_vs_floor"),
    ("etcd bytes per heartbeat, new / old", "etcd_bytes_new_vs_old"),
]

PER_AGENT_ROWS: list[tuple[str, str]] = [
    ("kube-apiserver CPU, cores", "apiserver_cores"),
    ("etcd bytes received per minute", "etcd_bytes_per_min"),
    ("etcd DB growth, MB/min", "etcd_growth_mb_per_min"),
    ("Operator CPU, cores", "operator_cores"),
    ("Operator RSS (steady heartbeats, peak), MB", "operator_rss_mb"),
    ("Facade CPU, cores (it carries half the heartbeats)", "facade_cores"),
]
"""Rows of the cost per 1,000 agents (new path): label, key in ``per_1000_agents``."""


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
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
    if meta.get("uncommitted"):
        lines.append(f"Uncommitted changes in the checkout that ran: {', '.join(meta['uncommitted'])}  ")
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
    lines += _cost_tables(runs)
    fleet = runs[0]["fleet"]
    lines.append(
        f"Fleet: heartbeat every {fleet['interval_seconds']} s, "
        f"Unreachable after {fleet['unreachable_after_seconds']} s, "
        f"sweep {fleet['sweep_seconds']} s; facade authentication {'on' if fleet['facade_auth'] else 'off'}"
        f"; a Lease heartbeat refreshes the Agent's status every {fleet.get('status_refresh_seconds', '-')} s"
        f"; control plane: {', '.join(fleet.get('control_plane') or ['-'])}"
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


def _cost_tables(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## The cost of a heartbeat: new path (Leases) vs old (status patches) vs the floor (same run)", ""]
    for path, (phase, what) in PATHS.items():
        lines.append(f"- **{path}** (phase `{phase}`): {what}")
    lines += ["", "| | " + " | ".join(f"N = {r['agents']:,} " + " | ".join(PATHS) for r in runs) + " |"]
    lines.append("|---|" + "---|" * len(PATHS) * len(runs))
    for label, key in PATH_ROWS:
        cells = [
            _cell(r, "|".join(f"heartbeat_cost.{p}.{part}" for part in key.split("|"))) for r in runs for p in PATHS
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += _request_table(runs)
    lines += ["", "| | " + " | ".join(f"N = {r['agents']:,}" for r in runs) + " |", "|---|" + "---|" * len(runs)]
    for label, key in RATIO_ROWS:
        lines.append(f"| {label} | " + " | ".join(_fmt(dig(r, f"heartbeat_cost.ratios.{key}")) for r in runs) + " |")
    lines += ["", "## Cost per 1,000 agents (new path, one heartbeat each per interval)", ""]
    lines += ["| | " + " | ".join(f"N = {r['agents']:,}" for r in runs) + " |", "|---|" + "---|" * len(runs)]
    for label, key in PER_AGENT_ROWS:
        lines.append(
            f"| {label} | " + " | ".join(_fmt(dig(r, f"heartbeat_cost.per_1000_agents.{key}")) for r in runs) + " |"
        )
    lines.append("")
    return lines


def _request_table(runs: list[dict[str, Any]], least: float = 0.005) -> list[str]:
    """What the API server did per heartbeat on each path: requests by verb and resource,
    watch events by kind (``apiserver_request_total``, ``apiserver_watch_events_total``)."""
    keys: dict[str, float] = {}
    for run in runs:
        for path in PATHS:
            for key, value in (dig(run, f"heartbeat_cost.{path}.api_requests_per_heartbeat") or {}).items():
                if value is not None and value >= least:
                    keys[key] = max(keys.get(key, 0.0), value)
    if not keys:
        return []
    lines = [
        "",
        "API server work per heartbeat: requests answered by verb and resource, requests by flow schema (`exempt`: "
        "the operator and the facade; `service-accounts`: the load generator; `kube-system-service-accounts`: the "
        "garbage collector), watch events sent by kind:",
        "",
    ]
    lines += ["| | " + " | ".join(f"N = {r['agents']:,} " + " | ".join(PATHS) for r in runs) + " |"]
    lines.append("|---|" + "---|" * len(PATHS) * len(runs))
    group = {"FLOW": 1, "WATCH-EVENT": 2}
    for key in sorted(keys, key=lambda k: (group.get(k.split(" ")[0], 0), -keys[k])):
        cells = [
            _fmt((dig(run, f"heartbeat_cost.{path}.api_requests_per_heartbeat") or {}).get(key, 0.0))
            for run in runs
            for path in PATHS
        ]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return lines


def _q(query: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in query.items())
