"""The query limit's turns and queue as pure logic: an ASGI app that holds each read until
told, so which requests run, wait or get 429 is exact (no timing is asserted)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from agent_registry.facade.limits import QueryLimit


class Held:
    """Answers 200 to each request once its path's event is set; records who got in."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.release: dict[str, asyncio.Event] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        self.entered.append(path)
        await self.release.setdefault(path, asyncio.Event()).wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def let_go(self, path: str) -> None:
        self.release.setdefault(path, asyncio.Event()).set()


async def call(app: Any, path: str, method: str = "GET") -> tuple[int, dict[str, Any] | None]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    await app({"type": "http", "method": method, "path": path, "headers": []}, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(sent[0]["status"]), json.loads(body) if body else None


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_reads_beyond_the_limit_wait_their_turn_in_order_then_beyond_the_queue_get_429() -> None:
    held = Held()
    limit = QueryLimit(held, max_queries=2, max_waiting=2, max_wait_seconds=30)
    calls = {p: asyncio.ensure_future(call(limit, p)) for p in ("/agents/1", "/agents/2", "/agents/3", "/agents/4")}
    await settle()
    assert held.entered == ["/agents/1", "/agents/2"]  # two at work, two waiting
    status, body = await call(limit, "/agents/5")  # the queue is full: 429 at once
    assert status == 429 and body is not None and "retry after" in body["error"]
    # A write is never limited, nor queued.
    writes = asyncio.ensure_future(call(limit, "/agents/1/heartbeat", method="POST"))
    await settle()
    assert "/agents/1/heartbeat" in held.entered
    held.let_go("/agents/1/heartbeat")
    assert (await writes)[0] == 200
    held.let_go("/agents/2")
    await settle()
    assert held.entered[-1] == "/agents/3"  # the oldest waiting read got the turn
    held.let_go("/agents/1")
    await settle()
    assert held.entered[-1] == "/agents/4"
    for path in ("/agents/3", "/agents/4"):
        held.let_go(path)
    assert [(await c)[0] for c in calls.values()] == [200, 200, 200, 200]
    assert limit.in_progress == 0


async def test_a_read_that_waits_too_long_gets_429_and_a_vanished_client_leaks_no_turn() -> None:
    held = Held()
    limit = QueryLimit(held, max_queries=1, max_waiting=4, max_wait_seconds=0.05)
    first = asyncio.ensure_future(call(limit, "/agents/1"))
    await settle()
    status, body = await call(limit, "/agents/2")  # waits 0.05 s, no turn comes
    assert status == 429 and body is not None and "wait over 0.05 s" in body["error"]
    gone = asyncio.ensure_future(call(limit, "/agents/3"))
    await settle()
    gone.cancel()  # the client hangs up while waiting
    await asyncio.gather(gone, return_exceptions=True)
    held.let_go("/agents/1")
    assert (await first)[0] == 200
    assert limit.in_progress == 0  # the cancelled waiter took no turn with it
    held.let_go("/agents/4")
    assert (await call(limit, "/agents/4"))[0] == 200
    assert "/agents/3" not in held.entered
