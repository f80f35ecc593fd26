"""Start the registry and two demo agents as child processes; stop them in reverse order.

Every child is a :class:`~agent_registry.localcluster.process.ManagedProcess`: its own
session (a Ctrl-C in the terminal reaches only this process, which then stops the
children in order), its own log file, and the kernel's parent-death signal, so not even a
SIGKILL of ``make run`` leaves servers behind. The registry's own processes are started
by :mod:`agent_registry.localcluster.launcher`; this module only chooses their values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from agent_registry.kubeapi.sync import SyncApi
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import (
    FACADE_MODULE,
    FacadeProcess,
    HeartbeatTimings,
    OperatorProcess,
    SidecarProcess,
    http_ok,
    inherited_env,
)
from agent_registry.localcluster.process import LOOPBACK, ManagedProcess, free_port
from agent_registry.localcluster.redis_server import LocalRedis
from agent_registry.localrun import kube
from agent_registry.localrun.demo_agent import CARD_PATH

DEFAULT_API_PORT = 8080
# Shorter than production so a demo shows Unreachable and clean-up within a minute.
DEMO_HEARTBEAT_SECONDS = 5
DEMO_UNREACHABLE_AFTER_SECONDS = 15
DEMO_GC_AFTER_SECONDS = 60
# A demo stops in seconds, or is killed: nobody waits half a minute for Ctrl-C.
_STOP_GRACE_SECONDS = 10.0
Child = TypeVar("Child", bound=ManagedProcess)


@dataclasses.dataclass(frozen=True)
class DemoAgent:
    name: str
    type: str
    capabilities: tuple[str, ...]


DEMO_AGENTS = (
    DemoAgent("cost-agent-demo", "cost", ("spot_migration", "rightsizing")),
    DemoAgent("performance-agent-demo", "performance", ("latency_analysis", "autoscaling")),
)


@dataclasses.dataclass
class RunOptions:
    kubeconfig: Path | None = None
    """A real cluster's kubeconfig; None starts the embedded control plane."""
    namespace: str = "agent-registry-demo"
    """Where the demo agents register (and, on a real cluster, the only namespace the
    local operator watches, so it never acts on someone else's agents)."""
    api_port: int | None = None
    """The facade's port on 127.0.0.1: None takes 8080 when free, 0 any free port."""
    heartbeat_seconds: int = DEMO_HEARTBEAT_SECONDS
    """Heartbeat timings of every agent the run serves: the demo sidecars' and those of
    agents registered through the REST API."""
    unreachable_after_seconds: int = DEMO_UNREACHABLE_AFTER_SECONDS
    gc_after_seconds: int = DEMO_GC_AFTER_SECONDS
    state_file: Path | None = None
    """Written once everything is up: addresses and process ids, for scripts and tests."""
    keep_logs: bool = False
    """Keep the directory of logs after stopping (it is removed otherwise)."""

    @property
    def timings(self) -> HeartbeatTimings:
        return HeartbeatTimings(self.heartbeat_seconds, self.unreachable_after_seconds, self.gc_after_seconds)


@dataclasses.dataclass
class Endpoints:
    kubeconfig: Path
    namespace: str
    api_url: str | None
    operator_metrics_url: str
    facade_metrics_url: str | None
    logs: Path
    kubectl: str
    demo_agents: dict[str, str] = dataclasses.field(default_factory=dict)


def facade_available() -> bool:
    return importlib.util.find_spec(FACADE_MODULE) is not None


def _progress(message: str) -> None:
    print(f"[run] {message}", file=sys.stderr, flush=True)


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` of loopback now.

    Asked the way the server will bind: uvicorn (through asyncio) sets ``SO_REUSEADDR``, which
    lets it bind a port that connections of an earlier run still hold in TIME_WAIT. Without it
    the probe would call that port busy for a minute after every run and move the API.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


class Stack:
    """``with Stack(RunOptions()) as stack: stack.start(); wait()``; leaving the block stops everything."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.endpoints: Endpoints | None = None
        self._exit = contextlib.ExitStack()
        self._workdir = Path(tempfile.mkdtemp(prefix="agent-registry-run-"))
        self._processes: list[ManagedProcess] = []
        self._controlplane: LocalControlPlane | None = None
        self._redis: LocalRedis | None = None
        self._api: SyncApi | None = None
        self._step = 0
        self._steps = 7
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop everything, newest first: sidecars deregister their agents while the cluster is still up."""
        if self._closed:
            return
        self._closed = True
        _progress("stopping: sidecars (they deregister their agents), agents, facade, operator, Redis, cluster")
        try:
            self._exit.close()
        finally:
            if self.options.keep_logs:
                _progress(f"logs kept in {self._workdir / 'logs'}")
            else:
                shutil.rmtree(self._workdir, ignore_errors=True)
            _progress("stopped")

    def pids(self) -> dict[str, int]:
        found = {p.name: p.pid for p in self._processes if p.running and p.pid}
        if self._redis is not None and self._redis.pid:
            found["redis-server"] = self._redis.pid
        if self._controlplane is not None:
            found.update(self._controlplane.pids)
        return found

    def start(self) -> Endpoints:
        started = time.monotonic()
        kubeconfig = self._start_cluster()
        api = self._api = kube.connect(kubeconfig)
        self._exit.callback(api.close)
        with self._stage("installing the Agent CRD"):
            kube.apply_crd(api)
            if kube.ensure_namespace(api, self.options.namespace):
                _progress(f"    created namespace {self.options.namespace}")
        with self._stage("starting Redis (the index)"):
            redis = self._redis = self._exit.enter_context(LocalRedis())
        operator_metrics = self._start_operator(kubeconfig, redis.url)
        api_url, facade_metrics = self._start_facade(kubeconfig, redis.url)
        demo_urls = self._start_demo_agents(kubeconfig)
        with self._stage("waiting until the demo agents are Healthy"):
            self._wait_healthy(api, [agent.name for agent in DEMO_AGENTS])
        self.endpoints = Endpoints(
            kubeconfig=kubeconfig,
            namespace=self.options.namespace,
            api_url=api_url,
            operator_metrics_url=operator_metrics,
            facade_metrics_url=facade_metrics,
            logs=self._workdir / "logs",
            kubectl=self._kubectl_command(),
            demo_agents=demo_urls,
        )
        self._write_state()
        _progress(f"everything up in {time.monotonic() - started:.1f}s")
        return self.endpoints

    def check_alive(self) -> None:
        """Raise when a child exited on its own, naming it and showing its log's end."""
        for process in self._processes:
            process.check_alive()

    # -- steps -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _stage(self, what: str) -> Iterator[None]:
        self._step += 1
        _progress(f"{self._step}/{self._steps} {what} ...")
        started = time.monotonic()
        yield
        _progress(f"    done in {time.monotonic() - started:.1f}s")

    def _start_cluster(self) -> Path:
        if self.options.kubeconfig is not None:
            kubeconfig = self.options.kubeconfig
            with self._stage(f"using the cluster of KUBECONFIG={kubeconfig}"), kube.connect(kubeconfig) as api:
                _progress(f"    Kubernetes {kube.server_version(api)} answers")
            return kubeconfig
        with self._stage("starting the embedded control plane (the first run builds it)"):
            controlplane = self._controlplane = self._exit.enter_context(LocalControlPlane())
        return controlplane.kubeconfig

    @property
    def _logs(self) -> Path:
        return self._workdir / "logs"

    def _track(self, process: Child) -> Child:
        """Stopped on the way out, newest first, even if it never gets ready."""
        self._processes.append(process)
        self._exit.callback(process.stop)
        return process

    def _start_operator(self, kubeconfig: Path, redis_url: str) -> str:
        # On a real cluster the local operator only looks at the demo namespace: it must
        # never act on agents that an installed registry is responsible for.
        watched = [self.options.namespace] if self.options.kubeconfig is not None else []
        operator = OperatorProcess(
            self._logs,
            kubeconfig=kubeconfig,
            redis_url=redis_url,
            namespaces=watched,
            stop_grace_seconds=_STOP_GRACE_SECONDS,
            lease_namespace=self.options.namespace,
            lease_name="agent-registry-localrun",
            identity=f"localrun-{socket.gethostname()}-{os.getpid()}",
            sweep_interval_seconds=1,
        )
        scope = f"namespace {watched[0]}" if watched else "all namespaces"
        with self._stage(f"starting the operator (watching {scope})"):
            self._track(operator).start()
        return operator.metrics_url

    def _start_facade(self, kubeconfig: Path, redis_url: str) -> tuple[str | None, str | None]:
        """The REST API's URL and the facade's metrics URL (None, None without a facade)."""
        if not facade_available():
            with self._stage("the REST facade is not part of this installation: skipped"):
                pass
            return None, None
        port = self.options.api_port
        if port is None:
            port = DEFAULT_API_PORT if port_is_free(DEFAULT_API_PORT) else free_port()
        elif port == 0:
            port = free_port()
        # Loopback and no authentication: local use only. The run's heartbeat timings go to
        # REST agents too: a user who shortens them to try the registry expects every agent
        # to follow. The metrics get a free port: a fixed one would collide with a second run.
        facade = FacadeProcess(
            self._logs,
            kubeconfig=kubeconfig,
            redis_url=redis_url,
            namespace=self.options.namespace,
            port=port,
            auth=False,
            timings=self.options.timings,
            stop_grace_seconds=_STOP_GRACE_SECONDS,
        )
        with self._stage(f"starting the REST facade on {facade.url} (no authentication: local use only)"):
            self._track(facade).start()
        return facade.url, facade.metrics_url

    def _start_demo_agents(self, kubeconfig: Path) -> dict[str, str]:
        urls: dict[str, str] = {}
        with self._stage(f"starting {len(DEMO_AGENTS)} demo agents, each with a sidecar"):
            for agent in DEMO_AGENTS:
                port = free_port()
                url = f"http://{LOOPBACK}:{port}"
                argv = [sys.executable, "-m", "agent_registry.localrun.demo_agent"]
                argv += ["--host", LOOPBACK, "--port", str(port), "--name", agent.name]
                argv += ["--skills", ",".join(agent.capabilities)]
                log = self._logs / f"{agent.name}.log"
                process = ManagedProcess(
                    agent.name, argv, log, env=inherited_env() | {"PYTHONUNBUFFERED": "1"}, stop_grace_seconds=5.0
                )
                self._track(process).start()
                process.wait_until(functools.partial(http_ok, f"{url}/health"), 30, "/health answers")
                self._track(self._sidecar(agent, port, kubeconfig)).start()
                urls[agent.name] = url
        return urls

    def _sidecar(self, agent: DemoAgent, port: int, kubeconfig: Path) -> SidecarProcess:
        return SidecarProcess(
            self._logs,
            name=f"{agent.name}-sidecar",
            agent_name=agent.name,
            agent_type=agent.type,
            port=port,
            namespace=self.options.namespace,
            kubeconfig=kubeconfig,
            timings=self.options.timings,
            stop_grace_seconds=_STOP_GRACE_SECONDS,
            pod_name=f"{agent.name}-local",
            capabilities=list(agent.capabilities),
            version="1.0.0",
            metadata={"started-by": "make run"},
            health_url=f"http://{LOOPBACK}:{port}/health",
            card_url=f"http://{LOOPBACK}:{port}{CARD_PATH}",
        )

    def _wait_healthy(self, api: SyncApi, names: list[str], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        phases: dict[str, str | None] = {}
        while True:
            self.check_alive()
            phases = kube.agent_phases(api, self.options.namespace)
            if all(phases.get(name) == "Healthy" for name in names):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"demo agents not Healthy within {timeout:.0f}s: {phases}")
            time.sleep(0.3)

    def _kubectl_command(self) -> str:
        if shutil.which("kubectl"):
            return "kubectl"
        if self._controlplane is not None:
            return str(self._controlplane.binaries.kubectl)
        return "kubectl"

    def _write_state(self) -> None:
        if self.options.state_file is None or self.endpoints is None:
            return
        state: dict[str, Any] = {
            "api_url": self.endpoints.api_url,
            "kubeconfig": str(self.endpoints.kubeconfig),
            "namespace": self.endpoints.namespace,
            "operator_metrics_url": self.endpoints.operator_metrics_url,
            "facade_metrics_url": self.endpoints.facade_metrics_url,
            "demo_agents": self.endpoints.demo_agents,
            "workdir": str(self._workdir),
            "pids": self.pids(),
        }
        tmp = self.options.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.options.state_file)


def wait_forever(check: Callable[[], None], period: float = 1.0) -> None:
    """Sleep until interrupted, checking now and then that the children are still alive."""
    while True:
        check()
        time.sleep(period)
