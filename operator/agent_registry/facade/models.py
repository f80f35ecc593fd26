"""Response bodies of the facade's own routes (the contract's bodies live in ``schema/rest.py``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

UNREGISTERED = "Agent unregistered successfully"


class MessageResponse(BaseModel):
    message: str


class DependencyCheck(BaseModel):
    ok: bool
    error: str | None = None


class ReadyResponse(BaseModel):
    status: Literal["ready", "degraded", "unavailable"] = Field(
        description="ready: the API server and the index answer. degraded: one of them does not; reads or writes "
        "still work (Redis down: reads come from the API server; API server down: reads come from Redis, writes "
        "get 503). unavailable: neither answers (HTTP 503)."
    )
    checks: dict[str, DependencyCheck]
    timestamp: datetime


class AgentEvent(BaseModel):
    """A Kubernetes Event about an agent, as ``kubectl describe agent`` lists them."""

    type: str = Field(description="Normal or Warning.")
    reason: str = Field(description="A word for what happened: Registered, Unreachable, Recovered, Degraded, ...")
    message: str
    count: int = Field(description="How often it happened between first_seen and last_seen.")
    first_seen: datetime | None
    last_seen: datetime | None
    source: str = Field(description="The component that reported it (agent-registry-operator, ...).")


class AgentEventList(BaseModel):
    events: list[AgentEvent] = Field(description="Newest first.")
    count: int
