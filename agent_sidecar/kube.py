"""The handful of Kubernetes API calls the sidecar makes, over pykube-ng's HTTP client.

pykube-ng supplies what is tedious to get right (kubeconfig parsing, client certificates,
the service account's CA); the calls themselves are plain REST so that every status
code reaches the caller, which decides what a 404, a 409 or a 503 means.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pykube
import requests

from agent_registry.schema import constants as c
from agent_sidecar.config import KubeSource

MERGE_PATCH = "application/merge-patch+json"
DEFAULT_TIMEOUT_SECONDS = 5.0


class ApiError(Exception):
    """A call that failed; ``status`` is None when the API server did not answer at all."""

    def __init__(self, status: int | None, reason: str, message: str) -> None:
        super().__init__(f"{status or 'no answer'} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying unchanged: no answer, too many requests, or a server-side error."""
        return self.status is None or self.status == 429 or self.status >= 500


class AgentApi:
    """Agents and the one Pod the sidecar cares about, in one namespace."""

    def __init__(self, source: KubeSource, namespace: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        if source.service_account_dir is not None:
            config = pykube.KubeConfig.from_service_account(path=str(source.service_account_dir))
        else:
            config = pykube.KubeConfig.from_file(str(source.kubeconfig))
        self._client = pykube.HTTPClient(config, timeout=timeout)
        # Bound service account tokens are rotated by the kubelet; read the file on each call.
        self._token_file = source.service_account_dir / "token" if source.service_account_dir else None
        self.namespace = namespace
        self.server = self._client.url

    def get_agent(self, name: str, timeout: float | None = None) -> dict[str, Any] | None:
        return self._or_none(lambda: self._call("GET", f"agents/{name}", timeout=timeout))

    def create_agent(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "agents", body=body)

    def patch_agent(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", f"agents/{name}", body=patch)

    def patch_agent_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", f"agents/{name}/status", body=patch)

    def delete_agent(self, name: str, uid: str, resource_version: str, timeout: float | None = None) -> None:
        """Delete only the object that was looked at: another writer in between makes this a 409."""
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": uid, "resourceVersion": resource_version},
        }
        self._call("DELETE", f"agents/{name}", body=options, timeout=timeout)

    def whoami(self) -> str:
        """This client's Kubernetes username, from a SelfSubjectReview (allowed to every
        authenticated user by the default ``system:basic-user`` role)."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        answer = self._call(
            "POST", "selfsubjectreviews", body=review, version="authentication.k8s.io/v1", namespaced=False
        )
        return str(((answer.get("status") or {}).get("userInfo") or {}).get("username") or "")

    def get_pod(self, name: str) -> dict[str, Any] | None:
        return self._or_none(lambda: self._call("GET", f"pods/{name}", version="v1"))

    @staticmethod
    def _or_none(call: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        try:
            return call()
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        version: str = c.API_VERSION,
        timeout: float | None = None,
        namespaced: bool = True,
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = MERGE_PATCH if method == "PATCH" else "application/json"
        if self._token_file is not None:
            headers["Authorization"] = f"Bearer {self._token_file.read_text().strip()}"
        kwargs: dict[str, Any] = {"version": version, "url": path, "headers": headers}
        if namespaced:
            kwargs["namespace"] = self.namespace
        if body is not None:
            kwargs["data"] = json.dumps(body)
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            response = self._client.request(method, **kwargs)
        except requests.RequestException as error:
            raise ApiError(None, type(error).__name__, _first_line(error)) from error
        if response.status_code >= 400:
            raise _error_from(response)
        result: dict[str, Any] = response.json()
        return result


def _error_from(response: requests.Response) -> ApiError:
    try:
        status = response.json()
        return ApiError(response.status_code, str(status.get("reason", "")), str(status.get("message", "")))
    except ValueError:
        return ApiError(response.status_code, response.reason or "", response.text[:300])


def _first_line(error: Exception) -> str:
    # urllib3's connection errors nest the cause several levels deep; its last part is the useful one.
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
