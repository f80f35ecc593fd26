"""A minimal JSON client for the local API server, over one keep-alive connection.

Housekeeping such as emptying a namespace takes dozens of requests; one kubectl process
per request costs about 0.1 s each, a reused TLS connection about a millisecond.
"""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        message = body.get("message", body) if isinstance(body, dict) else body
        super().__init__(f"{method} {path} -> HTTP {status}: {message}")
        self.status = status
        self.body = body


class ApiClient:
    """``ApiClient("127.0.0.1", port, ssl_context)``; authenticated by the context's client cert or by ``token``."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, token: str | None = None) -> None:
        self._host = host
        self._port = port
        self._context = context
        self._token = token
        self._connection: http.client.HTTPSConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = JSON, accept: str = JSON
    ) -> tuple[int, Any]:
        """Send one request; returns the status and the decoded JSON body (or text)."""
        headers = {"Accept": accept}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        # A kept-alive connection may have been closed by the server (e.g. across an API server
        # restart); a fresh connection is tried once.
        for attempt in (1, 2):
            connection = self._connect()
            try:
                connection.request(method, path, body=payload, headers=headers)
                response = connection.getresponse()
                raw = response.read()
            except (http.client.HTTPException, ConnectionError, ssl.SSLError):
                self.close()
                if attempt == 2:
                    raise
                continue
            text = raw.decode(errors="replace")
            try:
                return response.status, json.loads(text) if text else None
            except json.JSONDecodeError:
                return response.status, text
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, body: Any = None, content_type: str = JSON, accept: str = JSON) -> Any:
        """Like :meth:`request`, but raises :class:`ApiError` unless the status is 2xx."""
        status, decoded = self.request(method, path, body, content_type, accept)
        if not 200 <= status < 300:
            raise ApiError(method, path, status, decoded)
        return decoded

    def _connect(self) -> http.client.HTTPSConnection:
        if self._connection is None:
            self._connection = http.client.HTTPSConnection(self._host, self._port, context=self._context, timeout=30)
        return self._connection
