"""What makes an agent's Lease renewal dearer than a bare one: the same rate of renewals,
one variable changed at a time, on one control plane with nothing else running.

The benchmark (``python -m bench``) measures the new heartbeat path with the operator,
the facade and the sidecar's status refresh around it. This takes all of them away and
renews N Leases at N / interval per second, in turn:

1. ``bare``: a Lease with no owner, label or annotation, ``spec`` only (the floor);
2. ``agent_spec_only``: the agent's Lease (``schema.lease.build_lease``: owned by its
   Agent, labelled, annotated), a patch of ``spec`` only;
3. ``agent_renewal``: the same Lease renewed exactly as the sidecar does
   (``schema.lease.renewal_patch``: the owner reference in every patch, its field manager);
4. ``agent_renewal_watched``: as 3, plus a watch with the operator's label selector (the
   operator's Lease watch, without the operator);
5. ``bare_list_probed``: as 1, plus the operator's sight probe as it was (a one-item
   consistent LIST of Agents, once a second);
6. ``bare_get_probed``: as 1, plus a probe by a consistent GET of one Agent name, once a
   second.

One watcher on every Lease throughout (as on the floor), and kube-controller-manager's
garbage collector where the control plane runs one. Per variant: API-server CPU per
renewal, etcd bytes per renewal, latency.

    python bench/lease_shapes.py --agents 1000 --seconds 20 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_registry.kubeapi import paths
from agent_registry.schema import constants as c
from agent_registry.schema import lease
from bench.fleet import (
    LEASES_PATH,
    MERGE_PATCH,
    SIDECAR_PARAMS,
    SOURCE,
    Fleet,
    Timing,
    create_agent_leases,
    create_agents,
    create_leases,
    drain_watch,
)
from bench.load import Recorder, fixed_rate, request, session, timed
from bench.procs import Sampler
from bench.report import _fmt
from bench.run import RESULTS, machine, uncommitted
from bench.stack import CLIENT_ACCOUNT, Stack, progress

NAMESPACE = "bench"
Patch = Callable[[int], tuple[str, dict[str, Any], dict[str, str] | None]]


def _now() -> str:
    return lease.micro_time(datetime.now(UTC))


async def _renew(api: Any, n: int, rate: float, seconds: float, patch: Patch) -> dict[str, Any]:
    recorder = Recorder("renewals")

    async def fire(k: int, due: float) -> None:
        path, body, params = patch(k % n)
        recorder.send_lags.append(max(0.0, time.monotonic() - due))
        await timed(
            recorder,
            lambda: request(api, "PATCH", path, json_body=body, content_type=MERGE_PATCH, params=params),
        )

    await fixed_rate(rate, seconds, fire)
    recorder.close()
    return recorder.summary()


def _watch_selected(api: Any, stop: asyncio.Event) -> Coroutine[Any, Any, int]:
    """A watch on the agents' Leases only, as the operator's (server-side label selector)."""
    return drain_watch(api, LEASES_PATH.format(ns=NAMESPACE), stop, label_selector=c.AGENT_LEASE_LABEL)


async def _probe(api: Any, stop: asyncio.Event, path: str, params: dict[str, str] | None) -> int:
    """Once a second, as the operator's sight probe; an answer (404 included) counts."""
    answered = 0
    while not stop.is_set():
        status, _ = await request(api, "GET", path, params=params)
        answered += status in (200, 404)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
    return answered


Alongside = Callable[[Any, asyncio.Event], Coroutine[Any, Any, int]] | None


async def measure(n: int, seconds: float, interval: float, rounds: int, only: set[str] | None = None) -> dict[str, Any]:
    sampler = Sampler().start()
    stack = Stack(NAMESPACE, sampler)
    result: dict[str, Any] = {
        "agents": n,
        "seconds": seconds,
        "rounds": rounds,
        "rate": round(n / interval, 1),
        "variants": {},
    }
    try:
        stack.start()
        api = session(stack.api_url, token=stack.token, ssl_context=stack.api_ssl_context(), connections=256)
        control = session(stack.api_url, token=stack.token, ssl_context=stack.api_ssl_context(), connections=16)
        fleet = Fleet(n, NAMESPACE, Timing(interval=int(interval)))
        progress(f"creating {n} agents")
        await create_agents(control, fleet)
        await asyncio.to_thread(stack.wait_gc_watches_crds)
        progress(f"creating {n} agents' Leases and {n} bare Leases")
        await create_agent_leases(control, fleet, f"system:serviceaccount:{NAMESPACE}:{CLIENT_ACCOUNT}")
        await create_leases(control, NAMESPACE, n)
        stop = asyncio.Event()
        watcher = asyncio.create_task(drain_watch(control, LEASES_PATH.format(ns=NAMESPACE), stop))
        await asyncio.sleep(5)

        def bare(i: int) -> tuple[str, dict[str, Any], dict[str, str] | None]:
            body = {"spec": {"renewTime": _now(), "holderIdentity": f"agent-{i:05d}"}}
            return f"{LEASES_PATH.format(ns=NAMESPACE)}/agent-{i:05d}", body, None

        def spec_only(i: int) -> tuple[str, dict[str, Any], dict[str, str] | None]:
            spec = lease.renewal(SOURCE, fleet.timing.unreachable_after, datetime.now(UTC))
            return paths.leases(NAMESPACE, lease.lease_name(fleet.names[i])), {"spec": spec}, SIDECAR_PARAMS

        def renewal(i: int) -> tuple[str, dict[str, Any], dict[str, str] | None]:
            spec = lease.renewal(SOURCE, fleet.timing.unreachable_after, datetime.now(UTC))
            body = lease.renewal_patch(fleet.names[i], fleet.uids[i], spec)
            return paths.leases(NAMESPACE, lease.lease_name(fleet.names[i])), body, SIDECAR_PARAMS

        agents = paths.agents(NAMESPACE)

        def list_probe(api: Any, stop: asyncio.Event) -> Coroutine[Any, Any, int]:
            return _probe(api, stop, agents, {"limit": "1"})

        def get_probe(api: Any, stop: asyncio.Event) -> Coroutine[Any, Any, int]:
            return _probe(api, stop, f"{agents}/sight-probe", None)

        variants: list[tuple[str, Patch, Alongside]] = [
            ("bare", bare, None),
            ("agent_spec_only", spec_only, None),
            ("agent_renewal", renewal, None),
            ("agent_renewal_watched", renewal, _watch_selected),
            ("bare_list_probed", bare, list_probe),
            ("bare_get_probed", bare, get_probe),
        ]
        variants = [variant for variant in variants if only is None or variant[0] in only or variant[0] == "bare"]
        # Interleaved rounds, so that the machine's noise (it is shared) falls on every
        # variant alike; each variant's figures are summed over its rounds.
        totals: dict[str, dict[str, Any]] = {name: _empty() for name, _, _ in variants}
        for round_ in range(rounds):
            for name, patch, alongside in variants:
                second: asyncio.Task[int] | None = None
                stop_second = asyncio.Event()
                if alongside is not None:
                    second = asyncio.create_task(alongside(control, stop_second))
                    await asyncio.sleep(2)
                progress(f"round {round_ + 1}/{rounds}, {name}: {n / interval:.0f} renewals/s for {seconds:.0f}s")
                etcd_before = stack.etcd_figures()
                api_before = await asyncio.to_thread(stack.apiserver_requests)
                mark = f"{name}-{round_}"
                sampler.mark(mark)
                summary = await _renew(api, n, n / interval, seconds, patch)
                sampler.end(mark)
                etcd_after = stack.etcd_figures()
                api_after = await asyncio.to_thread(stack.apiserver_requests)
                if second is not None:
                    stop_second.set()
                    await asyncio.gather(second, return_exceptions=True)
                _add(totals[name], summary, sampler.summary(mark), etcd_before, etcd_after, api_before, api_after)
                await asyncio.sleep(2)
        for name, total in totals.items():
            result["variants"][name] = _figures(total)
        stop.set()
        await asyncio.gather(watcher, return_exceptions=True)
        await api.close()
        await control.close()
    finally:
        stack.close()
        sampler.stop()
    return result


def _empty() -> dict[str, Any]:
    return {"ok": 0, "failed": 0, "seconds": 0.0, "cpu": {}, "etcd_bytes": 0.0, "requests": {}, "p50": [], "p99": []}


def _add(
    total: dict[str, Any],
    summary: dict[str, Any],
    usage: dict[str, Any],
    etcd_before: dict[str, Any],
    etcd_after: dict[str, Any],
    api_before: dict[str, float],
    api_after: dict[str, float],
) -> None:
    """One round of a variant added to its totals: CPU seconds per process, etcd bytes, requests."""
    total["ok"] += summary["ok"]
    total["failed"] += sum(summary["errors"].values())
    total["seconds"] += usage["seconds"]
    for process, figures in usage["processes"].items():
        total["cpu"][process] = total["cpu"].get(process, 0.0) + figures["cpu_cores_avg"] * usage["seconds"]
    total["etcd_bytes"] += etcd_after["grpc_received_bytes"] - etcd_before["grpc_received_bytes"]
    for key, value in api_after.items():
        moved = int(value - api_before.get(key, 0))
        if moved:
            total["requests"][key] = total["requests"].get(key, 0) + moved
    total["p50"].append(summary["p50_ms"])
    total["p99"].append(summary["p99_ms"])


def _figures(total: dict[str, Any]) -> dict[str, Any]:
    ok = total["ok"] or 1
    seconds = total["seconds"] or 1.0
    cores = {process: round(cpu / seconds, 3) for process, cpu in total["cpu"].items()}
    return {
        "renewals": total["ok"],
        "failed": total["failed"],
        "seconds": round(seconds, 1),
        "apiserver_cores": cores.get("kube-apiserver"),
        "apiserver_cpu_ms_per_renewal": round(total["cpu"].get("kube-apiserver", 0.0) / ok * 1000, 3),
        "etcd_cores": cores.get("etcd"),
        "gc_cores": cores.get("kube-controller-manager"),
        "etcd_bytes_per_renewal": round(total["etcd_bytes"] / ok),
        # Medians of the rounds' percentiles: each round is a separate sample.
        "p50_ms": sorted(total["p50"])[len(total["p50"]) // 2],
        "p99_ms": sorted(total["p99"])[len(total["p99"]) // 2],
        "api_requests": total["requests"],
        "cores": cores,
    }


def markdown(result: dict[str, Any], command: str) -> str:
    variants = result["variants"]
    floor = variants.get("bare", {}).get("apiserver_cpu_ms_per_renewal")
    lines = [
        f"# Lease renewals by shape, N = {result['agents']:,}, {result['rate']}/s, "
        f"{result['rounds']} interleaved rounds of {result['seconds']:.0f} s each",
        "",
        f"Command: `{command}`",
        "",
        "| variant | kube-apiserver cores | API-server CPU per renewal, ms | / bare | etcd bytes per renewal "
        "| p50 / p99, ms | etcd cores | kube-controller-manager cores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in variants.items():
        ratio = v["apiserver_cpu_ms_per_renewal"] / floor if floor else None
        latency = f"{_fmt(v['p50_ms'])} / {_fmt(v['p99_ms'])}"
        lines.append(
            f"| {name} | {_fmt(v['apiserver_cores'])} | {_fmt(v['apiserver_cpu_ms_per_renewal'])} | {_fmt(ratio)} "
            f"| {_fmt(v['etcd_bytes_per_renewal'])} | {latency} | {_fmt(v['etcd_cores'])} | {_fmt(v['gc_cores'])} |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of one round of one variant")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every variant")
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument(
        "--variants", default=None, help="comma-separated variants to run (bare, the floor, always runs)"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    command = "python bench/lease_shapes.py " + " ".join(sys.argv[1:] if argv is None else argv)
    only = set(args.variants.split(",")) if args.variants else None
    result = asyncio.run(measure(args.agents, args.seconds, args.interval, args.rounds, only))
    result["meta"] = {"command": command.strip(), "machine": machine(), "uncommitted": uncommitted()}
    name = args.name or f"lease-shapes-n{args.agents}"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, command.strip())
    (args.results_dir / f"{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
