"""``python -m agent_sidecar``: run the sidecar, configured by environment variables (``--help`` lists them).

Exit codes: 0 after a clean shutdown (SIGTERM or SIGINT, Agent deleted); 1 when the Agent
could not be deleted before the shutdown timeout; 2 for a configuration the sidecar or
the API server rejects, in which case nothing was registered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from agent_sidecar import config as config_module
from agent_sidecar import logs
from agent_sidecar.config import ConfigError, SidecarConfig, load_config
from agent_sidecar.kube import AgentApi
from agent_sidecar.logs import log
from agent_sidecar.runner import Sidecar

EXIT_CONFIG = 2
# Kubernetes shows this file's content as the container's termination message (kubectl describe pod).
TERMINATION_LOG = Path("/dev/termination-log")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        wants_help = args[0] in ("-h", "--help")
        print(_usage(), file=sys.stdout if wants_help else sys.stderr)
        return 0 if wants_help else EXIT_CONFIG
    level = os.environ.get("AGENT_LOG_LEVEL", "INFO").upper()
    logs.setup(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")
    try:
        config = load_config()
    except ConfigError as error:
        _fail_config(error.problems)
        return EXIT_CONFIG
    logs.setup(config.settings.log_level)
    stop = threading.Event()
    _stop_on_signals(stop)

    try:
        api = AgentApi(config.kube_source, config.namespace)
    except Exception as error:  # a bad kubeconfig raises anything from KeyError to YAMLError
        _fail_config([f"cannot use the {config.kube_source}: {type(error).__name__}: {error}"])
        return EXIT_CONFIG
    _log_start(config, api.server)
    return Sidecar(config, api, stop).run()


def _stop_on_signals(stop: threading.Event) -> None:
    """Turn SIGTERM/SIGINT into ``stop``; a second one exits at once.

    The signals are blocked and collected by a thread with ``sigwait`` rather than caught
    by a handler: a handler runs between bytecodes of the main thread, and setting an
    Event from there can deadlock on the lock the interrupted code holds.
    """
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)

    def wait() -> None:
        first = signal.sigwait(signals)
        log(logging.INFO, "stopping: deregistering", signal=signal.Signals(first).name)
        stop.set()
        second = signal.sigwait(signals)
        log(logging.WARNING, "second signal: exiting without deregistering", signal=signal.Signals(second).name)
        os._exit(128 + second)

    threading.Thread(target=wait, name="signals", daemon=True).start()


def _fail_config(problems: list[str]) -> None:
    message = "invalid configuration, nothing registered: " + "; ".join(problems)
    log(logging.ERROR, message, problems=problems)
    # Only where the kubelet provides the file: elsewhere this would create one in /dev.
    if TERMINATION_LOG.is_file():
        with contextlib.suppress(OSError):
            TERMINATION_LOG.write_text(message[:4096])


def _log_start(config: SidecarConfig, server: str) -> None:
    spec, settings = config.spec, config.settings
    log(
        logging.INFO,
        "starting",
        agent=config.name,
        namespace=config.namespace,
        type=spec.type,
        endpoint=f"{spec.host}:{spec.port}",
        interval_seconds=config.interval_seconds,
        health_url=config.health_url,
        api_server=server,
        credentials=str(config.kube_source),
        pod=settings.pod_name,
        node=settings.node_name,
    )


def _usage() -> str:
    intro = "Registers an agent as an Agent object, heartbeats into it, deletes it on SIGTERM."
    return f"usage: python -m agent_sidecar\n\n{intro}\n\n{config_module.__doc__}"


if __name__ == "__main__":
    raise SystemExit(main())
