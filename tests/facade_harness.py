"""Running the HTTP facade as a real uvicorn subprocess on loopback.

The fixtures built on it live in ``facade_fixtures``; test modules load them with
``pytest_plugins = ["facade_fixtures"]``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from operator_harness import free_port, wait_for

# The operator's heartbeat timings for tests: Unreachable after 3 s of silence, kept long
# enough that nothing is garbage-collected while a test looks at it.
FAST_TIMINGS = {"heartbeat_interval_seconds": "1", "unreachable_after_seconds": "3", "gc_after_seconds": "600"}


def key_prefix(namespace: str) -> str:
    """The index prefix ``OperatorProcess`` uses for a namespace; the facade must read the same."""
    return f"test-{namespace}"


class FacadeProcess:
    """``python -m agent_registry.facade`` with settings for one test."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        redis_url: str,
        log_dir: Path,
        *,
        auth: bool = False,
        name: str = "facade",
        port: int | None = None,
        metrics_port: int | None = None,
        **overrides: Any,
    ) -> None:
        self.port = port or free_port()
        # 0 serves the metrics on the API port, behind auth; by default they get their own port.
        self.metrics_port = free_port() if metrics_port is None else metrics_port
        self.namespace = namespace
        self.log_path = log_dir / f"{name}.log"
        # Nothing from the developer's own environment leaks into the settings.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_REGISTRY_")}
        self.env = {
            **env,
            "KUBECONFIG": str(kubeconfig),
            "AGENT_REGISTRY_FACADE_HOST": "127.0.0.1",
            "AGENT_REGISTRY_FACADE_PORT": str(self.port),
            "AGENT_REGISTRY_FACADE_METRICS_PORT": str(self.metrics_port),
            "AGENT_REGISTRY_FACADE_NAMESPACE": namespace,
            "AGENT_REGISTRY_FACADE_AUTH_ENABLED": "true" if auth else "false",
            "AGENT_REGISTRY_REDIS_URL": redis_url,
            "AGENT_REGISTRY_REDIS_KEY_PREFIX": key_prefix(namespace),
            "AGENT_REGISTRY_FACADE_SHUTDOWN_TIMEOUT_SECONDS": "20",
        }
        self.env.update({f"AGENT_REGISTRY_FACADE_{k.upper()}": str(v) for k, v in overrides.items()})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port or self.port}/metrics"

    def metrics(self, token: str | None = None) -> str:
        """The Prometheus text, from wherever this facade serves it."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.get(self.metrics_url, headers=headers, timeout=10, trust_env=False)
        response.raise_for_status()
        return response.text

    def start(self, wait: bool = True) -> FacadeProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent_registry.facade"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            wait_for("the facade's /health", self._healthy, timeout=30)
        return self

    def _healthy(self) -> bool:
        self.check_alive()
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the facade exited with {self.proc.returncode}:\n{self.logs()[-4000:]}")

    def client(self, token: str | None = None, timeout: float = 15.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, trust_env=False)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        return self.proc.returncode


def registration(name: str, **fields: Any) -> dict[str, Any]:
    """A valid ``RegistrationRequest`` body."""
    body: dict[str, Any] = {
        "name": name,
        "type": "cost",
        "host": "10.0.0.7",
        "port": 8001,
        "capabilities": ["spot_migration", "rightsizing"],
        "version": "1.2.3",
    }
    body.update(fields)
    return body
