"""One benchmark run at N agents, phase by phase, on a fresh control plane.

1. ``create``: N Agents through the API server (32 at a time); once kube-controller-manager's
   garbage collector watches Agents, every agent's Lease (``agent_leases``: as the sidecar
   creates it at its first heartbeat, owned by the Agent, labelled for the operator's
   watch). Heartbeats start at once, the new way: each agent renews its Lease directly as
   the sidecar does (refreshing its status every ``status_refresh_seconds``, spread
   evenly), so no agent is ever silent longer than its interval.
2. ``initialise``: the operator's first start; until every Agent has a phase.
3. ``cold_start``: SIGTERM the operator, FLUSHALL Redis, start it again: time to a
   complete Redis index with N existing, heartbeating Agents.
4. The facade starts; heartbeats go on for one interval with even agents through the
   facade (which renews their Leases), odd ones renewing directly. They pause for a
   moment so the operator's heartbeat counter can be read at rest (the books open), and
   resume.
5. ``heartbeats``: that steady state for ``--heartbeat-seconds``: the *new path* of the
   heartbeat cost comparison, with the operator watching Leases and the facade serving.
6. ``sidecar_lease_path``: every agent renews its Lease directly (the new path without
   the facade: what the sidecar alone costs), for ``--lease-seconds``.
7. ``unreachable``: (both routes again) a sample of agents stops renewing; time from each
   one's last acknowledged heartbeat until a watch sees its phase become Unreachable;
   then, not measured, until they have all recovered.
8. ``cr_status_path``: every agent heartbeats by direct status patch, the way before
   Leases (the *old path*). Then the books close: heartbeats sent vs acknowledged, and
   the writes they made vs the heartbeats the operator observed (it counts a renewal as
   one), and every transition to Unreachable since the operator started.
9. ``discovery``: selective and broad queries and the routing endpoint at a fixed rate,
   the facade's saturation throughput, and the same question as a label-selector LIST
   against the API server, while heartbeats go on the new way (what a query storm does to
   them is reported with the discovery figures).
10. ``sidecar``: one real sidecar beside a fake agent, for its RSS.
11. ``lease_path``: operator and facade stopped; N bare Leases (no owner, no label)
    renewed at the same rate with one watcher: the platform's *floor*. Before the
    renewals, ``idle_seconds`` with nothing written, for the API server's fixed cost.

The paths' costs per heartbeat are worked out by ``report.heartbeat_costs``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp

from agent_registry.index import IndexReader, IndexUnavailable, connect
from agent_registry.localcluster.launcher import HeartbeatTimings, SidecarProcess
from agent_registry.localcluster.process import LOOPBACK
from bench.fleet import (
    AGENTS_PATH,
    LEASE,
    LEASES_PATH,
    SAMPLE_LABEL,
    STATUS,
    AgentWatch,
    Fleet,
    Heartbeats,
    LeaseRenewals,
    Timing,
    create_agent_leases,
    create_agents,
    create_leases,
    drain_watch,
)
from bench.load import Recorder, closed_loop, fixed_rate, ms, percentile, request, session, timed
from bench.procs import Sampler, rss_mb
from bench.stack import CLIENT_ACCOUNT, KEY_PREFIX, Stack, metric_sum, progress

NAMESPACE = "bench"
QUERY_CONNECTIONS = 64
DISCOVERY_TIMEOUT = 10.0


@dataclass
class Options:
    heartbeat_seconds: float = 300.0
    discovery_rate: float = 1000.0
    discovery_seconds: float = 20.0
    saturation_seconds: float = 10.0
    lease_seconds: float = 60.0
    interval: int = 30
    unreachable_after: int = 45
    sweep_seconds: float = 5.0
    sample: int = 30
    matches: int = 20
    facade_auth: bool = True
    setup_timeout: float = 1200.0
    keep_logs: bool = False
    facade_settings: dict[str, str] | None = None
    """Extra facade settings by field name, for experiments."""
    profile_seconds: float = 0.0
    profile_dir: str | None = None
    sidecar_seconds: float = 15.0
    status_refresh_seconds: float = 300.0
    """The sidecar's AGENT_STATUS_REFRESH_SECONDS (its default): a Lease heartbeat also
    patches the Agent's status this often; 0: never."""
    idle_seconds: float = 10.0
    """Nothing written, before the floor's renewals: the API server's fixed cost."""


class Reporter:
    """Progress lines every ``period`` seconds while a long phase runs."""

    def __init__(self, sampler: Sampler, period: float = 15.0) -> None:
        self.sampler = sampler
        self.period = period
        self._last: dict[str, float] = {}
        self._at = time.monotonic()

    def cpu_line(self) -> str:
        sample = self.sampler.take()
        elapsed = sample.at - self._at
        parts = []
        for name in ("kube-apiserver", "etcd", "kube-controller-manager", "operator", "facade", "redis", "bench"):
            if name in sample.cpu and name in self._last and elapsed > 0:
                parts.append(f"{name} {(sample.cpu[name] - self._last[name]) / elapsed:.2f}")
        self._last = dict(sample.cpu)
        self._at = sample.at
        return "CPU cores: " + ", ".join(parts) if parts else ""

    async def every(self, seconds: float, line: Any) -> None:
        deadline = time.monotonic() + seconds
        self.cpu_line()
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(self.period, left))
            progress(f"  {line()} | {self.cpu_line()}")


async def run_for(n: int, options: Options) -> dict[str, Any]:
    sampler = Sampler().start()
    sampler.watch("bench", os.getpid())
    stack = Stack(NAMESPACE, sampler, facade_auth=options.facade_auth, sweep_seconds=options.sweep_seconds)
    stack.keep_logs = options.keep_logs
    result: dict[str, Any] = {"agents": n, "load_before": _loadavg()}
    try:
        progress(f"N={n}: starting kube-apiserver, etcd and Redis")
        stack.start()  # on the main thread: the servers die with this process even on SIGKILL
        await _run(stack, sampler, n, options, result)
    except Exception as exc:
        progress(f"N={n} failed: {type(exc).__name__}: {exc}")
        result["error"] = f"{type(exc).__name__}: {exc}"
        for name, process in (("operator", stack.operator), ("facade", stack.facade)):
            if process is not None:
                result.setdefault("log_tails", {})[name] = process.log_tail(40)
    finally:
        result["load_after"] = _loadavg()
        stack.close()
        sampler.stop()
    return result


async def _run(stack: Stack, sampler: Sampler, n: int, options: Options, result: dict[str, Any]) -> None:
    timing = Timing(options.interval, options.unreachable_after)
    fleet = Fleet(n, NAMESPACE, timing, matches=options.matches, sample_size=options.sample)
    phases: dict[str, Any] = {}
    result["phases"] = phases
    result["fleet"] = {
        "interval_seconds": timing.interval,
        "unreachable_after_seconds": timing.unreachable_after,
        "sweep_seconds": options.sweep_seconds,
        "heartbeats_per_second": round(n / timing.interval, 1),
        "selective_query": fleet.selective_query,
        "selective_matches": fleet.expected_matches(fleet.selective_query),
        "broad_query": fleet.broad_query,
        "broad_matches": fleet.expected_matches(fleet.broad_query),
        "unreachable_sample": len(fleet.sample),
        "facade_auth": options.facade_auth,
        "status_refresh_seconds": options.status_refresh_seconds,
        "control_plane": sorted(stack.controlplane.pids),
    }
    reporter = Reporter(sampler)
    ssl_context = stack.api_ssl_context()
    # Separate pools, so that heartbeats queueing for a connection never delay a watch or a
    # measurement, and the other way round. A real fleet has one connection per agent.
    api = session(stack.api_url, token=stack.token, ssl_context=ssl_context, connections=256)
    control = session(stack.api_url, token=stack.token, ssl_context=ssl_context, connections=16)
    facade: Any = None
    queries: Any = None
    heartbeats: Heartbeats | None = None
    try:
        # 1. create --------------------------------------------------------------------------
        progress(f"N={n}: creating {n} agents through the API server")
        sampler.mark("create")
        phases["create"] = {"requests": await create_agents(control, fleet)}
        sampler.end("create")
        phases["create"]["usage"] = sampler.summary("create")
        phases["create"]["etcd_after"] = stack.etcd_figures()
        # Each agent's Lease, once, as a sidecar creates it at its first heartbeat: the fleet
        # heartbeats the new way from the operator's first start on. The operator counts
        # each creation as a heartbeat: done before the books open.
        waited = await asyncio.to_thread(stack.wait_gc_watches_crds)
        progress(
            f"N={n}: creating {n} agents' Leases (owned by their Agents, labelled; waited {waited:.0f}s for the GC)"
        )
        registered_by = f"system:serviceaccount:{NAMESPACE}:{CLIENT_ACCOUNT}"
        phases["agent_leases"] = {
            "waited_for_gc_seconds": round(waited, 1),
            "create": await create_agent_leases(control, fleet, registered_by),
        }
        heartbeats = Heartbeats(fleet, None, api, status_refresh=options.status_refresh_seconds)
        heartbeats.route = "direct"
        heartbeats.writer = LEASE
        heartbeats.start()

        # 2. initialise --------------------------------------------------------------------------
        progress(f"N={n}: operator first start, initialising every agent (Lease heartbeats running, direct)")
        watch = AgentWatch(control, NAMESPACE).start()
        sampler.mark("initialise")
        started = time.monotonic()
        stack.start_operator()
        await asyncio.to_thread(stack.wait_operator)
        await _wait(
            lambda: watch.count(with_phase=True) >= n,
            options.setup_timeout,
            lambda: f"initialised {watch.count(with_phase=True)}/{n}",
            stack,
        )
        phases["initialise"] = {"seconds": round(time.monotonic() - started, 1)}
        sampler.end("initialise")
        phases["initialise"]["usage"] = sampler.summary("initialise")
        await watch.stop()
        first_metrics = await asyncio.to_thread(stack.operator_metrics)
        phases["initialise"]["operator_unreachable_transitions"] = metric_sum(
            first_metrics, "agent_registry_phase_transitions_total", to_phase="Unreachable"
        )

        # 3. cold start --------------------------------------------------------------------------
        progress(f"N={n}: operator cold start: SIGTERM, FLUSHALL, start; waiting for a complete index")
        shutdown = await asyncio.to_thread(stack.stop_operator)
        redis = connect(stack.redis_url)
        await redis.flushall()
        await redis.aclose()
        sampler.mark("cold_start")
        started = time.monotonic()
        stack.start_operator()
        await asyncio.to_thread(stack.wait_operator)
        process_up = time.monotonic() - started
        indexed = 0
        reader = IndexReader(connect(stack.redis_url), prefix=KEY_PREFIX)

        async def count_index() -> int:
            try:
                return await reader.count(NAMESPACE)
            except IndexUnavailable:
                return 0

        deadline = started + options.setup_timeout
        last_note = 0.0
        while (indexed := await count_index()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"index holds {indexed}/{n} agents after {options.setup_timeout:.0f}s")
            _check_alive(stack)
            if time.monotonic() - last_note > 5:
                progress(f"  indexed {indexed}/{n}")
                last_note = time.monotonic()
            await asyncio.sleep(0.25)
        await reader.redis.aclose()
        phases["cold_start"] = {
            "previous_operator_shutdown_seconds": round(shutdown, 1),
            "process_up_seconds": round(process_up, 1),
            "seconds_to_complete_index": round(time.monotonic() - started, 1),
        }
        sampler.end("cold_start")
        phases["cold_start"]["usage"] = sampler.summary("cold_start")

        # 4. facade --------------------------------------------------------------------------------
        progress(f"N={n}: starting the facade")
        stack.start_facade(options.facade_settings)
        await asyncio.to_thread(stack.wait_facade)
        facade = session(stack.facade_url, token=stack.token, ssl_context=None, connections=64)
        # The facade's Redis pool has 100 connections and fails (rather than waits) past that:
        # keep the two pools' sum near it, so only a facade that is really behind queues requests.
        queries = session(stack.facade_url, token=stack.token, ssl_context=None, connections=QUERY_CONNECTIONS)
        await _wait_ready(queries)
        heartbeats.facade = facade
        # One interval the new way before the books open, not measured: a fresh facade reads
        # each REST agent's Agent at its first heartbeat (the owner rule's cache, kept 5
        # minutes), a one-off of the facade's start, not a cost of every heartbeat.
        progress(f"N={n}: heartbeats the new way for one interval ({timing.interval}s) before measuring")
        heartbeats.route = "mixed"
        await asyncio.sleep(timing.interval + 1)
        baseline = await _quiesce(stack, heartbeats)
        # Heartbeats so far (while the operator initialised and restarted) are not the steady state.
        phases["warmup_heartbeats"] = _summaries(heartbeats.new_phase())
        heartbeats.start()
        etcd_before = stack.etcd_figures()
        api_before = await asyncio.to_thread(stack.apiserver_requests)
        writes_before = heartbeats.writes.copy()
        facade_before = await asyncio.to_thread(_facade_writes, stack)

        # 5. steady heartbeats ---------------------------------------------------------------------
        progress(
            f"N={n}: steady heartbeats for {options.heartbeat_seconds:.0f}s at {heartbeats.rate:.0f}/s "
            "(even agents through the facade, odd ones renew their Leases directly)"
        )
        sampler.mark("heartbeats")
        profile = _start_profile(stack, options, "heartbeats", n)
        await reporter.every(options.heartbeat_seconds, lambda: _heartbeat_line(heartbeats))
        _finish_profile(profile)
        sampler.end("heartbeats")
        recorders = await _next_phase(heartbeats)
        phases["heartbeats"] = {
            "facade": recorders["facade"].summary(),
            "direct": recorders["direct"].summary(),
            "all": _merged(recorders),
            "writes": dict(heartbeats.writes - writes_before),
            "facade_writes": _delta(facade_before, await asyncio.to_thread(_facade_writes, stack)),
            "usage": sampler.summary("heartbeats"),
            "etcd": _etcd_delta(etcd_before, stack.etcd_figures()),
            "api_requests": _delta(api_before, await asyncio.to_thread(stack.apiserver_requests), moved_only=True),
        }

        # 6. the new path without the facade: every agent renews its Lease as the sidecar does --------
        progress(
            f"N={n}: sidecar Lease path: every agent renews its Lease directly, {options.lease_seconds:.0f}s "
            "(operator watching, facade idle)"
        )
        heartbeats.route = "direct"
        etcd_before = stack.etcd_figures()
        api_before = await asyncio.to_thread(stack.apiserver_requests)
        writes_before = heartbeats.writes.copy()
        sampler.mark("sidecar_lease_path")
        await reporter.every(options.lease_seconds, lambda: _heartbeat_line(heartbeats))
        sampler.end("sidecar_lease_path")
        recorders = await _next_phase(heartbeats)
        phases["sidecar_lease_path"] = {
            "requests": recorders["direct"].summary(),
            "writes": dict(heartbeats.writes - writes_before),
            "usage": sampler.summary("sidecar_lease_path"),
            "etcd": _etcd_delta(etcd_before, stack.etcd_figures()),
            "api_requests": _delta(api_before, await asyncio.to_thread(stack.apiserver_requests), moved_only=True),
        }

        # 7. unreachable detection (the new way, both routes) ---------------------------------------------
        heartbeats.route = "mixed"
        phases["unreachable"] = await _unreachable(control, fleet, heartbeats, options)
        # Not measured: the silenced agents beat again and the operator writes their recovery,
        # status patches that would otherwise be counted against the next path.
        phases["unreachable"]["recovery_seconds"] = await _recover(control, fleet, heartbeats)
        phases["unreachable"]["heartbeats_meanwhile"] = _summaries(await _next_phase(heartbeats))

        # 8. the CR status path at the full rate -------------------------------------------------------
        progress(f"N={n}: CR status path: every agent patches its status directly, {options.lease_seconds:.0f}s")
        heartbeats.route = "direct"
        heartbeats.writer = STATUS
        etcd_before = stack.etcd_figures()
        api_before = await asyncio.to_thread(stack.apiserver_requests)
        sampler.mark("cr_status_path")
        await reporter.every(options.lease_seconds, lambda: _heartbeat_line(heartbeats))
        sampler.end("cr_status_path")
        recorders = await _next_phase(heartbeats)
        phases["cr_status_path"] = {
            "requests": recorders["direct"].summary(),
            "usage": sampler.summary("cr_status_path"),
            "etcd": _etcd_delta(etcd_before, stack.etcd_figures()),
            "api_requests": _delta(api_before, await asyncio.to_thread(stack.apiserver_requests), moved_only=True),
        }

        # The books close before discovery: a facade saturated by queries may starve the
        # heartbeats it serves, which is a finding of its own, reported with the discovery figures.
        final = await _quiesce(stack, heartbeats)
        phases["books"] = _books(baseline, final, heartbeats, phases, first_metrics)
        phases["books"]["final_phases"] = await _final_phases(control)
        heartbeats.route = "mixed"
        heartbeats.writer = LEASE
        heartbeats.start()

        # 9. discovery ---------------------------------------------------------------------------------
        phases["discovery"] = await _discovery(stack, sampler, fleet, queries, control, options)
        after = await _quiesce(stack, heartbeats)
        phases["discovery"]["heartbeats_meanwhile"] = _summaries(await _next_phase(heartbeats))
        starved = int(after["to_unreachable"] - final["to_unreachable"])
        phases["discovery"]["unreachable_transitions_meanwhile"] = starved
        phases["discovery"]["phases_after"] = await _final_phases(control)

        # 10. sidecar -------------------------------------------------------------------------------------
        phases["sidecar"] = await asyncio.to_thread(_sidecar_rss, stack, sampler, options.sidecar_seconds)

        # 11. the Lease path -------------------------------------------------------------------------------
        phases["lease_path"] = await _lease_path(stack, sampler, api, control, n, options)
        result["process_peaks"] = _peaks(sampler)
    finally:
        if heartbeats is not None and not heartbeats.stopped.is_set():
            await heartbeats.stop()
        for client in (api, control, facade, queries):
            if client is not None:
                await client.close()


# --- helpers --------------------------------------------------------------------------------------


async def _next_phase(heartbeats: Heartbeats) -> dict[str, Recorder]:
    """Start new heartbeat recorders; the old ones once every heartbeat sent under them is answered."""
    closed = heartbeats.new_phase()
    for recorder in closed.values():
        await recorder.settle()
    return closed


def _summaries(recorders: dict[str, Recorder]) -> dict[str, Any]:
    return {name: recorder.summary() for name, recorder in recorders.items()}


def _facade_writes(stack: Stack) -> dict[str, float]:
    """What the facade's REST heartbeats wrote so far: Lease renewals and status patches."""
    rows = stack.facade_metrics()
    name = "agent_registry_facade_heartbeat_writes_total"
    return {write: metric_sum(rows, name, write=write) for write in ("lease", "status")}


def _delta(before: dict[str, float], after: dict[str, float], *, moved_only: bool = False) -> dict[str, int]:
    """What a snapshot of counters gained, key by key."""
    delta = {key: int(after[key] - before.get(key, 0.0)) for key in after}
    return {key: value for key, value in delta.items() if value} if moved_only else delta


def _merged(recorders: dict[str, Recorder]) -> dict[str, Any]:
    """One summary of several recorders of the same phase: every heartbeat, whatever its route."""
    merged = Recorder("all")
    parts = list(recorders.values())
    for recorder in parts:
        merged.latencies += recorder.latencies
        merged.send_lags += recorder.send_lags
        merged.ok += recorder.ok
        merged.errors.update(recorder.errors)
    merged.started = min(r.started for r in parts)
    merged.ended = max(r.ended or time.monotonic() for r in parts)
    return merged.summary()


async def _wait(done: Any, timeout: float, status: Any, stack: Stack, note_every: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f}s: {status()}")
        _check_alive(stack)
        if time.monotonic() - last > note_every:
            progress(f"  {status()}")
            last = time.monotonic()
        await asyncio.sleep(0.5)


def _check_alive(stack: Stack) -> None:
    for process in (stack.operator, stack.facade):
        if process is not None:
            process.check_alive()


async def _wait_ready(facade: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with facade.get("/ready") as resp:
                body = await resp.json()
                if body.get("status") == "ready":
                    return
        except Exception as exc:
            body = {"error": str(exc)}
        if time.monotonic() > deadline:
            raise TimeoutError(f"the facade is not ready after {timeout:.0f}s: {body}")
        await asyncio.sleep(0.5)


async def _quiesce(stack: Stack, heartbeats: Heartbeats) -> dict[str, float]:
    """Stop heartbeats, wait until the operator has observed every write (its counter holds
    still), and read the books. The pause is about two seconds: far below the margin
    between the interval and unreachable-after."""
    await heartbeats.stop()
    previous = -1.0
    rows: list[tuple[str, dict[str, str], float]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = await asyncio.to_thread(stack.operator_metrics)
        observed = metric_sum(rows, "agent_registry_heartbeats_observed_total")
        if observed == previous:
            break
        previous = observed
        await asyncio.sleep(0.7)
    return {
        "observed": metric_sum(rows, "agent_registry_heartbeats_observed_total"),
        "observed_lease": metric_sum(rows, "agent_registry_heartbeats_observed_total", via="lease"),
        "observed_status": metric_sum(rows, "agent_registry_heartbeats_observed_total", via="status"),
        "writes": float(sum(heartbeats.writes.values())),
        "acknowledged": float(heartbeats.totals.ok),
        "failed": float(heartbeats.totals.failed),
        "sent": float(heartbeats.totals.sent),
        "to_unreachable": metric_sum(rows, "agent_registry_phase_transitions_total", to_phase="Unreachable"),
        "at": time.monotonic(),
    }


def _books(
    before: dict[str, float],
    after: dict[str, float],
    heartbeats: Heartbeats,
    phases: dict[str, Any],
    first_metrics: list[tuple[str, dict[str, str], float]],
) -> dict[str, Any]:
    acknowledged = after["acknowledged"] - before["acknowledged"]
    writes = after["writes"] - before["writes"]
    observed = after["observed"] - before["observed"]
    failed = after["failed"] - before["failed"]
    marked = phases["unreachable"]["marked"]
    to_unreachable = after["to_unreachable"]  # since the operator's (cold) start
    first_start = metric_sum(first_metrics, "agent_registry_phase_transitions_total", to_phase="Unreachable")
    return {
        "window_seconds": round(after["at"] - before["at"], 1),
        "heartbeats_sent": int(after["sent"] - before["sent"]),
        "heartbeats_acknowledged": int(acknowledged),
        "heartbeats_failed": int(failed),
        # What the operator should observe: each acknowledged write (a Lease renewal, a status
        # patch with the heartbeat fields, a REST heartbeat's one write).
        "heartbeat_writes_acknowledged": int(writes),
        "heartbeats_observed_by_operator": int(observed),
        "observed_as_lease_renewals": int(after["observed_lease"] - before["observed_lease"]),
        "observed_as_status_changes": int(after["observed_status"] - before["observed_status"]),
        # A failed request may still have been written (a timeout after the write): observed > acknowledged.
        "heartbeats_lost": int(failed + max(0.0, writes - observed)),
        "unreachable_transitions": int(to_unreachable),
        "unreachable_expected": marked,
        "false_unreachable": int(max(0.0, to_unreachable - marked) + first_start),
    }


async def _final_phases(api: Any) -> dict[str, int]:
    """Every agent's phase at the end, from a paginated LIST."""
    counts: dict[str, int] = {}
    params = {"limit": "500"}
    while True:
        async with api.get(AGENTS_PATH.format(ns=NAMESPACE), params=params) as resp:
            page = await resp.json()
        for item in page.get("items") or []:
            phase = (item.get("status") or {}).get("phase") or "none"
            counts[phase] = counts.get(phase, 0) + 1
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return counts
        params = {"limit": "500", "continue": token}


def _heartbeat_line(heartbeats: Heartbeats) -> str:
    parts = [f"heartbeats sent {heartbeats.totals.sent} ok {heartbeats.totals.ok} failed {heartbeats.totals.failed}"]
    for name, recorder in heartbeats.recorders.items():
        if recorder.latencies:
            parts.append(f"{name} p99 {ms(percentile(recorder.latencies[-5000:], 99))} ms")
    return ", ".join(parts)


def _etcd_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    delta = {key: after[key] - before[key] for key in before}
    delta["db_total_size_bytes_after"] = after["db_total_size_bytes"]
    return delta


def _loadavg() -> list[float]:
    with open("/proc/loadavg") as fh:
        return [float(v) for v in fh.read().split()[:3]]


def _peaks(sampler: Sampler) -> dict[str, float]:
    peaks: dict[str, float] = {}
    for sample in sampler.samples:
        for name, value in sample.rss.items():
            peaks[name] = max(peaks.get(name, 0.0), value)
    return {name: round(value, 1) for name, value in peaks.items()}


# --- profiling ------------------------------------------------------------------------------------------


def _start_profile(stack: Stack, options: Options, phase: str, n: int) -> list[Any]:
    """py-spy on the operator and the facade for the first ``profile_seconds`` of a phase."""
    if options.profile_seconds <= 0 or not options.profile_dir:
        return []
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    started = []
    for name, process in (("operator", stack.operator), ("facade", stack.facade)):
        if process is None or process.pid is None:
            continue
        out = os.path.join(options.profile_dir, f"{name}-{phase}-{n}.txt")
        argv = [spy, "record", "--pid", str(process.pid), "--duration", str(int(options.profile_seconds))]
        # --gil: only samples holding the GIL, i.e. Python code using the CPU (a starved or
        # waiting thread is not counted), so the shares are shares of the process's CPU.
        argv += ["--format", "raw", "--output", out, "--rate", "50", "--nonblocking", "--gil"]
        started.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return started


def _finish_profile(started: list[Any]) -> None:
    for proc in started:
        try:
            proc.wait(timeout=30)
        except Exception:
            proc.kill()


# --- discovery --------------------------------------------------------------------------------------------


async def _discovery(
    stack: Stack, sampler: Sampler, fleet: Fleet, facade: Any, api: Any, options: Options
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    rate = options.discovery_rate
    series = [
        ("query_selective", "/agents", fleet.selective_query),
        ("route_selective", "/agents/route", fleet.selective_query),
        ("query_broad", "/agents", fleet.broad_query),
        ("route_broad", "/agents/route", fleet.broad_query),
    ]
    # Saturation: how many answers per second the facade gives with 32 callers back to back.
    # Measured first, while no backlog from an overloaded fixed-rate series lingers.
    profile = _start_profile(stack, options, "discovery", fleet.n)
    for name, path, query in series[:2]:
        await _settle_facade(facade, path, query)
        recorder = Recorder(f"{name}_saturation")

        async def once(recorder: Recorder = recorder, path: str = path, query: Any = query) -> None:
            await timed(recorder, lambda: request(facade, "GET", path, params=query, timeout=DISCOVERY_TIMEOUT))

        sampler.mark(f"saturation_{name}")
        await closed_loop(32, options.saturation_seconds, once)
        recorder.close()
        sampler.end(f"saturation_{name}")
        result[f"{name}_saturation"] = {**recorder.summary(), "usage": sampler.summary(f"saturation_{name}")}
        progress(f"  {name} saturation: {recorder.summary()['throughput_per_s']}/s")
    _finish_profile(profile)

    for name, path, query in series:
        progress(
            f"N={fleet.n}: discovery {name}: GET {path}?{_qs(query)} "
            f"at {rate:.0f}/s for {options.discovery_seconds:.0f}s"
        )
        await _settle_facade(facade, path, query)
        checked = await _check_answer(facade, path, query, fleet)
        recorder = Recorder(name)

        async def fire(k: int, due: float, recorder: Recorder = recorder, path: str = path, query: Any = query) -> None:
            recorder.send_lags.append(max(0.0, time.monotonic() - due))
            await timed(recorder, lambda: request(facade, "GET", path, params=query, timeout=DISCOVERY_TIMEOUT))

        sampler.mark(f"discovery_{name}")
        # At most as many requests outstanding as the client has connections: a facade slower
        # than the offered rate is then driven at its capacity (and the generator falls behind,
        # which the send lag and the served share show) instead of buried under a backlog.
        await fixed_rate(rate, options.discovery_seconds, fire, max_in_flight=QUERY_CONNECTIONS)
        recorder.close()
        sampler.end(f"discovery_{name}")
        result[name] = {
            "offered_per_s": rate,
            **recorder.summary(),
            "answer": checked,
            "usage": sampler.summary(f"discovery_{name}"),
        }
        progress(
            f"  {name}: p50 {result[name]['p50_ms']} ms, p99 {result[name]['p99_ms']} ms, "
            f"{result[name]['throughput_per_s']}/s, errors {result[name]['errors']}"
        )

    # The same question asked of the API server: LIST by the type label, filter capabilities here.
    for name, query in (("selective", fleet.selective_query), ("broad", fleet.broad_query)):
        recorder = Recorder(f"api_list_{name}")
        found: list[int] = []

        async def once(recorder: Recorder = recorder, query: Any = query, found: list[int] = found) -> None:
            started = time.monotonic()
            try:
                matches = await _api_list(api, query)
            except Exception as exc:
                recorder.failure(type(exc).__name__)
                return
            recorder.success(time.monotonic() - started)
            found.append(matches)

        sampler.mark(f"api_list_{name}")
        await closed_loop(4, options.saturation_seconds, once)
        recorder.close()
        sampler.end(f"api_list_{name}")
        result[f"api_list_{name}"] = {
            **recorder.summary(),
            "matches": found[0] if found else None,
            "usage": sampler.summary(f"api_list_{name}"),
        }
        progress(f"  API server LIST ({name}): {recorder.summary()['throughput_per_s']}/s")
    facade_best = result["query_selective_saturation"]["throughput_per_s"] or 0.0
    api_best = result["api_list_selective"]["throughput_per_s"] or 0.0
    result["throughput_ratio_selective"] = round(facade_best / api_best, 1) if api_best else None
    return result


async def _settle_facade(facade: Any, path: str, query: dict[str, str], timeout: float = 60.0) -> None:
    """Wait until the facade answers a query within a second again (after an overload)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            status, _ = await request(facade, "GET", path, params=query, timeout=5)
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        if status in (200, 404) and time.monotonic() - started < 1.0:
            return
        await asyncio.sleep(1)
    progress("  the facade is still slow after 60 s; measuring anyway")


def _qs(query: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in query.items())


async def _check_answer(facade: Any, path: str, query: dict[str, str], fleet: Fleet) -> dict[str, Any]:
    """One answer, checked against the fleet: the count of a list, the type of a route."""
    try:
        async with facade.get(path, params=query) as resp:
            status = resp.status
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    expected = fleet.expected_matches(query)
    if path.endswith("/route"):
        return {"status": status, "picked_type_ok": status == 200 and body.get("type") == query["type"]}
    return {"status": status, "count": body.get("count"), "expected": expected, "bytes": len(json.dumps(body))}


async def _api_list(api: Any, query: dict[str, str]) -> int:
    params = {"labelSelector": f"registry.optiinfra.io/type={query['type']}", "limit": "500"}
    matches = 0
    while True:
        async with api.get(AGENTS_PATH.format(ns=NAMESPACE), params=params) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            page = await resp.json()
        matches += sum(1 for item in page["items"] if query["capability"] in item["spec"].get("capabilities", []))
        token = page["metadata"].get("continue")
        if not token:
            return matches
        params = {**params, "continue": token}


# --- unreachable detection --------------------------------------------------------------------------------


async def _unreachable(api: Any, fleet: Fleet, heartbeats: Heartbeats, options: Options) -> dict[str, Any]:
    names = {fleet.names[i]: i for i in fleet.sample}
    watch = AgentWatch(api, NAMESPACE, label_selector=f"{SAMPLE_LABEL}=true").start()
    deadline = time.monotonic() + 30
    while len(watch.phases) < len(names) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    progress(
        f"N={fleet.n}: unreachable detection: {len(names)} agents fall silent "
        f"(unreachable after {fleet.timing.unreachable_after}s, sweep {options.sweep_seconds:g}s)"
    )
    heartbeats.silenced = set(names.values())
    limit = fleet.timing.interval + fleet.timing.unreachable_after + options.sweep_seconds + 30
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not set(names) <= set(watch.unreachable_at):
        await asyncio.sleep(0.2)
    await watch.stop()
    delays = [
        watch.unreachable_at[name] - heartbeats.last_ack[i]
        for name, i in names.items()
        if name in watch.unreachable_at and heartbeats.last_ack[i] > 0
    ]
    target = fleet.timing.unreachable_after + options.sweep_seconds + 2
    result = {
        "sample": len(names),
        "marked": len(set(names) & set(watch.unreachable_at)),
        "not_marked": sorted(set(names) - set(watch.unreachable_at)),
        "detection_p50_s": _round(percentile(delays, 50)),
        "detection_p99_s": _round(percentile(delays, 99)),
        "detection_max_s": _round(max(delays) if delays else None),
        "detection_min_s": _round(min(delays) if delays else None),
        "target_s": target,
    }
    progress(
        f"  detected {result['marked']}/{len(names)}: p50 {result['detection_p50_s']} s, "
        f"p99 {result['detection_p99_s']} s (target {target:g} s)"
    )
    return result


async def _recover(api: Any, fleet: Fleet, heartbeats: Heartbeats) -> float | None:
    """Let the silenced agents beat again; seconds until a watch sees none Unreachable
    (None if some still are after an interval and unreachable-after)."""
    watch = AgentWatch(api, NAMESPACE, label_selector=f"{SAMPLE_LABEL}=true").start()
    started = time.monotonic()
    heartbeats.silenced.clear()
    limit = fleet.timing.interval + fleet.timing.unreachable_after
    try:
        while time.monotonic() - started < limit:
            await asyncio.sleep(0.5)
            if len(watch.phases) >= len(fleet.sample) and watch.count("Unreachable") == 0:
                return round(time.monotonic() - started, 1)
        progress(f"  {watch.count('Unreachable')} sampled agents still Unreachable after {limit}s")
        return None
    finally:
        await watch.stop()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# --- sidecar ---------------------------------------------------------------------------------------------------


def _sidecar_rss(stack: Stack, sampler: Sampler, seconds: float = 15.0) -> dict[str, Any]:
    """One real sidecar (``python -m agent_sidecar``) beside a fake agent: its RSS after a few heartbeats."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": "healthy"}')

        def log_message(self, *_: Any) -> None:
            return

    server = ThreadingHTTPServer((LOOPBACK, 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    process = SidecarProcess(
        stack.workdir / "logs",
        agent_name="bench-sidecar-agent",
        agent_type="cost",
        port=port,
        namespace=NAMESPACE,
        kubeconfig=stack.controlplane.kubeconfig,
        timings=HeartbeatTimings(interval_seconds=2, unreachable_after_seconds=10),
        pod_name="bench-sidecar-pod",
        capabilities=["spot_migration", "rightsizing"],
        health_url=f"http://{LOOPBACK}:{port}/health",
    )
    log = process.log_path
    progress(f"sidecar: one sidecar with a fake agent for {seconds:.0f}s")
    process.start()
    sampler.watch("sidecar", process.pid)
    peak = 0.0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            process.check_alive()
            peak = max(peak, rss_mb(process.pid or 0) or 0.0)
            time.sleep(0.5)
        last = rss_mb(process.pid or 0) or 0.0
    finally:
        process.stop()
        sampler.watch("sidecar", None)
        server.shutdown()
    heartbeat_lines = sum(1 for line in log.read_text(errors="replace").splitlines() if "heartbeat" in line.lower())
    return {"rss_mb_peak": round(peak, 1), "rss_mb_last": round(last, 1), "log_lines_about_heartbeats": heartbeat_lines}


# --- the Lease path ----------------------------------------------------------------------------------------------


async def _lease_path(
    stack: Stack, sampler: Sampler, api: Any, control: Any, n: int, options: Options
) -> dict[str, Any]:
    progress(f"N={n}: Lease path: stopping the facade and the operator, creating {n} Leases")
    await asyncio.to_thread(stack.stop_facade)
    await asyncio.to_thread(stack.stop_operator)
    created = await create_leases(control, NAMESPACE, n)
    stop = asyncio.Event()
    watcher = asyncio.create_task(drain_watch(control, LEASES_PATH.format(ns=NAMESPACE), stop))
    await asyncio.sleep(1)
    idle: dict[str, Any] = {}
    if options.idle_seconds > 0:
        progress(f"  nothing written for {options.idle_seconds:.0f}s (the API server's fixed cost)")
        etcd_before = stack.etcd_figures()
        api_before = await asyncio.to_thread(stack.apiserver_requests)
        sampler.mark("idle")
        await asyncio.sleep(options.idle_seconds)
        sampler.end("idle")
        idle = {
            "usage": sampler.summary("idle"),
            "etcd": _etcd_delta(etcd_before, stack.etcd_figures()),
            "api_requests": _delta(api_before, await asyncio.to_thread(stack.apiserver_requests), moved_only=True),
        }
    renewals = LeaseRenewals(api, NAMESPACE, n, options.interval)
    progress(f"  renewing {n} Leases at {renewals.rate:.0f}/s for {options.lease_seconds:.0f}s (one watcher)")
    etcd_before = stack.etcd_figures()
    api_before = await asyncio.to_thread(stack.apiserver_requests)
    sampler.mark("lease_path")
    summary = await renewals.run(options.lease_seconds)
    sampler.end("lease_path")
    etcd_after = stack.etcd_figures()
    api_after = await asyncio.to_thread(stack.apiserver_requests)
    stop.set()
    events = await asyncio.gather(watcher, return_exceptions=True)
    return {
        "create": created,
        "idle": idle,
        "requests": summary,
        "usage": sampler.summary("lease_path"),
        "etcd": _etcd_delta(etcd_before, etcd_after),
        "api_requests": _delta(api_before, api_after, moved_only=True),
        "watch_events": events[0] if isinstance(events[0], int) else str(events[0]),
    }
