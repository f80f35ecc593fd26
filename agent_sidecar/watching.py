"""Reading ``GET /agents/watch`` (Server-Sent Events) for the client library's ``watch()``.

The parts the sync and the asyncio client share: the query, the SSE parser, what an
answer other than a stream means, and when to connect again. A watch resumes by itself:
after a dropped connection, a stream the registry ended (its time limit, a rolling
restart, a client too slow), a 429 or a 503, it connects again with ``Last-Event-ID`` and
carries on after the last event it delivered. A ``relist`` event tells the caller to drop
what it holds; the ``snapshot`` after it holds everything again.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

logger = logging.getLogger(__name__)

IDLE_TIMEOUT_SECONDS = 60.0
"""A stream silent this long (the registry sends a keep-alive every 15 s by default) is taken for dead."""
_RETRY_CAP_SECONDS = 10.0
_RETRYABLE = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class WatchEvent:
    """One event of the watch: ``type`` is ``snapshot``, ``registered``, ``updated``, ``phase``,
    ``removed`` or ``relist``; ``data`` its JSON; ``id`` the position it resumes after (None
    for ``relist``)."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    @property
    def agent(self) -> dict[str, Any] | None:
        """The REST ``Agent`` of a change (for ``removed``, as it was last seen)."""
        agent = self.data.get("agent")
        return agent if isinstance(agent, dict) else None

    @property
    def agents(self) -> list[dict[str, Any]]:
        """A snapshot's agents (the list answer's ``agents``); [] for other events."""
        agents = self.data.get("agents")
        return agents if isinstance(agents, list) else []


class EventParser:
    """Server-Sent Events, line by line (the WHATWG rules the registry's stream needs:
    ``event``, ``data``, ``id``, ``retry``, comments)."""

    def __init__(self) -> None:
        self._type = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, line: str) -> WatchEvent | None:
        """The event a blank line completes, else None."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> WatchEvent | None:
        kind, data, event_id = self._type or "message", self._data, self._id
        self._type, self._data, self._id = "", [], None
        if not data:
            return None
        try:
            document = json.loads("\n".join(data))
        except ValueError:
            logger.warning("watch: an event %r whose data is not JSON was skipped", kind)
            return None
        return WatchEvent(kind, document if isinstance(document, dict) else {"value": document}, event_id)


def watch_params(
    agent_type: str | None,
    capabilities: Iterable[str],
    status: str | None,
    skills: Iterable[str],
    namespace: str | None,
) -> httpx.QueryParams:
    # A lone string is one capability (or skill), not the characters of one.
    wanted = [capabilities] if isinstance(capabilities, str) else list(capabilities)
    wanted_skills = [skills] if isinstance(skills, str) else list(skills)
    params: dict[str, str | list[str]] = {"capability": wanted, "skill": wanted_skills}
    optional = {"type": agent_type, "status": status, "namespace": namespace}
    params.update({name: value for name, value in optional.items() if value is not None})
    return httpx.QueryParams(params)


def resume_headers(headers: dict[str, str], last_id: str | None) -> dict[str, str]:
    return headers | {"Accept": "text/event-stream"} | ({"Last-Event-ID": last_id} if last_id else {})


def retryable(status: int) -> bool:
    return status in _RETRYABLE or status >= 500


def backoff_seconds(failures: int, retry_ms: int | None) -> float:
    """The wait before connecting again: none after a stream that ended cleanly, then the
    registry's ``retry:`` hint doubled per failure (1 s .. 10 s), with jitter so a fleet of
    watchers does not come back at one instant."""
    if failures <= 0:
        return 0.0
    base = (retry_ms or 1000) / 1000.0
    delay: float = min(_RETRY_CAP_SECONDS, base * 2.0 ** (failures - 1))
    return delay * random.uniform(0.5, 1.0)


class Resumption:
    """Where a watch stands across its connections, for the sync and the asyncio loop alike:
    the last event id (sent back as ``Last-Event-ID``), the failures in a row and the
    registry's ``retry:`` hint, which together decide the wait before the next connection."""

    def __init__(self, since: str | None) -> None:
        self.last_id = since
        self.failures = 0
        self.retry_ms: int | None = None
        self._parser = EventParser()
        self._delivered = False

    def headers(self, base: dict[str, str]) -> dict[str, str]:
        return resume_headers(base, self.last_id)

    def stream_opened(self) -> None:
        self._parser = EventParser()
        self._delivered = False

    def line(self, line: str) -> WatchEvent | None:
        event = self._parser.feed(line)
        self.retry_ms = self._parser.retry_ms or self.retry_ms
        if event is not None:
            self.last_id, self.failures, self._delivered = event.id or self.last_id, 0, True
        return event

    def stream_ended(self) -> None:
        if not self._delivered:
            self.failures += 1  # a replica that ends streams at once (shutting down): back off

    def failed(self, exc: Exception | None = None) -> None:
        self.failures += 1
        if exc is not None:
            logger.warning("watch: connection lost (%s: %s); resuming", type(exc).__name__, exc)

    def delay(self) -> float:
        return backoff_seconds(self.failures, self.retry_ms)
