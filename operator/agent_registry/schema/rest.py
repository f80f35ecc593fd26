"""The REST contract kept from the original registry, derived from the Agent models.

Field names here are the original registry's snake_case and must not change. The field
types are the same annotated types the CRD uses, so a body the REST API accepts is a spec
the API server accepts, and the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from agent_registry.schema import constants as c
from agent_registry.schema.agent import (
    DNS_SUBDOMAIN_PATTERN,
    AgentSpec,
    AgentStatus,
    AgentType,
    AgentVersion,
    Capabilities,
    Capability,
    CapabilityReport,
    Host,
    Load,
    Metadata,
    Phase,
    Port,
    ReportedStatus,
    capability_reports,
)
from agent_registry.schema.card import AgentCard

AgentName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN),
    Field(
        description=(
            "Becomes the Agent object's name: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters."
        )
    ),
]


class _Request(BaseModel):
    # Existing agents may send fields newer registries dropped; ignore rather than fail.
    model_config = ConfigDict(extra="ignore")


class RegistrationRequest(_Request):
    name: AgentName
    type: AgentType
    host: Host
    port: Port
    capabilities: Capabilities = Field(default_factory=list)
    version: AgentVersion = c.DEFAULT_AGENT_VERSION
    metadata: Metadata | None = None
    agent_card: AgentCard | None = Field(
        default=None,
        description="Optional: the agent's A2A AgentCard (protocol 1.0). Stored with the agent, reduced to the "
        "card's own fields; its skill ids become discoverable (GET /agents?skill=...).",
    )

    def to_spec(self, heartbeat_interval_seconds: int | None = None) -> AgentSpec:
        spec = AgentSpec(
            type=self.type,
            host=self.host,
            port=self.port,
            capabilities=list(self.capabilities),
            version=self.version,
            metadata=dict(self.metadata or {}),
        )
        if heartbeat_interval_seconds is not None:
            spec.heartbeat.interval_seconds = heartbeat_interval_seconds
        return spec


class RegistrationResponse(BaseModel):
    agent_id: str
    registered_at: datetime
    heartbeat_url: str
    heartbeat_interval_seconds: int = c.DEFAULT_HEARTBEAT_INTERVAL_SECONDS


class HeartbeatRequest(_Request):
    status: ReportedStatus
    metadata: Metadata | None = None
    capabilities: Annotated[dict[Capability, CapabilityReport], Field(max_length=c.MAX_CAPABILITIES)] | None = Field(
        default=None,
        description=(
            "Optional: the health of each capability, by name; one not named is healthy. "
            "Every heartbeat is a full report: leaving this out means all are healthy."
        ),
    )
    load: Load | None = Field(
        default=None,
        description="Optional: the agent's load now. Routing prefers less loaded agents; left out, it has none.",
    )


class HeartbeatResponse(BaseModel):
    received: bool
    next_interval_seconds: int
    timestamp: datetime


def rest_status(phase: Phase | str | None) -> str:
    """The REST ``Agent.status``: the phase in the original's lowercase spelling.

    An agent the operator has not looked at yet has no phase; it just registered, so it
    counts as healthy.
    """
    return str(phase or Phase.HEALTHY.value).lower()


class AgentView(BaseModel):
    """The REST ``Agent``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    type: str
    host: str
    port: int
    capabilities: list[str]
    status: Annotated[str, Field(pattern="^(healthy|degraded|unhealthy|unreachable)$")]
    version: str
    registered_at: datetime | None
    last_seen: datetime | None
    metadata: dict[str, Any] | None = None
    capability_health: dict[str, CapabilityReport] | None = None
    """Capabilities the agent reports degraded or unhealthy; absent when all are healthy."""
    skills: list[str] | None = None
    """The skill ids of the agent's A2A card; absent when it has no card (or one without skills)."""

    def to_json(self) -> dict[str, Any]:
        """The wire form: ``metadata`` is omitted when empty, as the original did, and so are
        ``capability_health`` and ``skills`` (an agent that reports neither answers exactly as before)."""
        data = self.model_dump(mode="json")
        for optional in ("metadata", "capability_health", "skills"):
            if not data.get(optional):
                data.pop(optional, None)
        return data

    def capability_status(self, capability: str) -> str:
        """``healthy``, ``degraded`` or ``unhealthy``: what the agent reports for one capability."""
        report = (self.capability_health or {}).get(capability)
        return ReportedStatus.HEALTHY.value if report is None else report.status.value


def agent_view_from_resource(resource: Mapping[str, Any], last_seen: datetime | None = None) -> AgentView:
    """The REST ``Agent`` for an Agent object as the API server returns it.

    ``last_seen`` defaults to the agent's own heartbeat time; the operator passes the
    time it observed the heartbeat on its own clock instead.
    """
    meta = resource.get("metadata", {})
    spec = AgentSpec.model_validate(resource.get("spec", {}))
    status = AgentStatus.model_validate(resource.get("status") or {})
    merged = {**spec.metadata, **(status.reported_metadata or {})}
    # Only the capabilities the agent has: a report left from before a re-registration
    # that dropped one must not show (or steer routing).
    health = {
        name: report
        for name, report in capability_reports(status.capability_health).items()
        if name in spec.capabilities
    }
    return AgentView(
        id=status.agent_id or meta.get("labels", {}).get(c.AGENT_ID_LABEL, ""),
        name=meta.get("name", ""),
        type=spec.type,
        host=spec.host,
        port=spec.port,
        capabilities=list(spec.capabilities),
        status=rest_status(status.phase),
        version=spec.version,
        registered_at=status.registered_at,
        last_seen=last_seen or status.last_heartbeat_time or status.registered_at,
        metadata=merged or None,
        capability_health=health or None,
        skills=list(status.agent_card_skills or []) or None,
    )


class AgentListResponse(BaseModel):
    agents: list[AgentView]
    count: int


class CatalogueEntry(BaseModel):
    """One agent of the card catalogue: who it is in the registry, and its A2A card."""

    agent_id: str
    name: str
    card: AgentCard


class CardCatalogue(BaseModel):
    """``GET /agents/cards``: the cards of the healthy agents that match, by agent name."""

    cards: list[CatalogueEntry]
    count: int


class HealthResponse(BaseModel):
    status: str
    service: str
    timestamp: datetime


class ErrorResponse(BaseModel):
    error: str
