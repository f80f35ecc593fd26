"""The Agent custom resource's spec and status: the one schema source.

The CRD's OpenAPI schema (``crd.py``), the REST schemas (``rest.py``) and the sidecar's
payloads all come from these models. Every rule is written once, here, in a form both
pydantic and the Kubernetes API server enforce: plain OpenAPI constraints where they
suffice, and CEL (``x-kubernetes-validations``) beside an equivalent Python check where
they do not. The test suite drives one table of good and bad specs (``tests/helpers/agent_cases.py``)
through both and checks they agree.

Field names are camelCase on the wire (Kubernetes API conventions) and snake_case in
Python.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.alias_generators import to_camel

from agent_registry.schema import constants as c
from agent_registry.schema.card import MAX_SKILLS, SkillId

# Regular expressions are kept to the subset that both Go's RE2 (the API server) and
# Rust's regex crate (pydantic-core) read the same way: no look-around, no backrefs.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
CAPABILITY_PATTERN = r"^[a-z0-9]([a-z0-9_.-]*[a-z0-9])?$"
_HOST_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
# A hostname (which also covers dotted IPv4) or an IPv6 address in its colon form.
HOST_PATTERN = rf"^({_HOST_LABEL}(\.{_HOST_LABEL})*|[0-9A-Fa-f]{{0,4}}(:[0-9A-Fa-f]{{0,4}}){{2,7}})$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

METADATA_SIZE_RULE = f"metadata must have at most {c.MAX_METADATA_ENTRIES} entries"
METADATA_BYTES_RULE = f"metadata must serialize to at most {c.MAX_METADATA_BYTES} bytes of JSON"
UNREACHABLE_RULE = "unreachableAfterSeconds must be greater than intervalSeconds"
TYPE_IMMUTABLE_RULE = "type is immutable"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > c.MAX_METADATA_ENTRIES:
        raise ValueError(METADATA_SIZE_RULE)
    if len(json.dumps(value, separators=(",", ":"), default=str)) > c.MAX_METADATA_BYTES:
        raise ValueError(METADATA_BYTES_RULE)
    return value


# The CRD form. A structural schema can bound the number of entries but not the size of
# arbitrary JSON values, and CEL cannot see inside fields that preserve unknown fields
# (the API server refuses to compile such rules). So the API server enforces the entry
# count, and the byte bound is enforced by every writer that goes through these models
# (REST facade, sidecar); see docs/decisions.md.
_METADATA_CRD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": c.MAX_METADATA_ENTRIES,
    "additionalProperties": {"x-kubernetes-preserve-unknown-fields": True},
}

Metadata = Annotated[
    dict[str, Any],
    AfterValidator(_check_metadata),
    WithJsonSchema(_METADATA_CRD_SCHEMA),
]
"""Free-form JSON about an agent, bounded in entries and in size."""

AgentType = Annotated[
    str,
    StringConstraints(min_length=1, max_length=c.MAX_TYPE_LENGTH, pattern=DNS_LABEL_PATTERN),
    Field(
        description="Kind of agent, a lowercase DNS label. Known: "
        + ", ".join(c.KNOWN_AGENT_TYPES)
        + "; others allowed.",
    ),
]
Host = Annotated[
    str,
    StringConstraints(min_length=1, max_length=c.MAX_HOST_LENGTH, pattern=HOST_PATTERN),
    Field(description="Hostname, IPv4 or IPv6 address where the agent listens."),
]
# Strict: the API server refuses "8080" for an integer, so the models do too.
Port = Annotated[int, Field(strict=True, ge=1, le=65535, description="TCP port where the agent listens.")]
Capability = Annotated[
    str,
    StringConstraints(min_length=1, max_length=c.MAX_CAPABILITY_LENGTH, pattern=CAPABILITY_PATTERN),
]
AgentVersion = Annotated[str, StringConstraints(max_length=c.MAX_VERSION_LENGTH)]


def _check_unique(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate capability {value!r}")
        seen.add(value)
    return values


Capabilities = Annotated[
    list[Capability],
    Field(max_length=c.MAX_CAPABILITIES, json_schema_extra={"x-kubernetes-list-type": "set"}),
    AfterValidator(_check_unique),
]
"""Unique lowercase tokens such as ``spot_migration``. ``list-type: set`` makes the API
server reject duplicates (structural schemas may not use ``uniqueItems``)."""


class ReportedStatus(enum.StrEnum):
    """What an agent (or its sidecar's probe) says about its own health."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


class Load(BaseModel):
    """An agent's load as a heartbeat reports it: tasks in flight, and the most it accepts.

    ``in_flight`` may exceed ``max`` (an agent that took more than it should): it is full
    either way. Never stored on the Agent: it travels on the Lease (``schema.lease``) and
    lives in the index, where routing reads it (docs/decisions.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_flight: int = Field(strict=True, ge=0, le=c.MAX_LOAD, description="Tasks the agent is working on now.")
    max: int = Field(strict=True, ge=1, le=c.MAX_LOAD, description="The most tasks the agent accepts at once.")

    @property
    def full(self) -> bool:
        return self.in_flight >= self.max

    @property
    def utilisation(self) -> float:
        return self.in_flight / self.max


CapabilityReason = Annotated[str, StringConstraints(max_length=c.MAX_CAPABILITY_REASON_LENGTH)]


class CapabilityReport(BaseModel):
    """The health of one capability, as a heartbeat reports it and the REST API shows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: ReportedStatus
    reason: CapabilityReason = ""


class Phase(enum.StrEnum):
    """The registry's view of an agent, decided by the operator."""

    HEALTHY = "Healthy"
    DEGRADED = "Degraded"
    UNHEALTHY = "Unhealthy"
    UNREACHABLE = "Unreachable"


class HeartbeatSettings(_Model):
    """How often the agent heartbeats and how long silence is tolerated."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.unreachableAfterSeconds > self.intervalSeconds",
                    "message": UNREACHABLE_RULE,
                    "fieldPath": ".unreachableAfterSeconds",
                }
            ]
        }
    )

    interval_seconds: int = Field(
        strict=True,
        default=c.DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
        ge=c.MIN_INTERVAL_SECONDS,
        le=c.MAX_INTERVAL_SECONDS,
        description="Seconds between heartbeats.",
    )
    unreachable_after_seconds: int = Field(
        strict=True,
        default=c.DEFAULT_UNREACHABLE_AFTER_SECONDS,
        ge=c.MIN_UNREACHABLE_AFTER_SECONDS,
        le=c.MAX_UNREACHABLE_AFTER_SECONDS,
        description="Silence after which the agent is Unreachable; must exceed intervalSeconds.",
    )
    gc_after_seconds: int = Field(
        strict=True,
        default=c.DEFAULT_GC_AFTER_SECONDS,
        ge=c.MIN_GC_AFTER_SECONDS,
        le=c.MAX_GC_AFTER_SECONDS,
        description="Time an agent stays Unreachable before it is deleted.",
    )

    @field_validator("unreachable_after_seconds")
    @classmethod
    def _unreachable_after_exceeds_interval(cls, value: int, info: ValidationInfo) -> int:
        # Fields validate in order, so interval_seconds is known here unless it was invalid.
        interval = info.data.get("interval_seconds")
        if interval is not None and value <= interval:
            raise ValueError(UNREACHABLE_RULE)
        return value


class AgentSpec(_Model):
    """What an agent is and where to reach it. Written by whoever registers the agent."""

    type: AgentType = Field(
        json_schema_extra={"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": TYPE_IMMUTABLE_RULE}]}
    )
    host: Host
    port: Port
    capabilities: Capabilities = Field(default_factory=list, json_schema_extra={"default": []})
    version: AgentVersion = Field(default=c.DEFAULT_AGENT_VERSION, description="The agent's software version.")
    metadata: Metadata = Field(default_factory=dict, json_schema_extra={"default": {}})
    heartbeat: HeartbeatSettings = Field(
        default_factory=HeartbeatSettings,
        # The whole default, not {}: the API server checks defaults against the CEL rule
        # before nested defaulting would fill them in.
        json_schema_extra={"default": HeartbeatSettings().model_dump(by_alias=True)},
    )


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_Model):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=316)]
    status: ConditionStatus
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN)]
    message: Annotated[str, StringConstraints(max_length=c.MAX_MESSAGE_LENGTH)] = ""
    last_transition_time: datetime
    observed_generation: Annotated[int, Field(ge=0)] | None = None


class CapabilityHealth(_Model):
    """One capability an agent reports as not healthy (healthy ones are not stored)."""

    name: Capability
    status: ReportedStatus
    reason: CapabilityReason = ""


def capability_health_list(reports: Mapping[str, CapabilityReport] | None) -> list[CapabilityHealth]:
    """``status.capabilityHealth`` for a heartbeat's report: the capabilities not healthy, by name."""
    return [
        CapabilityHealth(name=name, status=report.status, reason=report.reason)
        for name, report in sorted((reports or {}).items())
        if report.status != ReportedStatus.HEALTHY
    ]


def capability_reports(entries: list[CapabilityHealth] | None) -> dict[str, CapabilityReport]:
    """The other way round: the REST form of ``status.capabilityHealth``."""
    return {entry.name: CapabilityReport(status=entry.status, reason=entry.reason) for entry in entries or []}


# The card's shape is checked by ``schema.card.AgentCard`` in every writer (sidecar, facade)
# and again by the operator before it indexes a card; the CRD keeps it as it is. A
# structural schema of the card would prune fields a newer A2A version adds, and its size
# cannot be bounded by the API server anyway (see the metadata bound above).
_CARD_CRD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
    "description": "The agent's A2A AgentCard, as validated and reduced by the registry (schema/card.py).",
}


class CardProblem(_Model):
    """Why the agent's card was not taken at the last try (written by the sidecar); the
    operator shows it as the ``CardValid`` condition."""

    reason: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=CONDITION_REASON_PATTERN)]
    message: Annotated[str, StringConstraints(max_length=c.MAX_MESSAGE_LENGTH)] = ""


class AgentStatus(_Model):
    """Observed state. Heartbeat fields are written by the sidecar or the facade; the
    rest by the operator. The API server prunes status fields missing here, so every
    field any component writes is declared."""

    phase: Phase | None = Field(default=None, description="The registry's view of the agent.")
    agent_id: (
        Annotated[str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")] | None
    ) = Field(default=None, description="UUID the REST API knows the agent by.")
    registered_at: datetime | None = None
    # Heartbeat fields: a heartbeat is a merge-patch of exactly these.
    last_heartbeat_time: datetime | None = Field(
        default=None, description="When the agent last heartbeated, on the agent's clock."
    )
    heartbeat_sequence: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="Increases with every heartbeat, so a heartbeat is seen even when a skewed clock repeats a time.",
    )
    reported_status: ReportedStatus | None = Field(default=None, description="Health the agent last reported.")
    reported_metadata: Metadata | None = Field(
        default=None, description="Metadata sent with heartbeats, merged over spec.metadata."
    )
    heartbeat_source: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, description="Who writes the heartbeats, e.g. sidecar/<pod> or rest."
    )
    capability_health: Annotated[list[CapabilityHealth], Field(max_length=c.MAX_CAPABILITIES)] | None = Field(
        default=None,
        description="Capabilities the agent last reported degraded or unhealthy (the others are healthy). "
        "Routing skips an agent for a capability it reports unhealthy; its phase does not change.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    agent_card: Annotated[dict[str, Any], WithJsonSchema(_CARD_CRD_SCHEMA)] | None = Field(default=None)
    agent_card_hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None, description="SHA-256 (hex) of agentCard's canonical JSON: its ETag."
    )
    agent_card_skills: Annotated[list[SkillId], Field(max_length=MAX_SKILLS)] | None = Field(
        default=None,
        description="The ids of agentCard's skills, for discovery by skill and for kubectl's Skills column.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    agent_card_problem: CardProblem | None = Field(
        default=None,
        description="Why the card the agent serves was not taken at the last try; absent when it was. "
        "agentCard then still holds the last card that was.",
    )
    conditions: Annotated[list[Condition], Field(max_length=c.MAX_CONDITIONS)] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: Annotated[int, Field(ge=0)] | None = None


def validate_spec_update(old: AgentSpec, new: AgentSpec) -> None:
    """The transition rules the CRD enforces with CEL ``oldSelf``."""
    if old.type != new.type:
        raise ValueError(f"spec.type: {TYPE_IMMUTABLE_RULE}")


def error_paths(exc: ValidationError, prefix: str = "spec") -> list[str]:
    """Turn pydantic errors into ``spec.port: <message>`` lines, the way the API server names fields."""
    lines = []
    for error in exc.errors():
        path = prefix
        for part in error["loc"]:
            # Defaults that fail validation are reported under the Python name.
            path += f"[{part}]" if isinstance(part, int) else f".{to_camel(part)}"
        lines.append(f"{path}: {error['msg']}")
    return lines
