"""The operator's own writes to the API server: status patches, deletes, Events, Leases.

kopf owns the watch; these calls come from the sweeper and the leader elector, which run
outside kopf's handlers. The official client is synchronous, so calls run in worker
threads; they are few (one per phase change, not per heartbeat).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agent_registry.schema import constants as c

logger = logging.getLogger(__name__)


class DeleteOutcome(enum.Enum):
    DELETED = "deleted"
    CONFLICT = "conflict"
    """The object changed since the decision (e.g. a heartbeat raced the delete): kept."""
    GONE = "gone"


def load_api_client() -> client.ApiClient:
    """In-cluster service account when present, else KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # Read KUBECONFIG now, not at import time as the client's default does.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.ApiClient()


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> str:
        """Merge-patch the status subresource; returns the new resourceVersion."""
        result = await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object_status,
            c.GROUP,
            c.VERSION,
            namespace,
            c.PLURAL,
            name,
            {"status": dict(status)},
        )
        return str(cast(dict[str, Any], result)["metadata"]["resourceVersion"])

    async def patch_labels(self, namespace: str, name: str, labels: Mapping[str, str]) -> None:
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object,
            c.GROUP,
            c.VERSION,
            namespace,
            c.PLURAL,
            name,
            {"metadata": {"labels": dict(labels)}},
        )

    async def delete_agent(self, namespace: str, name: str, uid: str, resource_version: str) -> DeleteOutcome:
        """Delete only if the object is still exactly the one the decision was made on."""
        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=uid, resource_version=resource_version)
        )
        try:
            await asyncio.to_thread(
                self.custom.delete_namespaced_custom_object,
                c.GROUP,
                c.VERSION,
                namespace,
                c.PLURAL,
                name,
                body=options,
            )
        except ApiException as exc:
            if exc.status == 409:
                return DeleteOutcome.CONFLICT
            if exc.status == 404:
                return DeleteOutcome.GONE
            raise
        return DeleteOutcome.DELETED

    async def post_event(
        self,
        involved: Mapping[str, str],
        event_type: str,
        reason: str,
        message: str,
        component: str = "agent-registry-operator",
    ) -> None:
        """Post a core/v1 Event about ``involved`` (apiVersion, kind, namespace, name, uid).

        Events are advisory: a failure is logged, never raised, so an API hiccup cannot
        stop a phase change from being recorded elsewhere.
        """
        namespace = involved.get("namespace") or "default"
        stamp = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{involved['name']}."[:200], namespace=namespace),
            involved_object=client.V1ObjectReference(
                api_version=involved.get("apiVersion"),
                kind=involved.get("kind"),
                name=involved["name"],
                namespace=involved.get("namespace"),
                uid=involved.get("uid"),
            ),
            reason=reason,
            message=message[:1024],
            type=event_type,
            first_timestamp=stamp,
            last_timestamp=stamp,
            count=1,
            source=client.V1EventSource(component=component),
            reporting_component=component,
            reporting_instance=component,
        )
        try:
            await asyncio.to_thread(self.core.create_namespaced_event, namespace, event)
        except Exception as exc:
            logger.warning("could not post Event %s on %s/%s: %s", reason, namespace, involved["name"], exc)


def agent_reference(namespace: str, name: str, uid: str) -> dict[str, str]:
    return {"apiVersion": c.API_VERSION, "kind": c.KIND, "namespace": namespace, "name": name, "uid": uid}
