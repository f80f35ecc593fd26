"""The synchronous transport, for the sidecar, tooling and tests.

Standard-library ``http.client`` over one kept-alive TLS connection per thread: the
sidecar runs in every agent pod and stays small (no client library beyond this), and a
reused connection costs about a millisecond where a new one costs a handshake.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from agent_registry.kubeapi import errors, wire
from agent_registry.kubeapi.credentials import Connection


class SyncApi:
    def __init__(self, connection: Connection, timeout: float = 10.0, user_agent: str = "agent-registry") -> None:
        self.connection = connection
        self.timeout = timeout
        self.user_agent = user_agent
        parts = urlsplit(connection.server)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._https = parts.scheme == "https"
        self._local = threading.local()
        self._lock = threading.Lock()

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def __enter__(self) -> SyncApi:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=self.connection.context
                )
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._local.connection = connection
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str | None = None,
        accept: str | None = None,
        timeout: float | None = None,
        retry: bool = True,
    ) -> dict[str, Any]:
        """One call; ``accept`` asks for another representation (aggregated discovery, say)."""
        if self.connection.needs_refresh:
            with self._lock:
                self.connection.refresh()
        headers, payload = wire.prepare(
            self.connection.authorization(), body, content_type, self.user_agent, accept or wire.JSON
        )
        url = wire.target(path, params)
        budget = self.timeout if timeout is None else timeout
        for attempt in range(1, wire.ATTEMPTS + 1):
            status, raw, retry_after = self._send(method, url, payload, headers, budget)
            wait = wire.retry_wait(status, retry_after, method) if retry else None
            if wait is None or attempt == wire.ATTEMPTS:
                return wire.answer(method, path, status, raw, retry_after)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _send(
        self, method: str, url: str, payload: bytes | None, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes, str | None]:
        # A kept-alive connection the server has closed meanwhile (idle, or across an API
        # server restart) fails before anything is sent; one fresh connection is tried.
        for attempt in (1, 2):
            reused = getattr(self._local, "connection", None) is not None
            connection = self._connect(timeout)
            try:
                connection.request(method, url, body=payload, headers=headers)
                response = connection.getresponse()
                raw = response.read()
            except TimeoutError as exc:
                self.close()
                raise errors.no_answer(f"{method} {url}: no answer within {timeout:g}s") from exc
            except (http.client.HTTPException, ConnectionError, ssl.SSLError, OSError) as exc:
                self.close()
                if attempt == 2 or not reused:
                    raise errors.no_answer(f"{method} {url}: {type(exc).__name__}: {exc or 'no answer'}") from exc
                continue
            return response.status, raw, response.getheader("retry-after")
        raise AssertionError("unreachable")

    # --- verbs ------------------------------------------------------------------------

    def get(self, path: str, **kwargs: Any) -> dict[str, Any] | None:
        try:
            return self.request("GET", path, **kwargs)
        except errors.NotFound:
            return None

    def list(
        self, path: str, label_selector: str | None = None, *, field_selector: str | None = None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params: dict[str, str] | None = wire.first_page(label_selector, field_selector)
        while params is not None:
            page = self.request("GET", path, params=params, **kwargs)
            items.extend(page.get("items") or [])
            params = wire.next_page(page, params)
        return items

    def create(self, path: str, body: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self.request("POST", path, body=dict(body), **kwargs)

    def merge_patch(self, path: str, patch: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self.request("PATCH", path, body=dict(patch), content_type=wire.MERGE_PATCH, **kwargs)

    def apply(self, path: str, body: Mapping[str, Any], field_manager: str, **kwargs: Any) -> dict[str, Any]:
        """Server-side apply (JSON is YAML), forcing ownership of the fields it names."""
        params = {"fieldManager": field_manager, "force": "true"}
        return self.request("PATCH", path, body=dict(body), content_type=wire.APPLY_PATCH, params=params, **kwargs)

    def replace(self, path: str, body: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self.request("PUT", path, body=dict(body), **kwargs)

    def delete(self, path: str, options: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        return self.request("DELETE", path, body=dict(options) if options else None, **kwargs)
