"""The facade's calls to the Kubernetes API server: Agent objects, TokenReview, SubjectAccessReview.

Plain REST over one ``httpx.AsyncClient`` rather than the official ``kubernetes`` client:

* that client is synchronous, so every call would hop to a worker thread; a busy facade
  sends thousands of heartbeat patches a minute, and a thread pool caps how many can wait
  on a slow API server at once, while an async connection pool does not;
* httpx bounds each request with a timeout, and a request cancelled by shutdown really
  stops, which a call stuck in a thread does not;
* every status code reaches the caller, which decides what a 404, a 409 or a 503 means.

Credentials still come from the ``kubernetes`` package's loaders (kubeconfig parsing,
client certificates, in-cluster service account with token rotation, exec plugins), which
are tedious to get right and are only used at start-up and on token refresh.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from kubernetes import client as kclient
from kubernetes import config as kconfig

from agent_registry.schema import constants as c

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
FIELD_MANAGER = "agent-registry-facade"
_LIST_PAGE = 500
_ATTEMPTS = 3
_MAX_RETRY_AFTER_SECONDS = 2.0
_REFRESH_EVERY_SECONDS = 10.0


class KubeUnavailable(Exception):  # noqa: N818 - names the condition callers handle
    """The API server did not answer usefully: no connection, a timeout, 429 or 5xx."""


class KubeError(Exception):
    """The API server answered with an error ``Status``."""

    def __init__(self, status: int, reason: str, message: str, causes: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes or []

    def describe(self) -> str:
        """The causes, field by field, when the API server named them."""
        if not self.causes:
            return self.message
        return "; ".join(f"{cause.get('field', '')}: {cause.get('message', '')}".lstrip(": ") for cause in self.causes)


class Credentials:
    """Where the API server is and how to authenticate to it, refreshed as the loaders allow."""

    def __init__(self, configuration: kclient.Configuration) -> None:
        self._config = configuration
        self._last_refresh = 0.0
        self.server = str(configuration.host).rstrip("/")

    @classmethod
    def load(cls, kubeconfig: Path | None) -> Credentials:
        """An explicit kubeconfig, else the in-cluster service account, else ~/.kube/config."""
        configuration = kclient.Configuration()
        if kubeconfig is not None:
            kconfig.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        else:
            try:
                # try_refresh_token: bound service account tokens rotate; the loader re-reads the file.
                kconfig.load_incluster_config(client_configuration=configuration, try_refresh_token=True)
            except kconfig.ConfigException:
                kconfig.load_kube_config(client_configuration=configuration)
        return cls(configuration)

    def ssl_context(self) -> ssl.SSLContext:
        cfg = self._config
        context = (
            ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
        )
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        if not cfg.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def authorization(self) -> str | None:
        cfg = self._config
        hook = cfg.refresh_api_key_hook
        if hook is not None and time.monotonic() - self._last_refresh > _REFRESH_EVERY_SECONDS:
            self._last_refresh = time.monotonic()
            # May re-read a token file or run an exec plugin: keep it off the event loop.
            await asyncio.to_thread(hook, cfg)
        token = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization")
        if not token:
            return None
        token = str(token)
        return token if token.lower().startswith("bearer ") else f"Bearer {token}"


class Kube:
    """The API server, as the facade uses it."""

    def __init__(self, credentials: Credentials, timeout: float) -> None:
        self.credentials = credentials
        self.server = credentials.server
        self.http = httpx.AsyncClient(
            base_url=credentials.server,
            verify=credentials.ssl_context(),
            timeout=timeout,
            # The API server is reached directly, never through an HTTP(S)_PROXY meant for the outside.
            trust_env=False,
            # Keep every connection: above the default 20 kept alive, each extra concurrent call
            # paid a new TLS handshake (measured under heartbeat load, docs/performance.md).
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
            headers={"Accept": "application/json", "User-Agent": FIELD_MANAGER},
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    # --- Agents --------------------------------------------------------------------

    async def get_agent(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", _agents(namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_agents(self, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        """Every Agent in the namespace (in pages, so 10,000 agents are not one response)."""
        items: list[dict[str, Any]] = []
        params: dict[str, str] = {"limit": str(_LIST_PAGE)}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            page = await self._call("GET", _agents(namespace), params=params)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            params = {**params, "continue": token}

    async def find_by_id(self, namespace: str, agent_id: str) -> dict[str, Any] | None:
        found = await self.list_agents(namespace, f"{c.AGENT_ID_LABEL}={agent_id}")
        # Several objects with one id cannot come from the registry; the newest is the live one.
        found.sort(key=lambda item: (item.get("metadata") or {}).get("creationTimestamp") or "")
        return found[-1] if found else None

    async def create_agent(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("POST", _agents(namespace), json=body)

    async def patch_agent(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", _agents(namespace, name), json=patch, content_type=MERGE_PATCH)

    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", _agents(namespace, name) + "/status", json=patch, content_type=MERGE_PATCH)

    async def delete_agent(self, namespace: str, name: str, uid: str | None) -> None:
        """Delete only the object that was looked up: a replacement with the same name is a 409."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            body["preconditions"] = {"uid": uid}
        await self._call("DELETE", _agents(namespace, name), json=body)

    async def ping(self, namespace: str) -> None:
        """Proves what the facade needs: the API server answers, the CRD exists, RBAC lets it list."""
        await self._call("GET", _agents(namespace), params={"limit": "1"})

    # --- authentication and authorisation ----------------------------------------------

    async def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        spec: dict[str, Any] = {"token": token}
        if audiences:
            spec["audiences"] = audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        return await self._call("POST", "/apis/authentication.k8s.io/v1/tokenreviews", json=body)

    async def subject_access_review(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": dict(spec)}
        return await self._call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", json=body)

    # --- plumbing ------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        headers: dict[str, str] = {}
        authorization = await self.credentials.authorization()
        if authorization:
            headers["Authorization"] = authorization
        if content_type:
            headers["Content-Type"] = content_type
        if method in ("POST", "PATCH", "PUT") and path.startswith(f"/apis/{c.GROUP}/"):
            # Named, so managedFields show exactly which fields the facade writes.
            params = {**(params or {}), "fieldManager": FIELD_MANAGER}
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                response = await self.http.request(method, path, json=json, params=params, headers=headers)
            except httpx.HTTPError as exc:
                raise KubeUnavailable(f"{type(exc).__name__}: {exc or 'no answer'}") from exc
            wait = _retry_after(response, method)
            if wait is None or attempt == _ATTEMPTS:
                break
            await asyncio.sleep(wait)
        if response.status_code == 429 or response.status_code >= 500:
            raise KubeUnavailable(f"HTTP {response.status_code}: {_message(response)}")
        if response.status_code >= 400:
            raise _error(response)
        try:
            result: dict[str, Any] = response.json()
        except ValueError as exc:
            raise KubeUnavailable(f"unreadable answer to {method} {path}: {exc}") from exc
        return result


def _agents(namespace: str, name: str | None = None) -> str:
    path = f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{quote(namespace, safe='')}/{c.PLURAL}"
    return f"{path}/{quote(name, safe='')}" if name is not None else path


def _retry_after(response: httpx.Response, method: str) -> float | None:
    """Seconds to wait before trying again, as client-go does, or None to give up now.

    429 means the request was not processed (overload, or a watch cache still
    initialising after a restart), so any verb may be repeated; a 5xx with Retry-After
    only for reads, since a write may have happened.
    """
    status = response.status_code
    header = response.headers.get("retry-after")
    if status != 429 and not (status >= 500 and header is not None and method == "GET"):
        return None
    try:
        seconds = float(header) if header is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.1), _MAX_RETRY_AFTER_SECONDS)


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", ""))[:500]
    except ValueError:
        return response.text[:500]


def _error(response: httpx.Response) -> KubeError:
    try:
        status = response.json()
    except ValueError:
        return KubeError(response.status_code, response.reason_phrase, response.text[:500])
    details = status.get("details") or {}
    return KubeError(
        response.status_code, str(status.get("reason", "")), str(status.get("message", "")), details.get("causes")
    )


def kubeconfig_from_env(explicit: Path | None) -> Path | None:
    """The kubeconfig to use: the setting, or None to try in-cluster first."""
    if explicit is not None:
        return explicit
    env = os.environ.get("KUBECONFIG")
    return Path(env.split(os.pathsep)[0]) if env else None
