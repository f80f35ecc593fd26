"""The fields every module reads from objects, read one way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_registry.schema import constants as c


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def name(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("name", ""))


def namespace(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("namespace", ""))


def uid(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("uid", ""))


def resource_version(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("resourceVersion", ""))


def labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return meta(obj).get("labels") or {}


def registered_by(obj: Mapping[str, Any]) -> str | None:
    """The username that registered the Agent (its registered-by annotation), or None when unowned."""
    value = (meta(obj).get("annotations") or {}).get(c.REGISTERED_BY_ANNOTATION)
    return value if isinstance(value, str) and value else None


def agent_id(obj: Mapping[str, Any]) -> str | None:
    """The id the registry gave the agent: its status, else the label the facade set at creation."""
    status = obj.get("status") or {}
    return str(status.get("agentId") or labels(obj).get(c.AGENT_ID_LABEL) or "") or None


def delete_options(uid: str | None = None, resource_version: str | None = None) -> dict[str, Any]:
    """DeleteOptions that delete only the object as it was seen (a replacement or a change is a 409)."""
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
    preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
    if preconditions:
        body["preconditions"] = preconditions
    return body
