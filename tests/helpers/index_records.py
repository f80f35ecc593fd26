"""Agent objects and index records built by hand, for the index's tests."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from agent_registry.index import IndexedAgent, record_from_resource
from agent_registry.schema import constants as c
from agent_registry.schema.agent import Load
from agent_registry.schema.card import StoredCard

TTL = 120
"""The index TTL the tests' writer uses."""


def resource(
    name: str,
    *,
    namespace: str = "team-a",
    agent_type: str = "cost",
    capabilities: Sequence[str] = (),
    phase: str | None = None,
    agent_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    version: str = c.DEFAULT_AGENT_VERSION,
) -> dict[str, Any]:
    """An Agent object the way the API server returns it."""
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": "42",
            "labels": {c.AGENT_ID_LABEL: agent_id or str(uuid.uuid4())},
        },
        "spec": {
            "type": agent_type,
            "host": "10.0.0.7",
            "port": 8080,
            "capabilities": list(capabilities),
            "metadata": metadata or {},
            "version": version,
        },
        "status": {**({"phase": phase} if phase else {}), **(status or {})},
    }


def record(name: str, *, load: Load | None = None, card: dict[str, Any] | None = None, **kwargs: Any) -> IndexedAgent:
    """The record of ``resource(name, ...)``; with ``card`` (an A2A card), the object stores it
    and the record carries it, as the operator indexes a card it validated."""
    stored = StoredCard.validated(card) if card is not None else None
    if stored is not None:
        kwargs["status"] = {**(kwargs.get("status") or {}), **stored.status_fields()}
    return record_from_resource(resource(name, **kwargs), load=load, card=stored)
