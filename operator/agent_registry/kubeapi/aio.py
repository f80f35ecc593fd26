"""The asynchronous transport, for the facade and the operator's own calls.

One ``httpx.AsyncClient`` per process: an async connection pool lets thousands of calls
wait on a slow API server at once where a thread pool would cap them, a cancelled call
really stops, and every call is bounded by a timeout (a call to a stalled API server must
fail, not land minutes later).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import httpx

from agent_registry.kubeapi import errors, paths, wire
from agent_registry.kubeapi.credentials import Connection


class AsyncApi:
    def __init__(
        self, connection: Connection, timeout: float = 10.0, user_agent: str = "agent-registry", connections: int = 100
    ) -> None:
        self.connection = connection
        self.timeout = timeout
        self.user_agent = user_agent
        self.http = httpx.AsyncClient(
            base_url=connection.server,
            verify=connection.context,
            timeout=timeout,
            # The API server is reached directly, never through an HTTP(S)_PROXY meant for the outside.
            trust_env=False,
            # Keep every connection: above the default 20 kept alive, each extra concurrent call
            # paid a new TLS handshake (measured under heartbeat load, docs/performance.md).
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )
        # Calls wait for a connection here, not in httpx: its pool looks at every connection
        # for every call queued inside it, which at 10,000 agents (hundreds of heartbeats
        # waiting on a busy API server) took most of the facade's and the operator's CPU
        # (docs/performance.md). A semaphore queue costs nothing per waiting call.
        self._slots = asyncio.Semaphore(connections)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
        retry: bool = True,
    ) -> dict[str, Any]:
        """One call; retried only where the API server says the request was not processed."""
        if self.connection.needs_refresh:
            # May re-read a token file or run an exec plugin: keep it off the event loop.
            await asyncio.to_thread(self.connection.refresh)
        headers, payload = wire.prepare(self.connection.authorization(), body, content_type, self.user_agent)
        limit = self.timeout if timeout is None else timeout
        for attempt in range(1, wire.ATTEMPTS + 1):
            deadline = time.monotonic() + limit
            try:
                async with asyncio.timeout(limit):
                    await self._slots.acquire()
            except TimeoutError:
                raise errors.no_answer(f"{method} {path}: no free connection within {limit:g}s") from None
            try:
                response = await self.http.request(
                    method,
                    wire.target(path, params),
                    content=payload,
                    headers=headers,
                    # The wait for a connection counts against the call's timeout.
                    timeout=max(0.001, deadline - time.monotonic()),
                )
            except httpx.HTTPError as exc:
                raise errors.no_answer(f"{method} {path}: {type(exc).__name__}: {exc or 'no answer'}") from exc
            finally:
                self._slots.release()
            retry_after = response.headers.get("retry-after")
            wait = wire.retry_wait(response.status_code, retry_after, method) if retry else None
            if wait is None or attempt == wire.ATTEMPTS:
                return wire.answer(method, path, response.status_code, response.content, retry_after)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    # --- verbs ------------------------------------------------------------------------

    async def get(self, path: str, **kwargs: Any) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", path, **kwargs)
        except errors.NotFound:
            return None

    async def list(
        self, path: str, label_selector: str | None = None, *, field_selector: str | None = None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """Every item, in pages, so 10,000 objects are not one response."""
        items: list[dict[str, Any]] = []
        params: dict[str, str] | None = wire.first_page(label_selector, field_selector)
        while params is not None:
            page = await self.request("GET", path, params=params, **kwargs)
            items.extend(page.get("items") or [])
            params = wire.next_page(page, params)
        return items

    async def create(self, path: str, body: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        return await self.request("POST", path, body=dict(body), **kwargs)

    async def merge_patch(self, path: str, patch: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        return await self.request("PATCH", path, body=dict(patch), content_type=wire.MERGE_PATCH, **kwargs)

    async def replace(self, path: str, body: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        """PUT: carries metadata.resourceVersion, so it fails with Conflict if anyone wrote since."""
        return await self.request("PUT", path, body=dict(body), **kwargs)

    async def delete(self, path: str, options: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        return await self.request("DELETE", path, body=dict(options) if options else None, **kwargs)

    async def post_event(self, namespace: str, event: Mapping[str, Any]) -> dict[str, Any]:
        return await self.create(paths.events(namespace), event)
