"""Console entry point: ``agent-registry-operator`` (or ``python -m agent_registry.controller``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

import kopf

# Registers the handlers with kopf's default registry.
from agent_registry.controller import handlers as _handlers
from agent_registry.controller.settings import OperatorSettings


def _dump_tasks(*_: object) -> None:
    """SIGUSR1: log every asyncio task's stack, to see what a stuck operator waits on."""
    log = logging.getLogger("agent_registry.tasks")
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:
        return
    for task in tasks:
        frames = task.get_stack(limit=8)
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
        log.warning("task %s: %s", task.get_name(), where or "(not started)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agent-registry-operator",
        description="Run the Agent Registry operator. Settings come from AGENT_REGISTRY_* environment variables.",
    )
    parser.add_argument(
        "--liveness",
        default=os.environ.get("AGENT_REGISTRY_LIVENESS_ENDPOINT", "http://0.0.0.0:8080/healthz"),
        help="kopf liveness endpoint (default %(default)s); empty disables it",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    settings = OperatorSettings()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kopf logs every handler call at INFO; at 333 heartbeats/s that drowns the useful lines.
    logging.getLogger("kopf").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    signal.signal(signal.SIGUSR1, _dump_tasks)
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=args.liveness or None,
            memo=_handlers.operator_memo(settings),
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
