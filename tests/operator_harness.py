"""Running the real operator as a subprocess, and writing heartbeats like a sidecar does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agent_registry.schema import constants as c

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Poll until ``probe`` returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class OperatorProcess:
    """``python -m agent_registry.controller`` with settings for one test."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        redis_url: str,
        log_dir: Path,
        identity: str = "op-a",
        **overrides: Any,
    ) -> None:
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.identity = identity
        self.log_path = log_dir / f"operator-{identity}.log"
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "AGENT_REGISTRY_NAMESPACES": namespace,
            "AGENT_REGISTRY_REDIS_URL": redis_url,
            "AGENT_REGISTRY_REDIS_KEY_PREFIX": f"test-{namespace}",
            "AGENT_REGISTRY_METRICS_PORT": str(self.metrics_port),
            "AGENT_REGISTRY_METRICS_HOST": "127.0.0.1",
            "AGENT_REGISTRY_LEASE_NAMESPACE": namespace,
            "AGENT_REGISTRY_IDENTITY": identity,
            "AGENT_REGISTRY_SWEEP_INTERVAL_SECONDS": "0.5",
            "AGENT_REGISTRY_INDEX_REFRESH_SECONDS": "1",
            "AGENT_REGISTRY_LEASE_DURATION_SECONDS": "4",
            "AGENT_REGISTRY_LEASE_RENEW_SECONDS": "1",
            "AGENT_REGISTRY_LIVENESS_ENDPOINT": f"http://127.0.0.1:{self.liveness_port}/healthz",
        }
        self.env.update({f"AGENT_REGISTRY_{k.upper()}": str(v) for k, v in overrides.items()})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent_registry.controller"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for("the operator's metrics endpoint", self._metrics_up, timeout=30)
        return self

    def _metrics_up(self) -> bool:
        self._check_alive()
        try:
            self.metrics()
        except OSError:
            return False
        return True

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
            return str(resp.read().decode())

    def metric(self, name: str) -> float | None:
        for line in self.metrics().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class Agents:
    """Agent objects in one namespace through the real API server."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.api = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.sequence: dict[str, int] = {}

    def create(self, name: str, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": c.API_VERSION,
            "kind": c.KIND,
            "metadata": {"name": name},
            "spec": {"type": "cost", "host": "10.0.0.1", "port": 8000, **spec},
        }
        result: dict[str, Any] = self.api.create_namespaced_custom_object(
            c.GROUP, c.VERSION, self.namespace, c.PLURAL, body
        )
        return result

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.api.get_namespaced_custom_object(
                c.GROUP, c.VERSION, self.namespace, c.PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def list(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.api.list_namespaced_custom_object(
            c.GROUP, c.VERSION, self.namespace, c.PLURAL
        )["items"]
        return items

    def phase(self, name: str) -> str | None:
        obj = self.get(name)
        return (obj or {}).get("status", {}).get("phase")

    def heartbeat(
        self, name: str, status: str = "healthy", skew: timedelta = timedelta(0), timeout: float | None = None
    ) -> None:
        """What the sidecar writes: only the heartbeat fields, on the writer's own clock.

        With ``timeout``, a stalled API server makes the call fail instead of hang, so a
        pump keeps trying every interval as a sidecar does."""
        self.sequence[name] = self.sequence.get(name, 0) + 1
        stamp = (datetime.now(UTC) + skew).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "status": {
                "lastHeartbeatTime": stamp,
                "heartbeatSequence": self.sequence[name],
                "reportedStatus": status,
                "heartbeatSource": "test",
            }
        }
        self.api.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, self.namespace, c.PLURAL, name, body, _request_timeout=timeout
        )

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object(c.GROUP, c.VERSION, self.namespace, c.PLURAL, name)

    def events(self, name: str | None = None) -> list[client.CoreV1Event]:
        events: list[client.CoreV1Event] = self.core.list_namespaced_event(self.namespace).items
        return [e for e in events if name is None or e.involved_object.name == name]

    def reasons(self, name: str | None = None) -> list[str]:
        return [str(e.reason) for e in self.events(name)]


class HeartbeatPump:
    """Heartbeats a set of agents every ``interval`` seconds from a thread, like sidecars."""

    def __init__(self, agents: Agents, names: Iterable[str], interval: float = 0.5, **kwargs: Any) -> None:
        self.agents = agents
        self.names = set(names)
        self.interval = interval
        self.kwargs = kwargs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.errors: list[Exception] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in list(self.names):
                try:
                    self.agents.heartbeat(name, **self.kwargs)
                except Exception as exc:
                    self.errors.append(exc)
            self._stop.wait(self.interval)

    def __enter__(self) -> HeartbeatPump:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
