"""Measure the operator at N agents: cold start to a complete index, RSS, CPU, and the
cost of staying idle with N agents heartbeating into nothing (all silent, all tracked).

Starts its own local control plane and Redis (the same code the tests use), creates N
Agents, starts the operator and samples it. Prints its figures and writes JSON.

    python bench/operator_cold_start.py --agents 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent_registry.index import IndexReader, IndexUnavailable, connect
from agent_registry.kubeapi import paths
from agent_registry.kubeapi.sync import SyncApi
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import OperatorProcess
from agent_registry.localcluster.redis_server import LocalRedis
from agent_registry.schema import constants as c

REPO = Path(__file__).resolve().parent.parent


def rss_and_cpu(pid: int) -> tuple[float, float]:
    """RSS in MB and CPU seconds (user+system) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as fh:
        rss_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / ticks


def create_agents(api: SyncApi, namespace: str, count: int) -> float:

    def create(i: int) -> None:
        body = {
            "apiVersion": c.API_VERSION,
            "kind": c.KIND,
            "metadata": {"name": f"agent-{i:05d}"},
            "spec": {
                "type": c.KNOWN_AGENT_TYPES[i % 4],
                "host": f"10.1.{i // 250}.{i % 250}",
                "port": 8000 + i % 100,
                "capabilities": [f"cap{i % 7}", f"cap{i % 11}"] if i % 7 != i % 11 else [f"cap{i % 7}"],
                # Long silence windows: the measurement is of tracking, not of marking.
                "heartbeat": {"intervalSeconds": 30, "unreachableAfterSeconds": 3600, "gcAfterSeconds": 86400},
            },
        }
        api.create(paths.agents(namespace), body)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        for n, _ in enumerate(pool.map(create, range(count)), 1):
            if n % 1000 == 0:
                print(f"  created {n}/{count} agents", file=sys.stderr, flush=True)
    return time.monotonic() - started


async def indexed_count(redis_url: str, prefix: str, namespace: str) -> int:
    reader = IndexReader(connect(redis_url), prefix=prefix)
    try:
        return len(await reader.query(namespace))
    except IndexUnavailable:
        return 0
    finally:
        await reader.redis.aclose()


def stop(operator: OperatorProcess) -> float:
    """SIGTERM and time the graceful exit; a pod gets 30 s before SIGKILL."""
    started = time.monotonic()
    operator.send_signal(signal.SIGTERM)
    try:
        operator.wait(timeout=10)
    except subprocess.TimeoutExpired:
        # Slow exit: ask the operator what its tasks wait on (SIGUSR1 dumps them to the log).
        operator.send_signal(signal.SIGUSR1)
        operator.stop(grace_seconds=110)
        dumped = [line for line in operator.logs().splitlines() if "agent_registry.tasks" in line]
        print("\n".join(dumped[:60]), file=sys.stderr)
    operator.stop()  # gone already; forgets it and anything it forked
    return time.monotonic() - started


async def flush(redis_url: str) -> None:
    redis = connect(redis_url)
    await redis.flushall()
    await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="how long to sample after the index is built")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    namespace = "bench"
    prefix = "bench"
    with LocalControlPlane() as cp, LocalRedis() as redis_server, tempfile.TemporaryDirectory() as tmp:
        api = cp.admin_api()
        cp.apply_crds(REPO / "crds")
        cp.create_namespace(namespace)
        print(f"creating {args.agents} agents", file=sys.stderr, flush=True)
        create_seconds = create_agents(api, namespace, args.agents)
        # No endpoints and no election: nothing but the work being measured.
        operator = OperatorProcess(
            Path(tmp),
            kubeconfig=cp.kubeconfig,
            redis_url=redis_server.url,
            namespaces=[namespace],
            redis_key_prefix=prefix,
            metrics_port=0,
            liveness_port=0,
            leader_election=False,
        )

        def initialised() -> int:
            return len(api.list(paths.agents(namespace), label_selector=c.AGENT_ID_LABEL))

        # First run: the operator initialises every new Agent (id, label, status, Event).
        print("first start: initialising the agents", file=sys.stderr, flush=True)
        operator.start()
        started = time.monotonic()
        while (done := initialised()) < args.agents:
            print(f"  initialised {done}/{args.agents}", file=sys.stderr, flush=True)
            time.sleep(2)
        init_seconds = time.monotonic() - started
        shutdown_seconds = stop(operator)
        asyncio.run(flush(redis_server.url))

        # Second run: a cold start with N existing Agents and an empty Redis.
        print("cold start with existing agents", file=sys.stderr, flush=True)
        operator.start()
        pid = operator.pid or 0
        try:
            started = time.monotonic()
            peak_rss = 0.0
            count = 0
            while count < args.agents:
                if not operator.running:
                    print(operator.log_tail(60), file=sys.stderr)
                    return 1
                time.sleep(1)
                rss, _ = rss_and_cpu(pid)
                peak_rss = max(peak_rss, rss)
                count = asyncio.run(indexed_count(redis_server.url, prefix, namespace))
                print(f"  indexed {count}/{args.agents}, operator RSS {rss:.0f} MB", file=sys.stderr, flush=True)
                if time.monotonic() - started > 600:
                    print("gave up after 600 s", file=sys.stderr)
                    return 1
            cold_start = time.monotonic() - started
            _, cpu_before = rss_and_cpu(pid)
            time.sleep(args.idle_seconds)
            rss_idle, cpu_after = rss_and_cpu(pid)
            figures: dict[str, float] = {
                "agents": args.agents,
                "create_seconds": round(create_seconds, 1),
                "first_start_initialise_all_seconds": round(init_seconds, 1),
                "first_start_shutdown_seconds": round(shutdown_seconds, 1),
                "cold_start_to_complete_index_seconds": round(cold_start, 1),
                "operator_peak_rss_mb_during_start": round(peak_rss, 1),
                "operator_rss_mb_idle": round(rss_idle, 1),
                "operator_idle_cpu_cores": round((cpu_after - cpu_before) / args.idle_seconds, 3),
            }
        finally:
            figures["operator_shutdown_seconds"] = round(stop(operator), 1)
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
