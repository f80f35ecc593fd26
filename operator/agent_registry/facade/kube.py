"""The facade's calls to the API server: Agent objects, their Leases and Events, TokenReview,
SubjectAccessReview.

Thin verbs over the one client layer's asynchronous transport (``agent_registry.kubeapi``):
every status code reaches the caller as a typed error, which decides what a 404, a 409 or a
503 means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_registry.kubeapi import objects, paths
from agent_registry.kubeapi.aio import AsyncApi
from agent_registry.kubeapi.credentials import Connection
from agent_registry.schema import constants as c

FIELD_MANAGER = "agent-registry-facade"
# Named, so managedFields show exactly which fields the facade writes.
_MANAGED = {"fieldManager": FIELD_MANAGER}


class Kube:
    """The API server, as the facade uses it."""

    def __init__(self, connection: Connection, timeout: float) -> None:
        self.api = AsyncApi(connection, timeout=timeout, user_agent=FIELD_MANAGER)
        self.server = connection.server

    async def aclose(self) -> None:
        await self.api.aclose()

    # --- Agents --------------------------------------------------------------------

    async def get_agent(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.api.get(paths.agents(namespace, name))

    async def list_agents(self, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        """Every Agent in the namespace (in pages, so 10,000 agents are not one response)."""
        return await self.api.list(paths.agents(namespace), label_selector)

    async def find_by_id(self, namespace: str, agent_id: str) -> dict[str, Any] | None:
        found = await self.list_agents(namespace, f"{c.AGENT_ID_LABEL}={agent_id}")
        # Several objects with one id cannot come from the registry; the newest is the live one.
        found.sort(key=lambda item: objects.meta(item).get("creationTimestamp") or "")
        return found[-1] if found else None

    async def create_agent(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.api.create(paths.agents(namespace), body, params=_MANAGED)

    async def patch_agent(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.api.merge_patch(paths.agents(namespace, name), patch, params=_MANAGED)

    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.api.merge_patch(paths.agents(namespace, name, "status"), patch, params=_MANAGED)

    async def delete_agent(self, namespace: str, name: str, uid: str | None) -> None:
        """Delete only the object that was looked up: a replacement with the same name is a 409."""
        await self.api.delete(paths.agents(namespace, name), objects.delete_options(uid=uid))

    # --- agents' Leases ---------------------------------------------------------------

    async def renew_lease(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """A renewal (``schema.lease.renewal_patch``): one merge-patch, no read first."""
        await self.api.merge_patch(paths.leases(namespace, name), patch, params=_MANAGED)

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> None:
        await self.api.create(paths.leases(namespace), body, params=_MANAGED)

    # --- Events about agents -------------------------------------------------------------

    async def list_agent_events(self, namespace: str, name: str, uid: str | None = None) -> list[dict[str, Any]]:
        """The core/v1 Events about one Agent object, selected by the API server.

        With ``uid``, only that object's: an Agent deleted and created again under the same
        name is another object, and the Events of the one before are not about this one."""
        selector = f"involvedObject.kind={c.KIND},involvedObject.name={name}"
        if uid:
            selector += f",involvedObject.uid={uid}"
        return await self.api.list(paths.events(namespace), field_selector=selector)

    async def ping(self, namespace: str) -> None:
        """Proves what the facade needs: the API server answers, the CRD exists, RBAC lets it list."""
        await self.api.request("GET", paths.agents(namespace), params={"limit": "1"})

    # --- authentication and authorisation ----------------------------------------------

    async def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        spec: dict[str, Any] = {"token": token}
        if audiences:
            spec["audiences"] = audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        return await self.api.create(paths.TOKEN_REVIEWS, body)

    async def subject_access_review(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": dict(spec)}
        return await self.api.create(paths.SUBJECT_ACCESS_REVIEWS, body)
