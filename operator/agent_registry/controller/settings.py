"""Operator settings, from environment variables prefixed ``AGENT_REGISTRY_``."""

from __future__ import annotations

import socket
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENT_REGISTRY_", extra="ignore")

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Namespaces to watch, comma-separated; empty watches all namespaces (needs a ClusterRole).",
    )
    """One install may serve one team's namespace or a whole cluster."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """The index. Redis being down never stops reconciliation; it is rebuilt when it returns."""

    redis_key_prefix: str = "agent-registry"
    """Lets several installs, or tests, share one Redis."""

    index_ttl_seconds: int = Field(default=300, ge=10)
    """Index entries expire unless refreshed, so a stopped operator does not leave a
    stale index that looks authoritative forever."""

    index_refresh_seconds: float = Field(default=60.0, gt=0)
    """How often TTLs are extended and the index checked for loss (FLUSHALL, restart)."""

    index_changes_kept: int = Field(default=10_000, ge=100)
    """About how many changes the change feed keeps (a Redis stream beside the index), so
    a watch client (``GET /agents/watch``) that was disconnected can resume where it was;
    one further behind lists again. Each entry holds the agent's record before and after
    (about 2 KB), so the default costs about 20 MB of Redis memory at most."""

    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    """How often silence is judged. Unreachable is detected within unreachable-after
    plus one sweep."""

    self_preservation_share: float = Field(default=0.5, gt=0, le=1)
    """When more than this share of agents goes silent within one unreachable window,
    the cause is more likely the network or the registry: garbage collection pauses."""

    self_preservation_min_agents: int = Field(default=3, ge=1)
    """Below this many silent agents, no pause: in a fleet of two, one dead agent is 50%."""

    self_preservation_max_pause_seconds: float = Field(default=900.0, gt=0)
    """The pause is time-boxed; Eureka's unbounded self-preservation keeps dead instances forever."""

    kube_timeout_seconds: float = Field(default=10.0, gt=0)
    """Every call the operator makes to the API server gives up after this long. A call
    to a stalled API server would otherwise hang until it resumes and then apply a
    decision taken while the operator could not see (seen: Unreachable landing late)."""

    sight_probe_interval_seconds: float = Field(default=1.0, gt=0)
    """How often the operator checks that it can see the API server (a one-item consistent
    LIST of Agents per watched namespace, so etcd must answer too). Silence is judged only
    up to the start of the last probe that answered in time."""

    sight_gap_seconds: float = Field(default=5.0, gt=0)
    """A probe unanswered (or failed) for this long means the operator is blind: no agent
    is judged until it sees again, and then every agent in the scope gets a fresh grace
    period, because heartbeats sent meanwhile may have failed through no fault of the
    agents. Keep it below unreachable-after minus the heartbeat interval."""

    sight_watch_wait_seconds: float = Field(default=30.0, ge=0)
    """After a gap, the API server may answer before the watch has reconnected. Judging
    resumes at the first watch event of the scope (with one more fresh grace period), or
    after this long if none comes (a scope whose agents all died meanwhile)."""

    registered_events_per_second: float = Field(default=10.0, gt=0)
    """``Registered`` Events (one per new agent) are posted at most this fast after a
    burst of ``registered_events_burst``; the rest are counted
    (``agent_registry_events_suppressed_total``) and summed up in one Event on the
    operator's Lease, so a fleet registering at once is not waiting behind its Events."""

    registered_events_burst: int = Field(default=100, ge=0)

    metrics_port: int = Field(default=9090, ge=0, le=65535)
    """Prometheus metrics port; 0 disables the metrics server."""

    metrics_host: str = "0.0.0.0"

    leader_election: bool = True
    """Two replicas, one active, through a coordination.k8s.io Lease."""

    lease_name: str = "agent-registry-operator"
    lease_namespace: str = "default"
    """Where the Lease lives; the Helm chart sets it to the release namespace."""

    lease_duration_seconds: float = Field(default=15.0, gt=1)
    lease_renew_seconds: float = Field(default=5.0, gt=0)
    identity: str = Field(default_factory=socket.gethostname)
    """The lease holder's name; the pod name in a cluster."""

    watch_server_timeout_seconds: int = Field(default=300, ge=10)
    """Asks the API server to end each watch after this long, so connections recycle."""

    watch_inactivity_timeout_seconds: float = Field(default=600.0, ge=10)
    """A watch silent for this long is restarted: guards against half-dead connections."""

    watch_chunk_size: int = Field(default=500, ge=1)
    """The initial list is fetched in chunks, so 10,000 agents are not one huge response."""

    shutdown_timeout_seconds: float = Field(default=25.0, gt=0)
    """The longest a graceful exit may take before the process kills itself; below a pod's
    default 30 s termination grace period, so the Lease release is never skipped silently."""

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
