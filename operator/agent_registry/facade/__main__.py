"""Console entry point: ``agent-registry-facade`` (or ``python -m agent_registry.facade``).

SIGTERM (or Ctrl-C) stops accepting connections, ends the watch streams, lets in-flight
requests finish within ``shutdown_timeout_seconds``, closes the clients and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn
from pydantic import ValidationError

from agent_registry.facade.main import create_app
from agent_registry.facade.settings import ENV_PREFIX, FacadeSettings


class FacadeServer(uvicorn.Server):
    """uvicorn's server, ending the watch streams as shutdown begins: uvicorn waits for open
    responses to finish, and a watch would otherwise hold the shutdown for its whole timeout.
    Their clients resume on another replica from their last event id."""

    def __init__(self, config: uvicorn.Config, end_watches: Callable[[], None]) -> None:
        super().__init__(config)
        self.end_watches = end_watches

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        with contextlib.suppress(AttributeError):  # before the app's start-up, no watches
            self.end_watches()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agent-registry-facade",
        description=(
            f"Serve the Agent Registry REST API. Settings come from {ENV_PREFIX}* environment variables "
            "(plus AGENT_REGISTRY_REDIS_URL and AGENT_REGISTRY_REDIS_KEY_PREFIX, shared with the operator)."
        ),
    )
    parser.add_argument("--host", help="listen address (overrides the setting)")
    parser.add_argument("--port", type=int, help="listen port (overrides the setting)")
    args = parser.parse_args(argv)
    try:
        settings = FacadeSettings()
    except ValidationError as exc:
        print(f"agent-registry-facade: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every API-server call at INFO: one line per heartbeat.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the logging set up above
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
        server_header=False,
        lifespan="on",
    )

    def end_watches() -> None:
        app.state.registry.watches.close()  # the registry exists once the app has started

    server = FacadeServer(config, end_watches)

    def outside_uvicorn(signum: int, frame: FrameType | None) -> None:
        # uvicorn handles SIGTERM/SIGINT while it runs, then raises the signal it caught once
        # more so that an embedding program sees it; with the default action this process
        # would end "killed by SIGTERM" instead of exiting 0 after its clean shutdown.
        if server.should_exit:
            return
        raise SystemExit(0)  # before uvicorn took over: nothing is in flight yet

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, outside_uvicorn)
    server.run()
    if not server.started:
        return 1
    logging.getLogger("agent_registry.facade").info("facade stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
