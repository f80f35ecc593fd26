"""The operator's own calls to the API server: status patches, deletes (of Agents and their
Leases), Events, sight probes.

kopf owns the watch; these calls come from the sweeper, the sight probe and the leader
elector, which run outside kopf's handlers. They go through the one client layer's
asynchronous transport (``agent_registry.kubeapi``): no worker threads, and every call
carries a timeout, because a call to a stalled API server must fail, not hang until the
server resumes and then apply a decision that is stale by then.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from agent_registry import kubeapi
from agent_registry.kubeapi import objects, paths
from agent_registry.kubeapi.aio import AsyncApi
from agent_registry.kubeapi.credentials import Connection
from agent_registry.schema import constants as c

logger = logging.getLogger(__name__)

FIELD_MANAGER = "agent-registry-operator"
_MANAGED = {"fieldManager": FIELD_MANAGER}


class DeleteOutcome(enum.Enum):
    DELETED = "deleted"
    CONFLICT = "conflict"
    """The object changed since the decision (e.g. a heartbeat raced the delete): kept."""
    GONE = "gone"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    def __init__(self, connection: Connection, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.api = AsyncApi(connection, timeout=timeout, user_agent=FIELD_MANAGER)

    async def aclose(self) -> None:
        await self.api.aclose()

    async def probe(self, namespace: str | None, timeout: float) -> None:
        """A one-item consistent LIST of Agents: answers only if the API server and etcd do.

        Never retried: a probe sent while the API server starts up must fail by its timeout,
        and the next probe is already on its way."""
        await self.api.request("GET", paths.agents(namespace), params={"limit": "1"}, timeout=timeout, retry=False)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> str:
        """Merge-patch the status subresource; returns the new resourceVersion."""
        result = await self.api.merge_patch(
            paths.agents(namespace, name, "status"), {"status": dict(status)}, params=_MANAGED
        )
        return objects.resource_version(result)

    async def patch_labels(self, namespace: str, name: str, labels: Mapping[str, str]) -> None:
        await self.api.merge_patch(
            paths.agents(namespace, name), {"metadata": {"labels": dict(labels)}}, params=_MANAGED
        )

    async def delete_agent(self, namespace: str, name: str, uid: str, resource_version: str) -> DeleteOutcome:
        """Delete only if the object is still exactly the one the decision was made on."""
        try:
            await self.api.delete(paths.agents(namespace, name), objects.delete_options(uid, resource_version))
        except kubeapi.Conflict:
            return DeleteOutcome.CONFLICT
        except kubeapi.NotFound:
            return DeleteOutcome.GONE
        return DeleteOutcome.DELETED

    async def delete_lease(self, namespace: str, name: str, uid: str, resource_version: str) -> DeleteOutcome:
        """Delete an agent's Lease only as it was seen: a renewal since makes it a 409."""
        try:
            await self.api.delete(paths.leases(namespace, name), objects.delete_options(uid, resource_version))
        except kubeapi.Conflict:
            return DeleteOutcome.CONFLICT
        except kubeapi.NotFound:
            return DeleteOutcome.GONE
        return DeleteOutcome.DELETED

    async def post_event(
        self,
        involved: Mapping[str, str],
        event_type: str,
        reason: str,
        message: str,
        component: str = FIELD_MANAGER,
    ) -> None:
        """Post a core/v1 Event about ``involved`` (apiVersion, kind, namespace, name, uid).

        Events are advisory: a failure is logged, never raised, so an API hiccup cannot
        stop a phase change from being recorded elsewhere.
        """
        namespace = involved.get("namespace") or "default"
        stamp = now_rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}."[:200], "namespace": namespace},
            "involvedObject": {
                key: value
                for key, value in (
                    ("apiVersion", involved.get("apiVersion")),
                    ("kind", involved.get("kind")),
                    ("name", involved["name"]),
                    ("namespace", involved.get("namespace")),
                    ("uid", involved.get("uid")),
                )
                if value
            },
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": component,
        }
        try:
            await self.api.post_event(namespace, event)
        except kubeapi.ApiError as exc:
            logger.warning("could not post Event %s on %s/%s: %s", reason, namespace, involved["name"], exc)


def agent_reference(namespace: str, name: str, uid: str) -> dict[str, str]:
    return {"apiVersion": c.API_VERSION, "kind": c.KIND, "namespace": namespace, "name": name, "uid": uid}
