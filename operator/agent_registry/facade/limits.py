"""Request limits: the body limit (413 before a large body is read, or as soon as a streamed
one grows too large) and the query limit (so many reads at once, a bounded queue behind
them, 429 beyond)."""

from __future__ import annotations

import asyncio
import json
from collections import deque

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_registry.facade import metrics


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is larger than {self.max_bytes} bytes"
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _reject(send, message)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions from body reading unchanged; the error
                    # handler renders it like any other error.
                    raise HTTPException(413, message)
            return incoming

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reject(send: Send, message: str) -> None:
    # The unread body would otherwise be taken for the next request.
    await _answer(send, 413, message, [(b"connection", b"close")])


class QueryLimit:
    """At most ``max_queries`` reads of ``/agents...`` worked on at once; up to ``max_waiting``
    more wait for a turn (parked: no CPU), for at most ``max_wait_seconds``. A read beyond
    the queue, or one that waited too long, is answered 429 with Retry-After before any work
    is done for it. Writes (register, heartbeat, unregister) and the probes are never
    limited: under a query storm they find at most ``max_queries`` reads' work ahead of them
    on the event loop, however many reads are offered."""

    def __init__(self, app: ASGIApp, max_queries: int, max_waiting: int = 0, max_wait_seconds: float = 1.0) -> None:
        self.app = app
        self.max_queries = max_queries
        self.max_waiting = max_waiting
        self.max_wait_seconds = max_wait_seconds
        self.in_progress = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.max_queries or scope["type"] != "http" or not _is_query(scope):
            await self.app(scope, receive, send)
            return
        if self.in_progress < self.max_queries:
            self.in_progress += 1
        elif not await self._turn():
            metrics.QUERIES_REJECTED.inc()
            await _answer(
                send,
                429,
                f"more than {self.max_queries} queries in progress and {self.max_waiting} waiting "
                f"(or a wait over {self.max_wait_seconds:g} s); retry after 1 s",
                [(b"retry-after", b"1")],
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._release()

    async def _turn(self) -> bool:
        """Wait for a finishing read to hand over its turn; False when there is no room to wait or the wait ran out."""
        if len(self._waiting) >= self.max_waiting:
            return False
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await asyncio.wait_for(asyncio.shield(turn), self.max_wait_seconds)
            return True
        except TimeoutError:
            if turn.done():  # handed over just as the wait ran out: the turn is ours
                return True
            turn.cancel()
            return False
        except asyncio.CancelledError:
            # The client went away while waiting: pass on a turn handed over meanwhile.
            if turn.done() and not turn.cancelled():
                self._release()
            else:
                turn.cancel()
            raise

    def _release(self) -> None:
        # The turn goes straight to the oldest reader still waiting, so in_progress stays.
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.in_progress -= 1


def _is_query(scope: Scope) -> bool:
    # A watch stays open for minutes; it has a limit of its own (``watch_max_open``).
    path = str(scope.get("path", ""))
    return (
        scope.get("method") in ("GET", "HEAD")
        and (path == "/agents" or path.startswith("/agents/"))
        and path != "/agents/watch"
    )


async def _answer(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
