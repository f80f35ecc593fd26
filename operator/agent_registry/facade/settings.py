"""Facade settings, from environment variables prefixed ``AGENT_REGISTRY_FACADE_``.

The Redis URL and key prefix are shared with the operator: the facade must read the index
under the very prefix the operator writes it, so one pair of variables
(``AGENT_REGISTRY_REDIS_URL``, ``AGENT_REGISTRY_REDIS_KEY_PREFIX``, as the Helm chart sets
them for both) configures both processes. ``AGENT_REGISTRY_FACADE_REDIS_URL`` and
``AGENT_REGISTRY_FACADE_REDIS_KEY_PREFIX`` override them for the facade alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Self

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent_registry.index import DEFAULT_PREFIX
from agent_registry.schema import constants as c
from agent_registry.schema.agent import DNS_LABEL_PATTERN

ENV_PREFIX = "AGENT_REGISTRY_FACADE_"


def _shared(name: str) -> AliasChoices:
    """The facade's own variable first, then the one it shares with the operator."""
    return AliasChoices(f"{ENV_PREFIX}{name}", f"AGENT_REGISTRY_{name}")


class FacadeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", populate_by_name=True)

    host: str = "0.0.0.0"
    """Listen address; the Helm chart sets it explicitly."""

    port: int = Field(default=8080, ge=0, le=65535)
    """The port existing agents know (the original registry's default ``orchestrator_url``)."""

    metrics_port: int = Field(default=9091, ge=0, le=65535)
    """Prometheus metrics (``GET /metrics``) on a port of their own at ``host``, as the operator
    serves its own: request counts by route, outcomes and auth decisions say how big the fleet
    is and who is turned away, so they are not on the port every agent and client reaches (a
    Service exposing the API, even a LoadBalancer, does not expose this one). 0 serves
    ``GET /metrics`` on the API port instead, behind the same check as ``GET /agents``: a token
    that may list agents in ``namespace``."""

    namespace: Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)] = "default"
    """Where agents registered through the REST API live when a request names no namespace.
    Existing agents know nothing about namespaces, so this is where they all land."""

    allowed_namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Namespaces a ``namespace`` query parameter may name, comma-separated; empty allows any.
    An agent registered where no operator watches would never get a phase or an index entry,
    so an install that watches a few namespaces should list them here."""

    auth_enabled: bool = True
    """Check bearer tokens (TokenReview) and authorise them (SubjectAccessReview), so RBAC on
    ``agents`` decides who may register, heartbeat, unregister and read. Turn off only for
    local development: anyone who reaches the port can then write Agents."""

    auth_cache_seconds: float = Field(default=10.0, ge=0)
    """How long a token's identity and an allowed decision are reused. A heartbeat every 30 s
    from thousands of agents would otherwise cost two API calls each; revoking RBAC takes
    effect within this time, as with the API server's own webhook authorizer cache."""

    auth_stale_seconds: float = Field(default=300.0, ge=0)
    """While the API server is unreachable, identities and decisions cached up to this long
    ago are still honoured, so reads served from Redis keep working for known callers.
    Unknown tokens get 503: nothing can vouch for them."""

    auth_audiences: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Audiences a token must be bound to, comma-separated; empty means the API server's own."""

    heartbeat_interval_seconds: int = Field(
        default=c.DEFAULT_HEARTBEAT_INTERVAL_SECONDS, ge=c.MIN_INTERVAL_SECONDS, le=c.MAX_INTERVAL_SECONDS
    )
    """``spec.heartbeat.intervalSeconds`` of agents registered through REST; told to them as
    ``heartbeat_interval_seconds``."""

    unreachable_after_seconds: int = Field(
        default=c.DEFAULT_UNREACHABLE_AFTER_SECONDS,
        ge=c.MIN_UNREACHABLE_AFTER_SECONDS,
        le=c.MAX_UNREACHABLE_AFTER_SECONDS,
    )
    """``spec.heartbeat.unreachableAfterSeconds`` of agents registered through REST."""

    gc_after_seconds: int = Field(
        default=c.DEFAULT_GC_AFTER_SECONDS, ge=c.MIN_GC_AFTER_SECONDS, le=c.MAX_GC_AFTER_SECONDS
    )
    """``spec.heartbeat.gcAfterSeconds`` of agents registered through REST."""

    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    """Larger request bodies get 413 before they are read. Four times the metadata bound
    leaves room for everything else in a registration."""

    max_concurrent_queries: int = Field(default=8, ge=0)
    """Reads (GET on ``/agents...``) worked on at once. Every request in progress shares one
    event loop, so this bounds how much query work a registration or heartbeat (never
    limited) can find ahead of it; a few are enough to keep the index busy. 0: no limit."""

    max_queued_queries: int = Field(default=256, ge=0)
    """Reads that may wait for a turn beyond ``max_concurrent_queries``; one more is answered
    429 with ``Retry-After`` at once. A waiting read costs no CPU."""

    query_queue_seconds: float = Field(default=1.0, gt=0, le=60)
    """How long a read may wait for its turn before it is answered 429."""

    watch_max_open: int = Field(default=1000, ge=0)
    """Watch streams (``GET /agents/watch``) this process keeps open at once; one more is
    answered 429. Each costs about 30 KB (docs/performance.md)."""

    watch_keepalive_seconds: float = Field(default=15.0, gt=0, le=300)
    """A quiet stream gets a comment this often, so proxies and clients see it alive. A
    client that takes no data for this long is taken for gone and its stream ended."""

    watch_buffer_events: int = Field(default=1000, ge=1)
    """Changes that may wait for one watch's client; a client further behind is too slow and
    its stream is ended (it resumes from its last event id, losing nothing the feed still holds)."""

    watch_max_seconds: float = Field(default=1800.0, gt=0)
    """Each stream ends after about this long (±10%) and the client resumes, so a token whose
    RBAC was revoked stops receiving within this time, as Kubernetes ends its own watches."""

    route_seed: int | None = None
    """Seeds the random draws of load-aware routing (``GET /agents/route``), so a test or a
    benchmark can repeat its picks. Unset: fresh randomness per process, which replicas
    need (with one seed they would all draw alike)."""

    @field_validator("route_seed", mode="before")
    @classmethod
    def _empty_seed_is_none(cls, value: object) -> object:
        # The chart renders an unset seed as an empty variable.
        return None if value == "" else value

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias=_shared("REDIS_URL"))
    """The operator's index. Down or empty, reads fall back to the API server."""

    redis_key_prefix: str = Field(default=DEFAULT_PREFIX, validation_alias=_shared("REDIS_KEY_PREFIX"))
    """Must equal the operator's ``AGENT_REGISTRY_REDIS_KEY_PREFIX``."""

    redis_timeout_seconds: float = Field(default=1.0, gt=0)
    """A cache that answers slowly is worse than none: past this, the API server answers."""

    redis_max_connections: int = Field(default=100, ge=1)
    """Connections to Redis; past this, reads wait (up to ``redis_timeout_seconds``) for one."""

    redis_retry_seconds: float = Field(default=1.0, ge=0)
    """After Redis fails, reads go straight to the API server for this long before Redis is
    tried again, so an outage does not add a timeout to every request."""

    kubeconfig: Path | None = None
    """A kubeconfig file. Unset: the in-cluster service account, else the first file in
    ``KUBECONFIG``, else ~/.kube/config (the precedence of every process, ``kubeapi.credentials``)."""

    kube_timeout_seconds: float = Field(default=10.0, gt=0)
    """Per API-server request. A write that cannot finish in time answers 503."""

    read_your_writes_seconds: float = Field(default=10.0, ge=0)
    """After this process writes an agent, reads of it prefer what the API server returned
    until the index has caught up, or for at most this long. The operator normally indexes a
    change within milliseconds; this bounds the wait when it is slow or down."""

    shutdown_timeout_seconds: float = Field(default=25.0, gt=0)
    """On SIGTERM in-flight requests get this long to finish; below a pod's default 30 s
    termination grace period."""

    log_level: str = "INFO"
    access_log: bool = False
    """uvicorn's per-request log line; off because heartbeats would drown everything else."""

    service_name: str = "agent-registry"
    """The ``service`` field of ``GET /health``."""

    @field_validator("allowed_namespaces", "auth_audiences", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ValueError(f"unknown log level {value!r}")
        return level

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.unreachable_after_seconds <= self.heartbeat_interval_seconds:
            raise ValueError("unreachable_after_seconds must be greater than heartbeat_interval_seconds")
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError("metrics_port must differ from port (0 serves metrics on the API port, behind auth)")
        if self.allowed_namespaces and self.namespace not in self.allowed_namespaces:
            raise ValueError(f"namespace {self.namespace!r} must be one of allowed_namespaces")
        return self

    def namespace_allowed(self, namespace: str) -> bool:
        return not self.allowed_namespaces or namespace in self.allowed_namespaces
