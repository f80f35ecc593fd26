"""The registry's own processes -- operator, facade, sidecar -- started as a pod starts them.

Each is ``python -m <module>`` with its settings in environment variables. Callers name
settings by their *field* in the process's settings class (``sweep_interval_seconds``,
``auth_enabled``), and this module turns a field into its variable the way
pydantic-settings reads it (prefix, or the field's own alias), so an override with a
typo fails here, loudly, instead of starting a process that silently keeps its default.

What varies between a local run, the benchmark and a test is only which values they
pass; the command, the variables and the readiness check are written once, here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import httpx
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from agent_registry.controller.settings import OperatorSettings
from agent_registry.localcluster.process import LOOPBACK, ManagedProcess, free_port
from agent_sidecar.config import SidecarSettings

if TYPE_CHECKING:
    from agent_registry.facade.settings import FacadeSettings

OPERATOR_MODULE = "agent_registry.controller"
FACADE_MODULE = "agent_registry.facade"
SIDECAR_MODULE = "agent_sidecar"

# Whoever starts a process passes every setting it means; a variable left in the
# developer's shell (or set for another process) must not change what a test sees.
_OWN_PREFIXES = ("AGENT_REGISTRY_", "AGENT_", "POD_")
# Read by the sidecar straight from the environment (agent_sidecar/config.py), not a field.
_SERVICE_ACCOUNT_DIR_VARIABLE = "AGENT_SERVICE_ACCOUNT_DIR"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class UnknownSettingError(ValueError):
    """A setting that the process's settings class does not have."""


def _facade_settings() -> type[FacadeSettings]:
    # The facade's package imports the whole web app; starting an operator or a sidecar
    # should not pay for that.
    from agent_registry.facade.settings import FacadeSettings  # noqa: PLC0415 - lazy on purpose

    return FacadeSettings


def env_name(settings: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` of ``settings``, as pydantic-settings reads it.

    A field with aliases is set through its first alias (for the facade's Redis fields: its
    own variable, which wins over the one it shares with the operator).
    """
    info = settings.model_fields.get(field)
    if info is None:
        known = ", ".join(sorted(settings.model_fields))
        raise UnknownSettingError(f"{settings.__name__} has no setting {field!r}; it has: {known}")
    alias = info.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return str(settings.model_config.get("env_prefix", "")) + field.upper()


def env_value(value: object) -> str:
    """A value as the settings classes parse it: lists comma-separated, objects as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def settings_env(settings: type[BaseSettings], values: Mapping[str, object]) -> dict[str, str]:
    """Environment variables for settings given by field name; a None value is left unset."""
    return {env_name(settings, field): env_value(value) for field, value in values.items() if value is not None}


def inherited_env() -> dict[str, str]:
    """This process's environment without any registry setting or kubeconfig: the base a child gets."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES) and k != "KUBECONFIG"}


def _kube_env(kubeconfig: Path | None) -> dict[str, str]:
    return {"KUBECONFIG": str(kubeconfig)} if kubeconfig is not None else {}


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers 2xx; proxies are ignored, everything here is on loopback."""
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclasses.dataclass(frozen=True)
class HeartbeatTimings:
    """An agent's heartbeat timings: the sidecar's, or those the facade gives REST agents.

    The two settings classes use the same field names, so one value configures both, as a
    local run wants (every agent it serves follows the timings the user chose).
    """

    interval_seconds: int
    unreachable_after_seconds: int | None = None
    gc_after_seconds: int | None = None
    """None leaves the schema's default."""

    def settings(self) -> dict[str, object]:
        return {
            "heartbeat_interval_seconds": self.interval_seconds,
            "unreachable_after_seconds": self.unreachable_after_seconds,
            "gc_after_seconds": self.gc_after_seconds,
        }


@dataclasses.dataclass(frozen=True)
class InClusterAccount:
    """What the kubelet gives a pod: a service account directory and the API server's address."""

    service_account_dir: Path
    host: str
    port: int

    @classmethod
    def mount(cls, directory: Path, *, token: str, ca_file: Path, namespace: str, host: str, port: int) -> Self:
        """Lay out ``directory`` as the kubelet mounts a service account: token, CA, namespace."""
        directory.mkdir(parents=True)
        (directory / "token").write_text(token)
        (directory / "ca.crt").write_bytes(ca_file.read_bytes())
        (directory / "namespace").write_text(namespace)
        return cls(directory, host, port)

    def env(self) -> dict[str, str]:
        return {
            _SERVICE_ACCOUNT_DIR_VARIABLE: str(self.service_account_dir),
            "KUBERNETES_SERVICE_HOST": self.host,
            "KUBERNETES_SERVICE_PORT": str(self.port),
        }


def metric_value(text: str, name: str) -> float | None:
    """The first sample of ``name`` in Prometheus text, whatever its labels."""
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return None


class RegistryProcess(ManagedProcess):
    """One of the registry's processes: ``python -m <module>``, its log, and how to tell it is ready."""

    module: ClassVar[str]

    def __init__(
        self,
        name: str,
        log_dir: Path,
        env: dict[str, str],
        *,
        args: Sequence[str] = (),
        base_env: Mapping[str, str] | None = None,
        stop_grace_seconds: float = 30.0,
        cwd: Path | None = None,
    ) -> None:
        base = inherited_env() if base_env is None else dict(base_env)
        # Unbuffered, so a log read while the process runs (or after a SIGKILL) is complete.
        full_env = base | {"PYTHONUNBUFFERED": "1"} | env
        argv = [sys.executable, "-m", self.module, *args]
        super().__init__(
            name, argv, log_dir / f"{name}.log", env=full_env, stop_grace_seconds=stop_grace_seconds, cwd=cwd
        )

    def ready_urls(self) -> list[str]:
        """URLs that all answer 2xx once the process serves; none means started is ready."""
        return []

    def ready(self) -> bool:
        return all(http_ok(url) for url in self.ready_urls())

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> Self:
        """Start, and unless ``wait`` is False wait until ready. Start on the main thread
        (see ``process.py``); the wait may run anywhere."""
        super().start()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        urls = self.ready_urls()
        if urls:
            self.wait_until(self.ready, timeout, " and ".join(urls) + " answer")

    def _get(self, url: str, token: str | None = None, timeout: float = 10.0) -> str:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return str(response.read().decode())


class OperatorProcess(RegistryProcess):
    """``python -m agent_registry.controller`` on loopback.

    Ports None take a free port; 0 turns the endpoint off. Ready when every endpoint that
    is on answers: the metrics and kopf's liveness probe.
    """

    module = OPERATOR_MODULE

    def __init__(
        self,
        log_dir: Path,
        *,
        kubeconfig: Path,
        redis_url: str,
        namespaces: Sequence[str] = (),
        redis_key_prefix: str | None = None,
        metrics_port: int | None = None,
        liveness_port: int | None = None,
        name: str = "operator",
        base_env: Mapping[str, str] | None = None,
        stop_grace_seconds: float = 30.0,
        **settings: object,
    ) -> None:
        self.metrics_port = free_port() if metrics_port is None else metrics_port
        self.liveness_port = free_port() if liveness_port is None else liveness_port
        values: dict[str, object] = {
            "namespaces": list(namespaces),
            "redis_url": redis_url,
            "redis_key_prefix": redis_key_prefix,
            "metrics_host": LOOPBACK if self.metrics_port else None,
            "metrics_port": self.metrics_port,
        }
        env = _kube_env(kubeconfig) | settings_env(OperatorSettings, values | settings)
        # The liveness endpoint is a command-line option of the operator, not a setting.
        liveness = self.liveness_url if self.liveness_port else ""
        super().__init__(
            name,
            log_dir,
            env,
            args=("--liveness", liveness),
            base_env=base_env,
            stop_grace_seconds=stop_grace_seconds,
        )

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    @property
    def liveness_url(self) -> str:
        return f"http://{LOOPBACK}:{self.liveness_port}/healthz"

    def ready_urls(self) -> list[str]:
        urls = [self.metrics_url] if self.metrics_port else []
        return urls + ([self.liveness_url] if self.liveness_port else [])

    def metrics(self) -> str:
        """The Prometheus text; raises ``OSError`` when nothing answers."""
        return self._get(self.metrics_url)

    def metric(self, name: str) -> float | None:
        return metric_value(self.metrics(), name)


class FacadeProcess(RegistryProcess):
    """``python -m agent_registry.facade`` on loopback; ready when ``/health`` answers.

    ``port`` None takes a free port; ``metrics_port`` None a free one too, 0 serves the
    metrics on the API port behind authorisation. ``auth`` None leaves the facade's
    default (on).
    """

    module = FACADE_MODULE

    def __init__(
        self,
        log_dir: Path,
        *,
        kubeconfig: Path,
        redis_url: str,
        namespace: str,
        redis_key_prefix: str | None = None,
        host: str = LOOPBACK,
        port: int | None = None,
        metrics_port: int | None = None,
        auth: bool | None = None,
        timings: HeartbeatTimings | None = None,
        name: str = "facade",
        base_env: Mapping[str, str] | None = None,
        stop_grace_seconds: float = 30.0,
        **settings: object,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.metrics_port = free_port() if metrics_port is None else metrics_port
        self.namespace = namespace
        values: dict[str, object] = {
            "host": host,
            "port": self.port,
            "metrics_port": self.metrics_port,
            "namespace": namespace,
            "auth_enabled": auth,
            "redis_url": redis_url,
            "redis_key_prefix": redis_key_prefix,
        }
        values |= timings.settings() if timings is not None else {}
        env = _kube_env(kubeconfig) | settings_env(_facade_settings(), values | settings)
        super().__init__(name, log_dir, env, base_env=base_env, stop_grace_seconds=stop_grace_seconds)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port or self.port}/metrics"

    def ready_urls(self) -> list[str]:
        return [f"{self.url}/health"]

    def metrics(self, token: str | None = None) -> str:
        """The Prometheus text, from wherever this facade serves it; raises ``OSError`` on failure."""
        return self._get(self.metrics_url, token)

    def client(self, token: str | None = None, timeout: float = 15.0) -> httpx.Client:
        """A client of the REST API, as an agent or an orchestrator would hold one."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, trust_env=False)


class SidecarProcess(RegistryProcess):
    """``python -m agent_sidecar`` beside an agent; it serves nothing, so started is ready.

    ``namespace`` is the Downward API's ``POD_NAMESPACE``. None leaves a variable unset, as
    a test of the sidecar's own defaults and errors wants.
    """

    module = SIDECAR_MODULE

    def __init__(
        self,
        log_dir: Path,
        *,
        agent_name: str | None,
        agent_type: str | None,
        port: int | None,
        namespace: str | None,
        kubeconfig: Path | None = None,
        in_cluster: InClusterAccount | None = None,
        host: str | None = LOOPBACK,
        timings: HeartbeatTimings | None = None,
        name: str = "sidecar",
        base_env: Mapping[str, str] | None = None,
        stop_grace_seconds: float = 15.0,
        cwd: Path | None = None,
        **settings: object,
    ) -> None:
        values: dict[str, object] = {
            "name": agent_name,
            "type": agent_type,
            "port": port,
            "host": host,
            "pod_namespace": namespace,
        }
        values |= timings.settings() if timings is not None else {}
        account = in_cluster.env() if in_cluster is not None else {}
        env = _kube_env(kubeconfig) | account | settings_env(SidecarSettings, values | settings)
        super().__init__(name, log_dir, env, base_env=base_env, stop_grace_seconds=stop_grace_seconds, cwd=cwd)

    def entries(self) -> list[dict[str, Any]]:
        """The sidecar's JSON log lines."""
        return [json.loads(line) for line in self.logs().splitlines() if line.startswith("{")]

    def messages(self) -> list[str]:
        return [str(entry["msg"]) for entry in self.entries()]
