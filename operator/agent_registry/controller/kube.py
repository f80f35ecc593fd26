"""The operator's own calls to the API server: status patches, deletes, Events, sight probes.

kopf owns the watch; these calls come from the sweeper, the sight probe and the leader
elector, which run outside kopf's handlers. The official client is synchronous, so calls
run in worker threads; they are few (one per phase change, not per heartbeat).

Every call carries a request timeout: a call to a stalled API server must fail, not hang
until the server resumes and then apply a decision that is stale by then. Writes and sight
probes run in separate thread pools so that writes stuck on a slow server can never delay
the probe that tells the operator it is blind.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import functools
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
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


# Enough threads that the sweeper's bounded writes, Events and the leader elector never
# wait for each other; the sight probe has a pool of its own.
_WRITE_THREADS = 16
_PROBE_THREADS = 8


class Kube:
    def __init__(self, api_client: client.ApiClient, timeout: float = 10.0) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        # Probes get their own client without urllib3's retries: a probe sent while the API
        # server starts up must fail by its timeout, not be re-sent and hold a thread on.
        probe_config = copy.copy(api_client.configuration)
        probe_config.retries = False
        self._probe_custom = client.CustomObjectsApi(client.ApiClient(probe_config))
        self._writes = ThreadPoolExecutor(_WRITE_THREADS, thread_name_prefix="kube-write")
        self._probes = ThreadPoolExecutor(_PROBE_THREADS, thread_name_prefix="kube-probe")

    async def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one client call in the write pool, bounded by the request timeout."""
        return await self._run(self._writes, method, *args, **kwargs)

    async def _run(self, pool: ThreadPoolExecutor, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", self.timeout)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, functools.partial(method, *args, **kwargs))

    def close(self) -> None:
        # Threads stuck in a call end by their own timeout; do not wait for them here.
        self._writes.shutdown(wait=False, cancel_futures=True)
        self._probes.shutdown(wait=False, cancel_futures=True)
        self._probe_custom.api_client.close()

    async def probe(self, namespace: str | None, timeout: float) -> None:
        """A one-item consistent LIST of Agents: answers only if the API server and etcd do."""
        if namespace is None:
            await self._run(
                self._probes,
                self._probe_custom.list_cluster_custom_object,
                c.GROUP,
                c.VERSION,
                c.PLURAL,
                limit=1,
                _request_timeout=timeout,
            )
        else:
            await self._run(
                self._probes,
                self._probe_custom.list_namespaced_custom_object,
                c.GROUP,
                c.VERSION,
                namespace,
                c.PLURAL,
                limit=1,
                _request_timeout=timeout,
            )

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> str:
        """Merge-patch the status subresource; returns the new resourceVersion."""
        result = await self.call(
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
        await self.call(
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
            await self.call(
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
            await self.call(self.core.create_namespaced_event, namespace, event)
        except Exception as exc:
            logger.warning("could not post Event %s on %s/%s: %s", reason, namespace, involved["name"], exc)


def agent_reference(namespace: str, name: str, uid: str) -> dict[str, str]:
    return {"apiVersion": c.API_VERSION, "kind": c.KIND, "namespace": namespace, "name": name, "uid": uid}
