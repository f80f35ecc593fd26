"""The sidecar's configuration: environment variables and the Downward API.

Agent variables (prefix ``AGENT_``):

====================================  ===================================================
``AGENT_NAME``                        required; the Agent object's name (DNS subdomain)
``AGENT_TYPE``                        required; ``cost``, ``performance``, ... (DNS label)
``AGENT_PORT``                        required; the agent's TCP port
``AGENT_HOST``                        where the agent listens; default ``POD_IP``
``AGENT_CAPABILITIES``                comma-separated, e.g. ``spot_migration,rightsizing``
``AGENT_VERSION``                     default ``1.0.0``
``AGENT_METADATA``                    a JSON object, e.g. ``{"region": "eu-west-1"}``; values may
                                      nest; at most 64 keys and 16 KiB
``AGENT_HEARTBEAT_INTERVAL_SECONDS``  default 30; heartbeats come 0-15 % sooner (jitter)
``AGENT_UNREACHABLE_AFTER_SECONDS``   optional; the schema's default (45) when unset
``AGENT_GC_AFTER_SECONDS``            optional; the schema's default (300) when unset
``AGENT_STATUS_REFRESH_SECONDS``      default 300; the Agent's status is written when the
                                      reported status or capability health changes and at
                                      least this often; every other heartbeat only renews the
                                      agent's Lease (with the reported load)
``AGENT_HEALTH_URL``                  default ``http://127.0.0.1:<AGENT_PORT>/health``; a 2xx
                                      JSON body may report status, capabilities and load
                                      (see ``agent_sidecar.probe``)
``AGENT_PROBE_TIMEOUT_SECONDS``       no answer within this: ``unhealthy``; default 2
``AGENT_PROBE_SLOW_SECONDS``          a 2xx slower than this: ``degraded``; default 1
``AGENT_CARD_URL``                    the agent's A2A card, e.g.
                                      ``http://127.0.0.1:8001/.well-known/agent-card.json``;
                                      unset: the agent serves none. Fetched once the agent
                                      answers, validated, recorded on the Agent when it changed
                                      (see ``agent_sidecar.card``)
``AGENT_CARD_REFRESH_SECONDS``        default 300; the card is looked at again (a conditional
                                      GET) at most this often, sooner after a failure
``AGENT_SHUTDOWN_TIMEOUT_SECONDS``    time allowed to delete the Agent on SIGTERM; default 10
``AGENT_LOG_LEVEL``                   ``DEBUG`` also logs every heartbeat; default ``INFO``
``AGENT_SERVICE_ACCOUNT_DIR``         default ``/var/run/secrets/kubernetes.io/serviceaccount``
====================================  ===================================================

Pod variables, meant to come from the Downward API (``valueFrom.fieldRef``):
``POD_NAME`` (``metadata.name``), ``POD_UID`` (``metadata.uid``), ``POD_NAMESPACE``
(``metadata.namespace``), ``POD_IP`` (``status.podIP``), ``NODE_NAME`` (``spec.nodeName``).

* ``POD_UID`` lets the sidecar set the ownerReference to its Pod without permission to
  read pods; without it the sidecar looks the Pod up by ``POD_NAME``. With neither, or
  when the Pod cannot be found, the Agent has no owner, and after a hard kill it is the
  operator's garbage collection that removes it.
* ``POD_NAMESPACE`` falls back to the service account's namespace file.
* ``NODE_NAME`` is recorded in an annotation on the Agent.

Kubernetes access mirrors client-go: the service account when its token is mounted and
``KUBERNETES_SERVICE_HOST`` is set, else the one file named by ``KUBECONFIG``, else
``~/.kube/config``.

Replicas of one Deployment need distinct agent names; Kubernetes expands ``$(POD_NAME)``
inside later env values, e.g. ``AGENT_NAME=cost-$(POD_NAME)``.

:func:`load_config` reports every problem at once, as one :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, Field, StringConstraints, ValidationError, field_validator
from pydantic.alias_generators import to_snake
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent_registry import kubeapi
from agent_registry.schema import constants as c
from agent_registry.schema.agent import (
    DNS_LABEL_PATTERN,
    AgentSpec,
    AgentStatus,
    AgentType,
    AgentVersion,
    Capabilities,
    Host,
    Metadata,
    Port,
)
from agent_registry.schema.rest import AgentName

ENV_PREFIX = "AGENT_"
DEFAULT_SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
HEARTBEAT_SOURCE_PREFIX = "sidecar/"


class ConfigError(Exception):
    """Every problem with the configuration, one ``VARIABLE=value: rule`` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration: " + "; ".join(problems))
        self.problems = problems


class SidecarSettings(BaseSettings):
    """The environment, parsed field by field.

    The agent's fields use the Agent schema's own types, so a value accepted here is one
    the API server accepts. Each description is the rule an error message quotes.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        # Manifests often carry `value: ""` to mean "not set"; take it so rather than as invalid.
        env_ignore_empty=True,
        extra="ignore",
    )

    name: AgentName = Field(description="a lowercase DNS subdomain such as cost-agent-1")
    type: AgentType = Field(description="a lowercase DNS label such as cost, performance, resource, application")
    # Environment values are strings; the schema's strict Port would refuse "8001".
    port: Annotated[Port, Field(strict=False)] = Field(description="an integer from 1 to 65535")
    host: Host | None = Field(default=None, description="a hostname or an IP address")
    capabilities: Annotated[Capabilities, NoDecode] = Field(
        default_factory=list,
        description="comma-separated unique lowercase tokens such as spot_migration,rightsizing",
    )
    version: AgentVersion = Field(default=c.DEFAULT_AGENT_VERSION, description="at most 64 characters")
    metadata: Annotated[Metadata, NoDecode] = Field(
        default_factory=dict,
        description=f"a JSON object of at most {c.MAX_METADATA_ENTRIES} keys and {c.MAX_METADATA_BYTES // 1024} KiB, "
        'such as {"region": "eu-west-1"}; values may be any JSON, nested objects and lists too',
    )
    heartbeat_interval_seconds: int = Field(
        default=c.DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
        ge=c.MIN_INTERVAL_SECONDS,
        le=c.MAX_INTERVAL_SECONDS,
        description=f"whole seconds from {c.MIN_INTERVAL_SECONDS} to {c.MAX_INTERVAL_SECONDS}",
    )
    unreachable_after_seconds: int | None = Field(
        default=None,
        ge=c.MIN_UNREACHABLE_AFTER_SECONDS,
        le=c.MAX_UNREACHABLE_AFTER_SECONDS,
        description=f"whole seconds from {c.MIN_UNREACHABLE_AFTER_SECONDS} to {c.MAX_UNREACHABLE_AFTER_SECONDS}, "
        "more than the heartbeat interval",
    )
    gc_after_seconds: int | None = Field(
        default=None,
        ge=c.MIN_GC_AFTER_SECONDS,
        le=c.MAX_GC_AFTER_SECONDS,
        description=f"whole seconds from {c.MIN_GC_AFTER_SECONDS} to {c.MAX_GC_AFTER_SECONDS}",
    )
    status_refresh_seconds: int = Field(
        default=300,
        ge=c.MIN_INTERVAL_SECONDS,
        le=c.MAX_UNREACHABLE_AFTER_SECONDS,
        description=f"whole seconds from {c.MIN_INTERVAL_SECONDS} to {c.MAX_UNREACHABLE_AFTER_SECONDS}",
    )
    health_url: AnyHttpUrl | None = Field(default=None, description="an http or https URL")
    probe_timeout_seconds: float = Field(default=2.0, gt=0, le=60, description="seconds, more than 0, at most 60")
    probe_slow_seconds: float = Field(default=1.0, gt=0, description="seconds, more than 0")
    card_url: AnyHttpUrl | None = Field(default=None, description="an http or https URL")
    card_refresh_seconds: int = Field(
        default=300,
        ge=c.MIN_INTERVAL_SECONDS,
        le=c.MAX_UNREACHABLE_AFTER_SECONDS,
        description=f"whole seconds from {c.MIN_INTERVAL_SECONDS} to {c.MAX_UNREACHABLE_AFTER_SECONDS}",
    )
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0, le=300, description="seconds, more than 0, at most 300")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="DEBUG, INFO, WARNING or ERROR"
    )

    # The Downward API's names, without the prefix.
    pod_name: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, validation_alias="POD_NAME", description="the Pod's name"
    )
    pod_uid: str | None = Field(default=None, validation_alias="POD_UID", description="the Pod's uid")
    pod_namespace: Annotated[str, StringConstraints(max_length=63, pattern=DNS_LABEL_PATTERN)] | None = Field(
        default=None, validation_alias="POD_NAMESPACE", description="a namespace name, a lowercase DNS label"
    )
    pod_ip: Host | None = Field(default=None, validation_alias="POD_IP", description="an IP address")
    node_name: str | None = Field(default=None, validation_alias="NODE_NAME", description="the node's name")

    @field_validator("capabilities", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"not valid JSON ({error})") from None
            if not isinstance(value, dict):
                raise ValueError("must be a JSON object")
        return value


KubeSource = kubeapi.Source
"""Where the Kubernetes credentials come from: a service account directory, or a kubeconfig file."""


@dataclasses.dataclass(frozen=True)
class SidecarConfig:
    """The checked configuration: the settings plus what follows from them."""

    settings: SidecarSettings
    spec: AgentSpec
    namespace: str
    kube_source: KubeSource

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def interval_seconds(self) -> int:
        return self.spec.heartbeat.interval_seconds

    @property
    def health_url(self) -> str:
        if self.settings.health_url is not None:
            return str(self.settings.health_url)
        return f"http://127.0.0.1:{self.settings.port}/health"

    @property
    def heartbeat_source(self) -> str:
        return heartbeat_source(self.settings.pod_name)


def heartbeat_source(pod_name: str | None) -> str:
    """``sidecar/<pod name>``; in a pod the hostname is the pod's name, so it stands in for an unset POD_NAME."""
    return HEARTBEAT_SOURCE_PREFIX + (pod_name or os.environ.get("HOSTNAME") or os.uname().nodename)


def load_config() -> SidecarConfig:
    """Read and check the environment; raise one :class:`ConfigError` that names every bad variable."""
    problems: list[str] = []
    try:
        settings: SidecarSettings | None = SidecarSettings()
    except ValidationError as error:
        problems.extend(_field_problems(error))
        settings = None
    # These look at the raw environment, so they are reported together with field errors.
    if not _env("AGENT_HOST") and not _env("POD_IP"):
        problems.append("AGENT_HOST: required when POD_IP is unset (set POD_IP from the Downward API: status.podIP)")
    kube_source = _find_kube_source(problems)
    namespace = _find_namespace(kube_source, problems)
    spec = _build_spec(settings, problems) if settings is not None else None
    if settings is not None:
        _check_probe_times(settings, problems)
        _check_heartbeat_source(settings, problems)
    if problems or settings is None or spec is None or kube_source is None or namespace is None:
        raise ConfigError(problems)
    return SidecarConfig(settings=settings, spec=spec, namespace=namespace, kube_source=kube_source)


def env_name(field: str) -> str:
    """The environment variable behind a settings field (errors name aliased fields by the alias itself)."""
    info = SidecarSettings.model_fields.get(field)
    if info is None:
        return field
    if isinstance(info.validation_alias, str):
        return info.validation_alias
    return ENV_PREFIX + field.upper()


def _field_problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        name = env_name(str(item["loc"][0]))
        rule = _rule(name)
        if item["type"] == "missing":
            problems.append(f"{name}: required ({rule})")
            continue
        position = item["loc"][1] if len(item["loc"]) > 1 else None
        where = f" item {position + 1}" if isinstance(position, int) else ""
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{name}={_shown(name)}{where}: {message} (expected {rule})")
    return problems


def _rule(name: str) -> str:
    for field, info in SidecarSettings.model_fields.items():
        if env_name(field) == name:
            return info.description or "a valid value"
    return "a valid value"


def _shown(name: str) -> str:
    text = repr(os.environ.get(name, ""))
    return text if len(text) <= 80 else text[:76] + "...'"


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _service_account_dir() -> Path:
    return Path(_env("AGENT_SERVICE_ACCOUNT_DIR") or DEFAULT_SERVICE_ACCOUNT_DIR)


def _find_kube_source(problems: list[str]) -> KubeSource | None:
    """By the precedence every process of the registry uses (``kubeapi.credentials``)."""
    named = _env("KUBECONFIG")
    if os.pathsep in named:
        problems.append(f"KUBECONFIG={named!r}: must name a single file (lists of files are not supported)")
        return None
    try:
        return kubeapi.resolve(None, os.environ, _service_account_dir())
    except kubeapi.ConfigError as error:
        problems.append(f"KUBECONFIG: {error}")
        return None


def _find_namespace(kube_source: KubeSource | None, problems: list[str]) -> str | None:
    if _env("POD_NAMESPACE"):
        return _env("POD_NAMESPACE")  # its format is checked with the other fields
    if kube_source is not None and kube_source.service_account_dir is not None:
        namespace_file = kube_source.service_account_dir / "namespace"
        if namespace_file.is_file():
            return namespace_file.read_text().strip()
    problems.append("POD_NAMESPACE: required (set it from the Downward API: metadata.namespace)")
    return None


# Where the spec's fields come from, for errors the model reports by the spec's names.
_SPEC_FIELD_ENV = {
    "type": "AGENT_TYPE",
    "host": "AGENT_HOST",
    "port": "AGENT_PORT",
    "capabilities": "AGENT_CAPABILITIES",
    "version": "AGENT_VERSION",
    "metadata": "AGENT_METADATA",
    "interval_seconds": "AGENT_HEARTBEAT_INTERVAL_SECONDS",
    "unreachable_after_seconds": "AGENT_UNREACHABLE_AFTER_SECONDS",
    "gc_after_seconds": "AGENT_GC_AFTER_SECONDS",
}


def _build_spec(settings: SidecarSettings, problems: list[str]) -> AgentSpec | None:
    """The spec, validated by the model the CRD is generated from; rules that span fields show up here."""
    heartbeat: dict[str, int] = {"interval_seconds": settings.heartbeat_interval_seconds}
    if settings.unreachable_after_seconds is not None:
        heartbeat["unreachable_after_seconds"] = settings.unreachable_after_seconds
    if settings.gc_after_seconds is not None:
        heartbeat["gc_after_seconds"] = settings.gc_after_seconds
    try:
        return AgentSpec.model_validate(
            {
                "type": settings.type,
                "host": settings.host or settings.pod_ip,
                "port": settings.port,
                "capabilities": settings.capabilities,
                "version": settings.version,
                "metadata": settings.metadata,
                "heartbeat": heartbeat,
            }
        )
    except ValidationError as error:
        for item in error.errors():
            field = to_snake(str(item["loc"][-1])) if item["loc"] else ""
            name = _SPEC_FIELD_ENV.get(field, "AGENT_" + field.upper())
            if field == "unreachable_after_seconds" and settings.unreachable_after_seconds is None:
                name += f" (unset, so {c.DEFAULT_UNREACHABLE_AFTER_SECONDS})"
            elif field == "host" and not settings.host:
                name = "POD_IP"
            problems.append(f"{name}: {item['msg'].removeprefix('Value error, ')}")
        return None


def _check_probe_times(settings: SidecarSettings, problems: list[str]) -> None:
    if settings.probe_slow_seconds >= settings.probe_timeout_seconds:
        problems.append(
            f"AGENT_PROBE_SLOW_SECONDS={settings.probe_slow_seconds:g}: must be less than "
            f"AGENT_PROBE_TIMEOUT_SECONDS ({settings.probe_timeout_seconds:g})"
        )


def _check_heartbeat_source(settings: SidecarSettings, problems: list[str]) -> None:
    # Checked now, so that a POD_NAME too long for heartbeatSource fails at start and not at the first beat.
    try:
        AgentStatus(heartbeat_source=heartbeat_source(settings.pod_name))
    except ValidationError as error:
        problems.extend(f"POD_NAME: too long for heartbeatSource ({e['msg']})" for e in error.errors())
