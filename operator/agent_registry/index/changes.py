"""The change feed: one Redis stream entry per change a watcher of the registry sees.

The operator's index scripts append to it in the same step as the change they make
(``scripts.UPSERT``, ``REMOVE``, ``COMMIT``), so the feed and the index never disagree.
An entry names its kind, the agent, and its record before and after (index JSON, empty
when absent), so a reader with a filter can tell an agent entering or leaving its view
without remembering what it sent. The stream's ids are the positions a watch client
resumes from (SSE ``Last-Event-ID``).

Kinds: ``registered`` (new to the index), ``updated`` (a change other than the phase),
``phase`` (the REST status changed), ``removed``, and ``relist``: the index was rebuilt
(first start, a Redis outage or flush, a new leader), so changes may have happened
that the feed does not hold; a watcher must list again. Heartbeats that only move
``last_seen`` (or the load) are not changes here: at 10,000 agents they are 333 a second,
and a watch would be the heartbeat traffic again (docs/decisions.md).

The stream is capped at about ``changes_kept`` entries. A position older than what the
stream still holds, one from another stream (Redis restarted without persistence), or a
stream that is gone cannot be resumed from: ``continuity`` says why, and the reader relists.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Final

from agent_registry.index.errors import translated_errors
from agent_registry.index.keys import KeyLayout
from agent_registry.index.reader import RedisClient, text
from agent_registry.index.record import IndexedAgent

DEFAULT_CHANGES_KEPT: Final = 10_000
POSITION_PATTERN: Final = r"^[0-9]{1,20}-[0-9]{1,20}$"
_POSITION = re.compile(POSITION_PATTERN)


class ChangeKind(enum.StrEnum):
    REGISTERED = "registered"
    UPDATED = "updated"
    PHASE = "phase"
    REMOVED = "removed"
    RELIST = "relist"


# When several changes to one agent are written as one, the strongest kind names them.
_STRENGTH: Final = {ChangeKind.UPDATED: 1, ChangeKind.PHASE: 2, ChangeKind.REGISTERED: 3}


def stronger(a: ChangeKind | None, b: ChangeKind | None) -> ChangeKind | None:
    """The kind that describes both changes (``registered`` then ``phase`` is still new to a watcher)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if _STRENGTH[a] >= _STRENGTH[b] else b


def change_between(old: IndexedAgent | None, new: IndexedAgent) -> ChangeKind | None:
    """What a watcher sees when the record ``old`` becomes ``new``; None when nothing it
    shows changed but the time of the last heartbeat (and the load, which it does not show)."""
    if old is None:
        return ChangeKind.REGISTERED
    if old.agent.status != new.agent.status:
        return ChangeKind.PHASE
    before = old.agent.model_copy(update={"last_seen": None})
    after = new.agent.model_copy(update={"last_seen": None})
    if before != after or old.card_hash != new.card_hash or old.namespace != new.namespace:
        return ChangeKind.UPDATED
    return None


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A place in the feed: a Redis stream id (milliseconds, sequence)."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, value: str) -> Position:
        """Raises ValueError, naming the rule, for anything but ``<digits>-<digits>``."""
        matched = _POSITION.fullmatch(value)
        if matched is None:
            raise ValueError(f"{value[:64]!r} is not a position of the change feed (<milliseconds>-<sequence>)")
        ms, seq = value.split("-")
        return cls(int(ms), int(seq))

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


START: Final = Position(0, 0)
"""Before every change: where a feed that never had an entry stands."""


@dataclass(slots=True)
class Change:
    """One entry of the feed; the records are parsed once, when first asked for."""

    position: Position
    kind: ChangeKind
    agent_id: str
    old_json: str
    new_json: str
    reason: str = ""
    """Why, for a relist a reader made itself (the feed broke while it could not read it)."""
    _old: IndexedAgent | None = field(default=None, init=False, repr=False)
    _new: IndexedAgent | None = field(default=None, init=False, repr=False)
    _parsed: bool = field(default=False, init=False, repr=False)
    encoded: dict[Any, bytes] = field(default_factory=dict, init=False, repr=False)
    """Whatever a reader makes of this change once and sends to many (the facade's SSE events)."""

    def records(self) -> tuple[IndexedAgent | None, IndexedAgent | None]:
        """The agent's index record before and after the change (None where absent)."""
        if not self._parsed:
            self._old = IndexedAgent.model_validate_json(self.old_json) if self.old_json else None
            self._new = IndexedAgent.model_validate_json(self.new_json) if self.new_json else None
            self._parsed = True
        return self._old, self._new


def _change(entry_id: Any, fields: dict[Any, Any]) -> Change | None:
    values = {text(key): text(value) for key, value in fields.items()}
    try:
        kind = ChangeKind(values.get("kind", ""))
        position = Position.parse(text(entry_id))
    except ValueError:
        return None  # not written by this version's scripts; skipped, not fatal
    return Change(position, kind, values.get("id", ""), values.get("old", ""), values.get("new", ""))


class ChangeFeed:
    """Reading the feed: the facade's side. ``waiting`` is the client of ``wait``, whose socket
    timeout must outlast the blocking read (the facade's index client gives up after a second)."""

    def __init__(self, redis: RedisClient, layout: KeyLayout, waiting: RedisClient | None = None) -> None:
        self.redis = redis
        self.waiting = waiting or redis
        self.key = layout.changes

    async def head(self) -> Position:
        """The position of the latest entry; ``START`` when the feed never had one."""
        with translated_errors():
            latest = await self.redis.xrevrange(self.key, count=1)
        return _change_position(latest[0][0]) if latest else START

    async def continuity(self, since: Position) -> str | None:
        """None when the feed holds every change after ``since``; else why it cannot (relist)."""
        with translated_errors():
            exists = await self.redis.exists(self.key)
            info: dict[Any, Any] = await self.redis.xinfo_stream(self.key) if exists else {}
        if not info:
            if since == START:
                return None
            return "the change history is gone (Redis restarted or was flushed)"
        last = _info_position(info, "last-generated-id")
        if last is not None and since > last:
            return f"position {since} is not in this change history (it ends at {last})"
        # Trimming is not recorded entry by entry (max-deleted-entry-id counts only XDEL), but
        # every trimmed entry is older than the oldest kept one: a position before that one
        # may have missed some, unless nothing was ever trimmed.
        length = int(info.get("length", 0))
        added = info.get("entries-added")
        trimmed = added is None or int(added) > length
        first = _info_position(info, "recorded-first-entry-id") if length else None
        if first is None and length:
            first = _change_position(info["first-entry"][0])
        if trimmed and since != last and (first is None or since < first):
            return f"the changes after {since} are no longer kept (the oldest kept is {first or 'none'})"
        return None

    async def after(self, since: Position, count: int = 500) -> list[Change]:
        """Up to ``count`` entries after ``since``, oldest first, without waiting."""
        with translated_errors():
            entries = await self.redis.xrange(self.key, min=f"({since}", max="+", count=count)
        return _changes(entries)

    async def wait(self, since: Position, block_ms: int, count: int = 500) -> list[Change]:
        """Entries after ``since``, waiting up to ``block_ms`` for the first; [] when none came."""
        with translated_errors():
            answer: Any = await self.waiting.xread({self.key: str(since)}, count=count, block=block_ms)
        entries: list[Any] = []
        for _stream, stream_entries in answer or []:
            entries.extend(stream_entries)
        return _changes(entries)


def _changes(entries: Any) -> list[Change]:
    out = []
    for entry_id, fields in entries:
        change = _change(entry_id, fields)
        if change is not None:
            out.append(change)
    return out


def _change_position(entry_id: Any) -> Position:
    return Position.parse(text(entry_id))


def _info_position(info: dict[Any, Any], name: str) -> Position | None:
    value = info.get(name)
    if value is None:
        return None
    return Position.parse(text(value))
