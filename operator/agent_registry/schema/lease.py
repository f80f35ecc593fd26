"""An agent's Lease: the small object its heartbeats renew (KEP-589's answer for nodes).

A heartbeat that patched the whole Agent's status cost the API server about 10 ms of CPU
and etcd 2.8 KB each (docs/performance.md). A renewal rewrites a Lease of a few hundred
bytes instead, and the Agent's status is written only when what the agent reports changes.

* One Lease per Agent, in its namespace, named ``agent-<agent name>`` (shortened with a
  hash when that would exceed the 253 characters an object name may have).
* Labelled ``registry.optiinfra.io/agent`` so the operator watches only these Leases, and
  the chart's owner rule covers them; the label's value is the Agent's name when it fits
  in a label value (63 characters), else a hash of it: informative only, the operator
  finds the Agent by the owner reference.
* Owned by the Agent (an ownerReference with its uid), so the garbage collector deletes it
  with the Agent, and a Lease left by an earlier Agent of the same name is told apart.
* ``holderIdentity`` is the heartbeat source, ``leaseDurationSeconds`` the agent's
  unreachable-after, ``renewTime`` the writer's clock. The operator never compares
  ``renewTime`` with anything: a renewal is a change of the Lease it observes, timed on
  its own clock, so a skewed writer clock changes nothing.

Pure functions; the sidecar, the facade and the operator all build and read Leases here.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from agent_registry.schema import constants as c
from agent_registry.schema.agent import Load

API_VERSION = "coordination.k8s.io/v1"
KIND = "Lease"
NAME_PREFIX = "agent-"
_MAX_NAME = 253
_MAX_LABEL_VALUE = 63
_HASH_CHARS = 10
# The Lease fields a renewal writes: any change of them is a renewal.
RENEWAL_FIELDS = ("holderIdentity", "leaseDurationSeconds", "renewTime")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]


def lease_name(agent_name: str) -> str:
    """The Lease's name for an Agent's: ``agent-<name>``, shortened and hashed when too long."""
    name = NAME_PREFIX + agent_name
    if len(name) <= _MAX_NAME:
        return name
    # Cut, then trim what may not end a DNS subdomain label before the hash suffix.
    head = name[: _MAX_NAME - _HASH_CHARS - 1].rstrip(".-")
    return f"{head}-{_digest(agent_name)}"


def label_value(agent_name: str) -> str:
    """The ``registry.optiinfra.io/agent`` label's value: the Agent's name, or a hash when it is too long."""
    if len(agent_name) <= _MAX_LABEL_VALUE and re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", agent_name):
        return agent_name
    return _digest(agent_name)


def micro_time(moment: datetime) -> str:
    """A ``MicroTime`` as the API server writes it (RFC 3339, microseconds, UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def duration_seconds(unreachable_after: float) -> int:
    """``leaseDurationSeconds`` for an unreachable-after: a whole number of seconds, at least 1."""
    return max(1, math.ceil(unreachable_after))


def renewal(holder: str, unreachable_after: float, now: datetime) -> dict[str, Any]:
    """The Lease spec a renewal writes."""
    return {
        "holderIdentity": holder,
        "leaseDurationSeconds": duration_seconds(unreachable_after),
        "renewTime": micro_time(now),
    }


def owner_reference(agent_name: str, agent_uid: str) -> dict[str, Any]:
    return {"apiVersion": c.API_VERSION, "kind": c.KIND, "name": agent_name, "uid": agent_uid}


def load_annotation(load: Load | None) -> str | None:
    """The ``load`` annotation's value, ``<in_flight>/<max>``; None (removed) without a report."""
    return None if load is None else f"{load.in_flight}/{load.max}"


def load_of(lease: Mapping[str, Any]) -> Load | None:
    """The load the Lease's last renewal reported, or None (none, or not in the annotation's form)."""
    value = ((lease.get("metadata") or {}).get("annotations") or {}).get(c.LOAD_ANNOTATION)
    if not isinstance(value, str):
        return None
    in_flight, _, most = value.partition("/")
    if not (in_flight.isdigit() and most.isdigit()):
        return None
    try:
        return Load(in_flight=int(in_flight), max=int(most))
    except ValueError:
        return None


def renewal_patch(agent_name: str, agent_uid: str, spec: Mapping[str, Any], load: Load | None = None) -> dict[str, Any]:
    """A renewal as one merge-patch, no read first: the spec, the owner reference and the load.

    The owner goes in every renewal so that a Lease left by an earlier Agent of the same
    name (deleted, its Lease not collected yet) becomes the current Agent's at the first
    renewal, instead of being renewed for an owner the operator no longer tracks. The load
    annotation goes in every renewal too, null when there is no report, so a stale one is
    removed.
    """
    return {
        "metadata": {
            "ownerReferences": [owner_reference(agent_name, agent_uid)],
            "annotations": {c.LOAD_ANNOTATION: load_annotation(load)},
        },
        "spec": dict(spec),
    }


def build_lease(
    namespace: str,
    agent_name: str,
    agent_uid: str,
    spec: Mapping[str, Any],
    registered_by: str | None = None,
    load: Load | None = None,
) -> dict[str, Any]:
    """A new Lease for the Agent ``agent_name`` (uid ``agent_uid``), with ``spec`` from ``renewal``.

    ``registered_by`` is the creating user's name: where the owner rule is installed, only
    that user may renew the Lease afterwards.
    """
    metadata: dict[str, Any] = {
        "name": lease_name(agent_name),
        "namespace": namespace,
        "labels": {c.AGENT_LEASE_LABEL: label_value(agent_name)},
        "ownerReferences": [owner_reference(agent_name, agent_uid)],
    }
    annotations = {c.REGISTERED_BY_ANNOTATION: registered_by, c.LOAD_ANNOTATION: load_annotation(load)}
    if any(annotations.values()):
        metadata["annotations"] = {key: value for key, value in annotations.items() if value}
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": dict(spec)}


def owning_agent(lease: Mapping[str, Any]) -> tuple[str, str] | None:
    """(name, uid) of the Agent that owns the Lease, or None for a Lease no Agent owns."""
    for ref in (lease.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == c.KIND and str(ref.get("apiVersion", "")).split("/")[0] == c.GROUP:
            return str(ref.get("name", "")), str(ref.get("uid", ""))
    return None


def renewal_signature(lease: Mapping[str, Any]) -> str:
    """What a renewal changes; two observations with different signatures are two renewals."""
    spec = lease.get("spec") or {}
    return json.dumps([spec.get(field) for field in RENEWAL_FIELDS], default=str)
