"""Run the local control plane (and optionally Redis) until Ctrl-C.

    python -m agent_registry.localcluster [--crds crds/] [--redis]

Prints how to point kubectl and the registry at it, then waits; Ctrl-C or SIGTERM
stops everything and removes the temporary files.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path
from types import FrameType

from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.redis_server import LocalRedis


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent_registry.localcluster", description=__doc__)
    parser.add_argument("--crds", type=Path, help="directory of CRD YAML to apply once the API server is ready")
    parser.add_argument("--redis", action="store_true", help="also start a redis-server on loopback")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # SIGTERM (from make, a CI runner, `kill`) gets the same clean shutdown as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.ExitStack() as stack, contextlib.suppress(KeyboardInterrupt):
        controlplane = stack.enter_context(LocalControlPlane())
        if args.crds:
            names = controlplane.apply_crds(args.crds)
            print(f"[localcluster] CRDs established: {', '.join(names) or '(none)'}", file=sys.stderr)
        print(f"kubeconfig: {controlplane.kubeconfig}")
        print(f"export KUBECONFIG={controlplane.kubeconfig}")
        if args.redis:
            redis = stack.enter_context(LocalRedis())
            print(f"export REDIS_URL={redis.url}")
        sys.stdout.flush()
        print("[localcluster] running; Ctrl-C to stop", file=sys.stderr, flush=True)
        while True:
            signal.pause()
    print("[localcluster] stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
