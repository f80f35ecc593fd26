"""The record the index keeps per agent, and the pure function that builds it from an Agent object."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent_registry.schema.agent import (
    CAPABILITY_PATTERN,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    AgentSpec,
    Load,
    Phase,
)
from agent_registry.schema.card import SKILL_ID_PATTERN, StoredCard
from agent_registry.schema.rest import AgentView, agent_view_from_resource, rest_status

_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)
_DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)
_CAPABILITY = re.compile(CAPABILITY_PATTERN)
_SKILL_ID = re.compile(SKILL_ID_PATTERN)


class IndexedAgent(BaseModel):
    """One agent: the REST ``Agent`` plus what lookups and the facade need.

    ``agent.name`` is also the Agent object's name. ``agent.last_seen`` is the time the
    operator observed the last heartbeat, on its own clock.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    load: Load | None = None
    """The load the agent's last Lease renewal reported (``schema.lease``). The first field on
    purpose: the route script reads it from the start of the JSON (``scripts.ROUTE``), where
    nothing the agent wrote (its metadata) can come before it and imitate it."""

    agent: AgentView
    namespace: str
    uid: str = ""
    resource_version: str = ""
    phase: Phase | None = None
    """The CR's phase; ``agent.status`` is its REST spelling (no phase yet reads as healthy)."""
    interval_seconds: int | None = None
    """``spec.heartbeat``'s timing, so a heartbeat that only renews the Lease needs no read
    of the Agent to answer ``next_interval_seconds`` and set the Lease's duration."""
    unreachable_after_seconds: int | None = None
    card_hash: str | None = None
    """The content hash of the agent's A2A card (``schema.card``), its ETag; None without a card."""
    card_json: bytes | None = Field(default=None, exclude=True)
    """The card's canonical JSON, to write beside the record (the index's ``cards`` hash), never
    inside it; so a record read back from the index has None here whatever its card. The
    operator's own copy of the card (``StoredCard.canonical``), not another one."""

    @model_validator(mode="after")
    def _usable_in_key_names(self) -> Self:
        # These strings become parts of Redis key names. The CRD guarantees them for real
        # objects; checking here keeps a hand-built record from writing keys that collide
        # (a type containing ":cap:" would land in a capability set).
        view = self.agent
        if not view.id:
            raise ValueError("an agent without an id cannot be indexed")
        if not _DNS_LABEL.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} is not a DNS label")
        if not _DNS_SUBDOMAIN.match(view.name):
            raise ValueError(f"name {view.name!r} is not a DNS subdomain")
        if not _DNS_LABEL.match(view.type):
            raise ValueError(f"type {view.type!r} is not a DNS label")
        for capability in view.capabilities:
            if not _CAPABILITY.match(capability):
                raise ValueError(f"capability {capability!r} does not match {CAPABILITY_PATTERN}")
        for skill in view.skills or ():
            if not _SKILL_ID.match(skill):
                raise ValueError(f"skill id {skill!r} does not match {SKILL_ID_PATTERN}")
        return self

    @property
    def id(self) -> str:
        return self.agent.id

    @property
    def name(self) -> str:
        return self.agent.name

    def to_json(self) -> dict[str, Any]:
        """The REST ``Agent`` on the wire (``metadata`` omitted when empty)."""
        return self.agent.to_json()


def record_from_resource(
    resource: Mapping[str, Any],
    *,
    phase: Phase | str | None = None,
    last_seen: datetime | None = None,
    load: Load | None = None,
    card: StoredCard | None = None,
) -> IndexedAgent:
    """The index record for an Agent object as the API server returns it.

    ``phase`` overrides ``status.phase`` when the operator has decided a phase it has not
    patched in yet; ``last_seen`` is the operator's own observation time of the last
    heartbeat (``agent_view_from_resource`` falls back to the agent's clock otherwise);
    ``load`` comes from the agent's Lease, which the operator watches apart. ``card`` is the
    object's card as the operator validated it: the record's skills are that card's, so
    the index never finds an agent by a skill of a card it does not serve.
    """
    view = agent_view_from_resource(resource, last_seen=last_seen)
    skills = list(card.skills) if card is not None else []
    view = view.model_copy(update={"skills": skills or None})
    meta = resource.get("metadata") or {}
    timing = AgentSpec.model_validate(resource.get("spec") or {}).heartbeat
    if phase is None:
        current = (resource.get("status") or {}).get("phase")
        resolved = Phase(current) if current else None
    else:
        resolved = Phase(phase)
        view = view.model_copy(update={"status": rest_status(resolved)})
    return IndexedAgent(
        agent=view,
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        phase=resolved,
        interval_seconds=timing.interval_seconds,
        unreachable_after_seconds=timing.unreachable_after_seconds,
        load=load,
        card_hash=card.hash if card is not None else None,
        card_json=card.canonical if card is not None else None,
    )
