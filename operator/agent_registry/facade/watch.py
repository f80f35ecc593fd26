"""``GET /agents/watch``: the registry's changes as Server-Sent Events.

One task per facade process (``WatchHub``) reads the change feed (``index.changes``) and
hands each change to every open watch; a watch filters it and writes it to its client.
A change is parsed once and each event's bytes are made once, whoever receives them, so
a thousand watches cost a thousand small writes per change, not a thousand parses.

A stream, as a client sees it::

    retry: 1000

    event: snapshot                      (unless resuming)
    id: 1764640000000-3
    data: {"agents": [...], "count": 2}

    event: phase                         (registered | updated | phase | removed)
    id: 1764640005000-0
    data: {"type": "phase", "agent": {...}, "previous_status": "healthy"}

    : keep-alive

With ``?heartbeats=true`` the stream also carries ``event: heartbeats`` every keep-alive
period, ``{"last_seen": {"<id>": "<time>", ...}}`` for the agents the query matches: the
times that moved without a change (one list read per period and watch, so it is for the
few watches that show them, such as the dashboard).

``removed`` also says ``"deleted"``: true when the agent is gone, false when it no longer
matches the watch's filters. ``relist`` (no id) means the client must drop what it holds;
a new ``snapshot`` follows. A client resumes with ``Last-Event-ID`` (or ``?since=``); one
too far behind gets a relist, as a Kubernetes watch answers 410 Gone.

Bounded on every side: at most ``watch_max_open`` watches (429 beyond); a watch whose
client takes in less than the registry changes has ``watch_buffer_events`` changes waiting
at most, or stalls a write for ``watch_keepalive_seconds``, and is then ended (it resumes
from its last id, losing nothing while the feed still holds it); each stream ends after
about ``watch_max_seconds`` so the caller's authorisation is checked again on resume; and
on shutdown every stream ends so that clients resume on another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from agent_registry.facade import metrics
from agent_registry.facade.errors import ApiError, bad_request, unavailable
from agent_registry.facade.reads import matches_filters
from agent_registry.facade.settings import FacadeSettings
from agent_registry.index import IndexedAgent, IndexUnavailable
from agent_registry.index.changes import Change, ChangeFeed, ChangeKind, Position
from agent_registry.index.reader import wire_json

logger = logging.getLogger(__name__)

WAIT_SECONDS = 5.0
"""How long one read of the change feed waits for a change."""
_READ_BLOCK_MS = int(WAIT_SECONDS * 1000)
_READ_COUNT = 500
_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies that buffer responses would hold events back
]
_KEEP_ALIVE = b": keep-alive\n\n"


@dataclass(frozen=True)
class WatchFilter:
    """The query of ``GET /agents``, applied to records instead of sets."""

    namespace: str
    agent_type: str | None = None
    capabilities: tuple[str, ...] = ()
    status: str | None = None
    skills: tuple[str, ...] = ()

    def matches(self, record: IndexedAgent | None) -> bool:
        return (
            record is not None
            and record.namespace == self.namespace
            and matches_filters(record.agent, self.agent_type, self.capabilities, self.status, self.skills)
        )


def event(kind: str, data: bytes, position: Position | None = None) -> bytes:
    head = f"event: {kind}\n" + (f"id: {position}\n" if position is not None else "")
    return head.encode() + b"data: " + data + b"\n\n"


def relist_event(reason: str) -> bytes:
    return event(ChangeKind.RELIST, wire_json({"reason": reason}))


def heartbeats_event(list_body: bytes) -> bytes:
    """``event: heartbeats``: each agent's ``last_seen`` from a list answer (``{"agents": [...]}``).

    Heartbeats that change nothing else are not changes (``index.changes``); a watch that
    asks for them (a dashboard showing when each agent was last heard) gets them in batches
    instead, one every keep-alive period, with no id: they are not resumed."""
    agents = json.loads(list_body).get("agents") or []
    seen = {agent["id"]: agent["last_seen"] for agent in agents if agent.get("last_seen")}
    return event("heartbeats", wire_json({"last_seen": seen}))


def encoded(change: Change, view: WatchFilter) -> bytes | None:
    """The event ``change`` is for a watch with this filter; None when it does not concern it."""
    old, new = change.records()
    was_in, is_in = view.matches(old), view.matches(new)
    if not (was_in or is_in):
        return None
    if was_in and not is_in:
        deleted = new is None
        kind: str = ChangeKind.REMOVED
        variant: tuple[str, bool] = (kind, deleted)
    else:
        kind, deleted = change.kind, False
        variant = (kind, False)
    cached = change.encoded.get(variant)
    if cached is None:
        record = new if new is not None else old
        assert record is not None
        data: dict[str, Any] = {"type": kind, "agent": record.to_json()}
        if kind == ChangeKind.PHASE and old is not None:
            data["previous_status"] = old.agent.status
        if kind == ChangeKind.REMOVED:
            data["deleted"] = deleted
        cached = change.encoded[variant] = event(kind, wire_json(data), change.position)
    return cached


class Subscription:
    """One watch's place at the hub: changes wait here for its client, up to a bound."""

    def __init__(self, limit: int) -> None:
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue(limit + 1)
        self.limit = limit
        self.ended: str | None = None
        """Why the stream must end (too slow, disconnected, shutting down); None while it runs."""
        self.slow = False

    def offer(self, change: Change) -> None:
        if self.ended is not None:
            return
        if self.queue.qsize() >= self.limit:
            self.slow = True
            self.end(f"more than {self.limit} changes waited for the client; resume with Last-Event-ID")
            return
        self.queue.put_nowait(change)

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)  # wakes the stream; there is always room for one


class WatchHub:
    """Reads the change feed for every watch of this process."""

    def __init__(self, feed: ChangeFeed | None, *, max_open: int, buffer_events: int) -> None:
        self.feed = feed
        self.max_open = max_open
        self.buffer_events = buffer_events
        self.subscriptions: set[Subscription] = set()
        self.position: Position | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def open(self) -> int:
        return len(self.subscriptions)

    async def subscribe(self) -> Subscription:
        """A new subscription that gets every change after the hub's position (which is at
        or before the feed's head when this returns). Raises IndexUnavailable."""
        if self.feed is None:
            raise IndexUnavailable("no index configured")
        if self.position is None:
            self.position = await self.feed.head()
        subscription = Subscription(self.buffer_events)
        if self._closed:
            subscription.end("the facade is shutting down")
        self.subscriptions.add(subscription)
        metrics.WATCHES_OPEN.set(len(self.subscriptions))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="agent-registry-watch-hub")
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)
        metrics.WATCHES_OPEN.set(len(self.subscriptions))

    def close(self) -> None:
        """End every stream (shutdown): their clients resume elsewhere."""
        self._closed = True
        for subscription in list(self.subscriptions):
            subscription.end("the facade is shutting down")

    async def aclose(self) -> None:
        self.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _deliver(self, change: Change) -> None:
        for subscription in list(self.subscriptions):
            subscription.offer(change)

    async def _run(self) -> None:
        assert self.feed is not None and self.position is not None
        failures = 0
        while self.subscriptions and not self._closed:
            try:
                if failures:
                    # Whatever happened while Redis was away, the feed must still hold it.
                    reason = await self.feed.continuity(self.position)
                    if reason is not None:
                        self.position = await self.feed.head()
                        self._deliver(_relist(self.position, reason))
                    logger.info("the change feed answers again")
                    failures = 0
                changes = await self.feed.wait(self.position, _READ_BLOCK_MS, _READ_COUNT)
            except IndexUnavailable as exc:
                if not failures:
                    logger.warning("cannot read the change feed (%s); watches get keep-alives, retrying", exc)
                metrics.INDEX_ERRORS.inc()
                await asyncio.sleep(_RETRY_SECONDS[min(failures, len(_RETRY_SECONDS) - 1)])
                failures += 1
                continue
            for change in changes:
                self.position = change.position
                metrics.WATCH_CHANGES.labels(kind=change.kind.value).inc()
                self._deliver(change)
        # Stopped for want of watches: the next one starts from the feed's head, not from
        # wherever this one left off.
        self._task = None
        self.position = None


def _relist(position: Position, reason: str) -> Change:
    return Change(position, ChangeKind.RELIST, "", "", "", reason)


async def open_watch(
    hub: WatchHub,
    settings: FacadeSettings,
    view: WatchFilter,
    snapshot: Callable[[], Awaitable[bytes]],
    last_event_id: str | None,
    since: str | None,
    beats: Callable[[], Awaitable[bytes]] | None = None,
) -> WatchStream:
    """The response of a watch the route has authorised: 400 for a position that is none,
    429 when as many watches are open as allowed, 503 without the change feed."""
    try:
        position = None
        if last_event_id:
            position = Position.parse(last_event_id.strip())
        elif since:
            position = Position.parse(since)
    except ValueError as exc:
        raise bad_request(f"{'Last-Event-ID' if last_event_id else 'since'}: {exc}") from exc
    if hub.open >= hub.max_open:
        metrics.WATCHES_REJECTED.inc()
        raise ApiError(
            429,
            f"{hub.open} watches are open, as many as this facade keeps (watch_max_open); retry later",
            {"Retry-After": "5"},
        )
    problem = "watching needs the change feed in Redis, which is unavailable"
    if hub.feed is None:
        raise unavailable(f"{problem}: no index configured")
    try:
        subscription = await hub.subscribe()
    except IndexUnavailable as exc:
        raise unavailable(f"{problem}: {exc}") from exc
    try:
        # Asked now, so that Redis being away is a 503 here rather than a stream that ends at once.
        start = await hub.feed.head() if position is None else position
        gap = None if position is None else await hub.feed.continuity(position)
    except IndexUnavailable as exc:
        hub.unsubscribe(subscription)
        raise unavailable(f"{problem}: {exc}") from exc
    return WatchStream(
        hub,
        subscription,
        view,
        snapshot,
        start,
        resuming=position is not None,
        gap=gap,
        beats=beats,
        keepalive_seconds=settings.watch_keepalive_seconds,
        max_seconds=settings.watch_max_seconds,
    )


class WatchStream(Response):
    """The response of one watch, after the route checked the caller and the query.

    Its own ASGI callable, not Starlette's StreamingResponse: that one runs a task group per
    response, which at a thousand open watches is memory the facade's budget has no room for.
    """

    def __init__(
        self,
        hub: WatchHub,
        subscription: Subscription,
        view: WatchFilter,
        snapshot: Callable[[], Awaitable[bytes]],
        start: Position,
        *,
        resuming: bool,
        gap: str | None,
        beats: Callable[[], Awaitable[bytes]] | None = None,
        keepalive_seconds: float,
        max_seconds: float,
    ) -> None:
        super().__init__(media_type="text/event-stream")
        self.hub = hub
        self.subscription = subscription
        self.view = view
        self.snapshot = snapshot
        self.start = start
        """Where the stream begins: the position resumed from, or the feed's head for a snapshot."""
        self.resuming = resuming
        self.gap = gap
        """Why the feed cannot resume from ``start``; None when it can."""
        self.beats = beats
        """The list answer of the watch's query, for its ``heartbeats`` events (``?heartbeats=true``); None: none."""
        self.keepalive_seconds = keepalive_seconds
        # Spread over ±10%, so streams opened together do not all end together.
        self.max_seconds = max_seconds * random.uniform(0.9, 1.1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscription = self.subscription
        listener = asyncio.ensure_future(_until_disconnected(receive, subscription))
        deadline = asyncio.get_running_loop().time() + self.max_seconds
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            await self._write(send, b"retry: 1000\n\n")
            if await self._stream(send, subscription, deadline):
                with contextlib.suppress(TimeoutError):
                    await self._write(send, b"", more=False)
        finally:
            listener.cancel()
            self.hub.unsubscribe(subscription)
            logger.debug("watch ended: %s", subscription.ended)

    async def _stream(self, send: Send, subscription: Subscription, deadline: float) -> bool:
        """Until the subscription ends; False when the client stopped taking data (the
        connection is then closed without a last write, which would only wait again)."""
        feed = self.hub.feed
        assert feed is not None
        try:
            if not self.resuming:
                cursor = await self._send_snapshot(send, feed, self.start)
            elif self.gap is not None:
                await self._write(send, relist_event(self.gap))
                cursor = await self._send_snapshot(send, feed)
            else:
                cursor = await self._replay(send, feed, self.start)
            loop = asyncio.get_running_loop()
            next_beat = loop.time() + self.keepalive_seconds
            while subscription.ended is None:
                now = loop.time()
                if self.beats is not None and now >= next_beat:
                    await self._write(send, heartbeats_event(await self.beats()))
                    next_beat = now + self.keepalive_seconds
                wait = min(self.keepalive_seconds, deadline - now)
                if self.beats is not None:
                    wait = min(wait, next_beat - now)
                if wait <= 0:
                    if now >= deadline:
                        subscription.end("the stream reached its time limit; resume with Last-Event-ID")
                        break
                    continue
                try:
                    async with asyncio.timeout(wait):
                        change = await subscription.queue.get()
                except TimeoutError:
                    if self.beats is None or loop.time() < next_beat:
                        await self._write(send, _KEEP_ALIVE)
                    continue
                if change is None:
                    continue
                if change.kind == ChangeKind.RELIST and (change.reason or change.position > cursor):
                    # A relist the hub made has the new feed's position, which may be behind
                    # this watch's (the old feed was lost): it counts whatever its position.
                    await self._write(send, relist_event(change.reason or "the index was rebuilt"))
                    cursor = await self._send_snapshot(send, feed)
                    continue
                if change.position <= cursor:
                    continue
                cursor = change.position
                data = encoded(change, self.view)
                if data is not None:
                    await self._write(send, data)
        except IndexUnavailable as exc:
            subscription.end(f"the change feed is unavailable: {exc}")
        except ApiError as exc:  # the snapshot: neither the index nor the API server answered
            subscription.end(f"no snapshot: {exc.message}")
        except TimeoutError:
            subscription.end(f"the client took nothing for {self.keepalive_seconds:g} s")
            logger.warning("watch dropped: %s", subscription.ended)
            metrics.WATCHES_DROPPED.inc()
            return False
        if subscription.slow:
            logger.warning("watch dropped: %s", subscription.ended)
            metrics.WATCHES_DROPPED.inc()
        return True

    async def _send_snapshot(self, send: Send, feed: ChangeFeed, position: Position | None = None) -> Position:
        # The position first: a change after it and before the listing is sent again after
        # the snapshot, which a client applies twice to the same effect.
        if position is None:
            position = await feed.head()
        await self._write(send, event("snapshot", await self.snapshot(), position))
        return position

    async def _replay(self, send: Send, feed: ChangeFeed, since: Position) -> Position:
        """The feed's changes after ``since``, straight from Redis (the hub's queue has only newer ones)."""
        cursor = since
        while True:
            changes = await feed.after(cursor, _READ_COUNT)
            for change in changes:
                cursor = change.position
                if change.kind == ChangeKind.RELIST:
                    await self._write(send, relist_event("the index was rebuilt"))
                    return await self._send_snapshot(send, feed)
                data = encoded(change, self.view)
                if data is not None:
                    await self._write(send, data)
            if len(changes) < _READ_COUNT:
                return cursor

    async def _write(self, send: Send, body: bytes, *, more: bool = True) -> None:
        # A client that reads nothing makes ``send`` wait for the socket to drain, forever;
        # past the keep-alive period it is taken for gone (TimeoutError ends the stream).
        async with asyncio.timeout(self.keepalive_seconds):
            await send({"type": "http.response.body", "body": body, "more_body": more})


async def _until_disconnected(receive: Receive, subscription: Subscription) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    subscription.end("the client went away")
