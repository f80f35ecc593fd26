"""Open watch streams (``GET /agents/watch``) against the real stack: the facade's memory and
CPU with none and with W open in the same run, and how long a change takes to reach every
one of them.

    python -m bench.watches --watches 1000 --agents 500 --changes 20

The stack is ``bench.stack``'s (API server, etcd, Redis, operator, facade with
authentication on). N agents register through REST and stay healthy (a long unreachable
window, so no phase change comes but the ones the benchmark makes). Then, in order:
  1. idle: the facade with no watch, for ``--hold`` seconds;
  2. open: W watches connect, 50 at a time (each gets a snapshot of the N agents), and
     stay open for ``--hold`` seconds;
  3. changes: one agent after another reports degraded (or healthy again), ``--spacing``
     seconds apart; each change is a phase event every watch receives, and its delay is
     taken from the heartbeat's request to the event's arrival at each watch.
The watch clients are raw asyncio sockets in this process, reading lines: cheap enough
that a thousand of them on the same two cores measure the facade more than themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.procs import Sampler
from bench.run import experiment_meta, other_work
from bench.stack import Stack, progress

NAMESPACE = "bench-watches"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_RSS_MB = 150.0
_OPEN_BATCH = 50


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.watches", description=__doc__.split("\n\n")[0])
    parser.add_argument("--watches", type=int, default=1000, help="watch streams to hold open (default 1000)")
    parser.add_argument("--agents", type=int, default=500, help="agents registered, each in every snapshot")
    parser.add_argument("--changes", type=int, default=20, help="phase changes sent through the open watches")
    parser.add_argument("--spacing", type=float, default=0.5, help="seconds between two changes")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds each steady phase lasts")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", help="results file name without suffix (default: date and sizes)")
    options = parser.parse_args(argv)
    if options.watches < 1 or options.agents < 1 or options.changes < 1:
        parser.error("--watches, --agents and --changes must be at least 1")
    return options


class Watcher:
    """One watch client: a socket reading the stream, noting when each marked event arrives."""

    def __init__(self) -> None:
        self.snapshot_at: float | None = None
        self.arrivals: dict[str, float] = {}
        self.events = 0
        self.ended: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=1 << 22)
        self._writer = writer
        writer.write(
            f"GET /agents/watch HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"watch refused: {status.decode().strip()} {(await reader.read(500)).decode()}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        # Chunked transfer: chunk sizes arrive as lines of their own and are skipped with the rest.
        kind = b""
        try:
            while line := await reader.readline():
                if line.startswith(b"event: "):
                    kind = line[7:].strip()
                elif line.startswith(b"data: "):
                    self.events += 1
                    now = time.monotonic()
                    if kind == b"snapshot" and self.snapshot_at is None:
                        self.snapshot_at = now
                    elif kind == b"phase":
                        # The agent's name: the first "name" in the event is the agent's own.
                        marker = line.split(b'"name":"', 1)[-1].split(b'"', 1)[0].decode()
                        self.arrivals[marker] = now
            self.ended = "closed by the facade"
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.ended = f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()


def agent_name(i: int) -> str:
    return f"watched-{i:05d}"


async def register_agents(client: httpx.AsyncClient, n: int) -> dict[str, str]:
    ids: dict[str, str] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = {"name": agent_name(i), "type": "cost", "host": "10.0.0.7", "port": 8000 + i % 1000}
            body |= {"capabilities": ["rightsizing"], "version": "1.0.0"}
            response = await client.post("/agents/register", json=body)
            response.raise_for_status()
            ids[agent_name(i)] = response.json()["agent_id"]

    await asyncio.gather(*(worker() for _ in range(16)))
    return ids


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def measure(options: argparse.Namespace, sampler: Sampler) -> dict[str, Any]:
    stack = Stack(NAMESPACE, sampler)
    result: dict[str, Any] = {"watches": options.watches, "agents": options.agents, "other_work": other_work()}
    watchers: list[Watcher] = []
    try:
        stack.start()
        stack.start_operator()
        await asyncio.to_thread(stack.wait_operator)
        settings = {
            "watch_max_open": str(options.watches + 10),
            "heartbeat_interval_seconds": "600",
            "unreachable_after_seconds": "3600",
        }
        stack.start_facade(settings)
        await asyncio.to_thread(stack.wait_facade)
        headers = {"Authorization": f"Bearer {stack.token}"}
        async with httpx.AsyncClient(base_url=stack.facade_url, headers=headers, timeout=30, trust_env=False) as http:
            progress(f"registering {options.agents} agents")
            ids = await register_agents(http, options.agents)
            while (await http.get("/agents")).json()["count"] < options.agents:
                await asyncio.sleep(0.5)

            sampler.mark("idle")
            await asyncio.sleep(options.hold)
            sampler.end("idle")

            progress(f"opening {options.watches} watches")
            sampler.mark("open")
            started = time.monotonic()
            for first in range(0, options.watches, _OPEN_BATCH):
                batch = [Watcher() for _ in range(min(_OPEN_BATCH, options.watches - first))]
                await asyncio.gather(*(w.open(stack.facade_url, stack.token) for w in batch))
                watchers.extend(batch)
                while any(w.snapshot_at is None and w.ended is None for w in batch):
                    await asyncio.sleep(0.02)
            result["open_seconds"] = round(time.monotonic() - started, 2)
            progress(f"  {len(watchers)} open in {result['open_seconds']} s; holding {options.hold} s")
            await asyncio.sleep(options.hold)
            sampler.end("open")

            progress(f"sending {options.changes} phase changes through them")
            sampler.mark("changes")
            delays: list[float] = []
            per_change: list[dict[str, Any]] = []
            names = list(ids)
            for k in range(options.changes):
                name = names[k % len(names)]
                status = "degraded" if (k // len(names)) % 2 == 0 else "healthy"
                for w in watchers:
                    w.arrivals.pop(name, None)
                # From the request: the event may reach a watch before the heartbeat's answer does.
                sent = time.monotonic()
                response = await http.post(f"/agents/{ids[name]}/heartbeat", json={"status": status})
                response.raise_for_status()
                deadline = sent + 30
                while time.monotonic() < deadline and any(name not in w.arrivals for w in watchers if not w.ended):
                    await asyncio.sleep(0.01)
                got = [w.arrivals[name] - sent for w in watchers if name in w.arrivals]
                delays.extend(got)
                per_change.append({"agent": name, "received_by": len(got), **quantiles(got)})
                await asyncio.sleep(options.spacing)
            sampler.end("changes")
            result["fan_out"] = {**quantiles(delays), "changes": per_change}
            result["watchers_ended"] = sum(1 for w in watchers if w.ended)
            metrics = await asyncio.to_thread(stack.facade_metrics)
            result["facade_metrics"] = {
                name: value
                for name, _labels, value in metrics
                if name.startswith("agent_registry_facade_watch") or name == "process_resident_memory_bytes"
            }
    finally:
        for w in watchers:
            await w.close()
        stack.close()
    for phase in ("idle", "open", "changes"):
        result[phase] = sampler.summary(phase)
    result["figures"] = figures(result)
    return result


def figures(result: dict[str, Any]) -> dict[str, Any]:
    def facade(phase: str, key: str) -> float | None:
        value = result.get(phase, {}).get("processes", {}).get("facade", {}).get(key)
        return float(value) if value is not None else None

    idle, held = facade("idle", "rss_mb_last"), facade("open", "rss_mb_last")
    peak = max(v for v in (facade("open", "rss_mb_peak"), facade("changes", "rss_mb_peak"), 0.0) if v is not None)
    per_watch = round((held - idle) * 1024 / result["watches"], 1) if idle is not None and held is not None else None
    fan_out = result.get("fan_out", {})
    return {
        "facade_rss_mb_idle": idle,
        "facade_rss_mb_with_watches": held,
        "facade_rss_mb_peak": peak,
        "kb_per_watch": per_watch,
        "rss_target_mb": TARGET_RSS_MB,
        "rss_target_met": peak <= TARGET_RSS_MB,
        "facade_cpu_cores_open": facade("open", "cpu_cores_avg"),
        "facade_cpu_cores_changes": facade("changes", "cpu_cores_avg"),
        "fan_out_p50_ms": fan_out.get("p50_ms"),
        "fan_out_p99_ms": fan_out.get("p99_ms"),
        "every_change_reached_every_watch": all(
            c["received_by"] == result["watches"] for c in fan_out.get("changes", [])
        ),
        "watchers_ended": result.get("watchers_ended"),
    }


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"# Watch streams — {meta['started']}",
        "",
        f"`{meta['command']}` at {meta['commit']}{' (uncommitted changes)' if meta['uncommitted'] else ''}",
        "",
        "| W watches | N agents | facade RSS idle | with W open | peak | per watch | target | "
        "CPU open / changes | fan-out p50 / p99 | every change reached every watch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    run = results["run"]
    if "error" in run:
        return "\n".join([*lines, "", f"failed: {run['error']}", ""])
    f = run["figures"]
    lines.append(
        f"| {run['watches']} | {run['agents']} | {f['facade_rss_mb_idle']} MB | {f['facade_rss_mb_with_watches']} MB "
        f"| {f['facade_rss_mb_peak']} MB | {f['kb_per_watch']} KB | ≤ {f['rss_target_mb']:.0f} MB "
        f"{'✓' if f['rss_target_met'] else '✗'} | {f['facade_cpu_cores_open']} / {f['facade_cpu_cores_changes']} "
        f"| {f['fan_out_p50_ms']} / {f['fan_out_p99_ms']} ms "
        f"| {'yes' if f['every_change_reached_every_watch'] else 'no'} |"
    )
    ended = f["watchers_ended"]
    lines += ["", f"W watches opened in {run.get('open_seconds')} s; streams that ended early: {ended}.", ""]
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    name = options.name or f"{datetime.now(UTC):%Y-%m-%d}-watches-w{options.watches}-n{options.agents}"
    options.results_dir.mkdir(parents=True, exist_ok=True)
    path = options.results_dir / f"{name}.json"
    results: dict[str, Any] = {
        "meta": experiment_meta("bench.watches", argv, options),
    }
    sampler = Sampler().start()
    sampler.watch("bench", os.getpid())  # the watch clients share the 2 cores
    failed = False
    try:
        results["run"] = asyncio.run(measure(options, sampler))
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    except Exception as exc:
        failed = True
        results["run"] = {"error": f"{type(exc).__name__}: {exc}"}
        progress(f"failed: {exc!r}")
    finally:
        sampler.stop()
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    path.with_suffix(".md").write_text(markdown(results))
    print(path.with_suffix(".md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
