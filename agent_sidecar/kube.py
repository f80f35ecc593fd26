"""The handful of Kubernetes API calls the sidecar makes, over the client layer's
synchronous transport (``agent_registry.kubeapi``): standard-library HTTP, no client
library, so the sidecar stays small in every agent pod. Every status code reaches the
caller as a typed error, which decides what a 404, a 409 or a 503 means.
"""

from __future__ import annotations

from typing import Any

from agent_registry import kubeapi
from agent_registry.kubeapi import ApiError, objects, paths
from agent_registry.kubeapi.sync import SyncApi

DEFAULT_TIMEOUT_SECONDS = 5.0
FIELD_MANAGER = "agent-registry-sidecar"
_MANAGED = {"fieldManager": FIELD_MANAGER}

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "AgentApi", "ApiError"]


class AgentApi:
    """Agents, their Leases and the one Pod the sidecar cares about, in one namespace."""

    def __init__(self, source: kubeapi.Source, namespace: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._api = SyncApi(kubeapi.connect(source), timeout=timeout, user_agent=FIELD_MANAGER)
        self.namespace = namespace
        self.server = self._api.connection.server

    def get_agent(self, name: str, timeout: float | None = None) -> dict[str, Any] | None:
        return self._api.get(paths.agents(self.namespace, name), timeout=timeout)

    def create_agent(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._api.create(paths.agents(self.namespace), body, params=_MANAGED)

    def patch_agent(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._api.merge_patch(paths.agents(self.namespace, name), patch, params=_MANAGED)

    def patch_agent_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._api.merge_patch(paths.agents(self.namespace, name, "status"), patch, params=_MANAGED)

    def delete_agent(self, name: str, uid: str, resource_version: str, timeout: float | None = None) -> None:
        """Delete only the object that was looked at: another writer in between makes this a 409."""
        options = objects.delete_options(uid, resource_version)
        self._api.delete(paths.agents(self.namespace, name), options, timeout=timeout)

    def renew_lease(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """One small write, no read first: a merge-patch (``schema.lease.renewal_patch``); 404 when missing."""
        return self._api.merge_patch(paths.leases(self.namespace, name), patch, params=_MANAGED)

    def create_lease(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._api.create(paths.leases(self.namespace), body, params=_MANAGED)

    def delete_lease(self, name: str, timeout: float | None = None) -> None:
        self._api.delete(paths.leases(self.namespace, name), objects.delete_options(), timeout=timeout)

    def whoami(self) -> str:
        """This client's Kubernetes username, from a SelfSubjectReview (allowed to every
        authenticated user by the default ``system:basic-user`` role)."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        answer = self._api.create(paths.SELF_SUBJECT_REVIEWS, review)
        return str(((answer.get("status") or {}).get("userInfo") or {}).get("username") or "")

    def get_pod(self, name: str) -> dict[str, Any] | None:
        return self._api.get(paths.pods(self.namespace, name))
