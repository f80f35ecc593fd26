"""``python -m agent_registry.localrun`` (what ``make run`` runs); ``--help`` lists the options.

Without ``KUBECONFIG`` it starts the embedded control plane; with ``KUBECONFIG`` naming
one file it uses that cluster (the CRD is applied there, the demo agents register in
``--namespace``, and the namespace and CRD are left in place afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from agent_registry.localrun.stack import (
    DEMO_GC_AFTER_SECONDS,
    DEMO_HEARTBEAT_SECONDS,
    DEMO_UNREACHABLE_AFTER_SECONDS,
    Endpoints,
    RunOptions,
    Stack,
    wait_forever,
)

EXIT_INTERRUPTED = 0
EXIT_FAILED = 1


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent_registry.localrun", description=__doc__)
    parser.add_argument("--namespace", default="agent-registry-demo", help="where the demo agents register")
    parser.add_argument(
        "--api-port", type=int, default=None, help="the REST API's port on 127.0.0.1 (default 8080 if free; 0: any)"
    )
    parser.add_argument(
        "--embedded", action="store_true", help="start the embedded control plane even if KUBECONFIG is set"
    )
    # The timings apply to every agent of the run: the demo sidecars and REST registrations.
    parser.add_argument(
        "--heartbeat-seconds", type=int, default=DEMO_HEARTBEAT_SECONDS, help="heartbeat interval of every agent"
    )
    parser.add_argument(
        "--unreachable-after-seconds",
        type=int,
        default=DEMO_UNREACHABLE_AFTER_SECONDS,
        help="silence after which an agent is Unreachable",
    )
    parser.add_argument(
        "--gc-after-seconds", type=int, default=DEMO_GC_AFTER_SECONDS, help="an Unreachable agent is deleted after this"
    )
    parser.add_argument("--state-file", type=Path, help="write addresses and process ids here as JSON once up")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs after stopping")
    return parser.parse_args(argv)


def _kubeconfig(args: argparse.Namespace) -> Path | None:
    if args.embedded:
        return None
    named = os.environ.get("KUBECONFIG", "").strip()
    if not named:
        return None
    if os.pathsep in named:
        raise SystemExit(
            f"KUBECONFIG={named!r} lists several files; point it at one (kubectl config view --flatten > one.yaml)"
        )
    path = Path(named).expanduser()
    if not path.is_file():
        raise SystemExit(f"KUBECONFIG={named!r}: no such file (unset it to use the embedded control plane)")
    return path


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _banner(endpoints: Endpoints) -> str:
    kubectl = endpoints.kubectl
    lines = ["", "Agent Registry is running. Ctrl-C stops everything.", ""]
    if endpoints.api_url:
        lines += [
            f"  REST API     {endpoints.api_url}",
            f"               curl {endpoints.api_url}/agents",
            f"               curl {endpoints.api_url}/docs   (OpenAPI)",
            f"  dashboard    {endpoints.api_url}/ui   (in a browser; no token needed: authentication is off)",
        ]
    else:
        lines += ["  REST API     not started (the facade is not installed)"]
    lines += [
        f"  kubeconfig   export KUBECONFIG={endpoints.kubeconfig}",
        f"               {kubectl} get agents -A",
        f"               {kubectl} get ag -n {endpoints.namespace} -o wide",
        f"  metrics      {endpoints.operator_metrics_url}   (operator)",
    ]
    if endpoints.facade_metrics_url:
        lines += [f"               {endpoints.facade_metrics_url}   (REST API)"]
    lines += [
        f"  logs         {endpoints.logs}/",
        "  demo agents  " + ", ".join(endpoints.demo_agents),
    ]
    first = next(iter(endpoints.demo_agents.values()), None)
    if first:
        lines += [
            f"               make one fail:  curl -X POST {first}/fail     (Degraded within a heartbeat)",
            f"               and recover:    curl -X POST {first}/recover",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    options = RunOptions(
        kubeconfig=_kubeconfig(args),
        namespace=args.namespace,
        api_port=args.api_port,
        heartbeat_seconds=args.heartbeat_seconds,
        unreachable_after_seconds=args.unreachable_after_seconds,
        gc_after_seconds=args.gc_after_seconds,
        state_file=args.state_file,
        keep_logs=args.keep_logs,
    )
    # SIGTERM (from make, a CI runner, `kill`) gets the same clean shutdown as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    code = EXIT_INTERRUPTED
    with contextlib.suppress(KeyboardInterrupt), Stack(options) as stack:
        try:
            endpoints = stack.start()
            print(_banner(endpoints), flush=True)
            wait_forever(stack.check_alive)
        except Exception as error:  # anything: report it, keep the logs, and still stop everything
            print(f"[run] failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            options.keep_logs = True
            code = EXIT_FAILED
    return code


if __name__ == "__main__":
    raise SystemExit(main())
