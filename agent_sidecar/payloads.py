"""What the sidecar sends to the API server, built from the schema models; pure functions.

The heartbeat is a merge-patch of the status subresource holding only the heartbeat
fields; ``phase`` and ``conditions`` belong to the operator and are never written here.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from agent_registry.kubeapi import objects
from agent_registry.schema import constants as c
from agent_registry.schema.agent import AgentStatus, CapabilityHealth, ReportedStatus
from agent_sidecar.config import SidecarConfig

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "agent-sidecar"
POD_ANNOTATION = f"{c.GROUP}/pod-name"
NODE_ANNOTATION = f"{c.GROUP}/node-name"

_SEQUENCE = AgentStatus.model_fields["heartbeat_sequence"].alias or "heartbeatSequence"
_SOURCE = AgentStatus.model_fields["heartbeat_source"].alias or "heartbeatSource"


def build_owner_reference(pod_name: str, pod_uid: str) -> dict[str, Any]:
    """The Pod as the Agent's owner, so the garbage collector removes the Agent with the pod.

    No ``blockOwnerDeletion``: setting it needs permission to update the pod's finalizers,
    and nothing needs the pod's deletion to wait for the Agent's.
    """
    return {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid}


def build_agent(config: SidecarConfig, owner: dict[str, Any] | None, identity: str | None = None) -> dict[str, Any]:
    """A new Agent object; ``identity`` (the sidecar's username) goes into the registered-by annotation."""
    annotations = {k: v for k, v in _annotations(config).items() if v is not None}
    if identity:
        annotations[c.REGISTERED_BY_ANNOTATION] = identity
    metadata: dict[str, Any] = {
        "name": config.name,
        "namespace": config.namespace,
        # The id label set here, as the facade does, spares the operator a label patch per
        # new agent: its initialisation is then one status write.
        "labels": {**_labels(config), c.AGENT_ID_LABEL: str(uuid.uuid4())},
        "annotations": annotations,
    }
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return {"apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": metadata, "spec": _spec(config)}


def build_adoption_patch(
    existing: dict[str, Any], config: SidecarConfig, owner: dict[str, Any] | None, identity: str | None = None
) -> dict[str, Any]:
    """A merge-patch that makes an existing Agent this sidecar's.

    It carries the ``resourceVersion`` it was computed from, so a concurrent change turns
    it into a 409 rather than a mix. The spec becomes exactly the configured one (metadata
    keys the configuration dropped are removed), and any previous Pod owner is replaced:
    left in place, the old pod's deletion would take the adopted Agent with it. An unowned
    Agent (no registered-by annotation) is claimed with ``identity``; an owned one keeps its
    owner, which only that owner (or whoever may override agents) can write anyway.
    """
    meta = existing.get("metadata", {})
    spec = _spec(config)
    old_metadata = (existing.get("spec") or {}).get("metadata") or {}
    spec["metadata"] = {**dict.fromkeys(old_metadata), **spec["metadata"]}
    owners = [ref for ref in meta.get("ownerReferences") or [] if not _is_pod(ref)]
    if owner is not None:
        owners.append(owner)
    annotations = _annotations(config)
    if identity and not objects.registered_by(existing):
        annotations[c.REGISTERED_BY_ANNOTATION] = identity
    return {
        "metadata": {
            "resourceVersion": meta.get("resourceVersion"),
            "labels": _labels(config),
            "annotations": annotations,
            "ownerReferences": owners,
        },
        "spec": spec,
    }


def build_heartbeat(
    now: datetime,
    sequence: int,
    status: ReportedStatus,
    source: str,
    capability_health: list[CapabilityHealth] | None = None,
) -> dict[str, Any]:
    """The status merge-patch for one heartbeat: exactly the heartbeat fields, under their CRD names.

    ``capability_health`` (``capability_health_list`` of the report) goes in whole, ``[]``
    when all are healthy: a merge-patch replaces a list, so that clears entries an earlier
    report left. None leaves the field alone.
    """
    heartbeat = AgentStatus(
        last_heartbeat_time=now,
        heartbeat_sequence=sequence,
        reported_status=status,
        heartbeat_source=source,
    )
    if capability_health is not None:
        heartbeat.capability_health = capability_health
    return {"status": heartbeat.model_dump(mode="json", by_alias=True, exclude_unset=True)}


def heartbeat_sequence(agent: dict[str, Any]) -> int:
    """The Agent's last heartbeat sequence number (0 before any heartbeat)."""
    value = (agent.get("status") or {}).get(_SEQUENCE)
    return value if isinstance(value, int) else 0


def heartbeat_writer(agent: dict[str, Any]) -> str | None:
    """Who wrote the Agent's last heartbeat, e.g. ``sidecar/<pod>``."""
    writer = (agent.get("status") or {}).get(_SOURCE)
    return writer if isinstance(writer, str) else None


def is_written_by(agent: dict[str, Any], source: str, uid: str | None) -> bool:
    """Whether the Agent is still this sidecar's: it heartbeats into it, or created it and nobody else took over."""
    writer = heartbeat_writer(agent)
    if writer is not None:
        return writer == source
    return uid is not None and agent.get("metadata", {}).get("uid") == uid


def is_deleting(agent: dict[str, Any]) -> bool:
    return bool(agent.get("metadata", {}).get("deletionTimestamp"))


def _spec(config: SidecarConfig) -> dict[str, Any]:
    spec: dict[str, Any] = config.spec.model_dump(mode="json", by_alias=True)
    return spec


def _labels(config: SidecarConfig) -> dict[str, str]:
    return {c.AGENT_TYPE_LABEL: config.spec.type, MANAGED_BY_LABEL: MANAGED_BY}


def _annotations(config: SidecarConfig) -> dict[str, str | None]:
    return {POD_ANNOTATION: config.settings.pod_name, NODE_ANNOTATION: config.settings.node_name}


def _is_pod(ref: dict[str, Any]) -> bool:
    return ref.get("kind") == "Pod" and ref.get("apiVersion") == "v1"
