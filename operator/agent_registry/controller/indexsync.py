"""Keeps the Redis index in step with what the operator sees, without ever blocking it.

Handlers only record what changed (``put``/``drop``) in memory; one task writes it to
Redis. When Redis is down the task counts the error, backs off and keeps the records; when
Redis answers again, or the index is found lost (restart without persistence, FLUSHALL,
expiry), it rebuilds the whole index from memory. Redis is a cache: nothing in it is
needed to rebuild it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from agent_registry.controller import metrics
from agent_registry.controller.settings import OperatorSettings
from agent_registry.index import IndexedAgent, IndexLost, IndexUnavailable, IndexWriter, connect, record_from_resource
from agent_registry.index.changes import ChangeKind, change_between, stronger
from agent_registry.schema.agent import Load, Phase
from agent_registry.schema.card import StoredCard
from agent_registry.schema.rest import rest_status

logger = logging.getLogger(__name__)

Key = tuple[str, str]

# The first full build waits until the initial listing settles, so a restart does not
# replace a complete index with a half-listed one.
_SETTLE_SECONDS = 1.0
_SETTLE_LIMIT_SECONDS = 30.0
_MAX_BACKOFF_SECONDS = 10.0


class IndexSync:
    def __init__(self, settings: OperatorSettings, is_leader: Callable[[], bool]) -> None:
        self.settings = settings
        self.is_leader = is_leader
        self.records: dict[Key, IndexedAgent] = {}
        self._dirty: set[Key] = set()
        # What watchers are to be told about each dirty agent (the change feed); an agent
        # dirty only by heartbeats has none.
        self._changes: dict[Key, ChangeKind] = {}
        self._removed: dict[Key, str] = {}
        self._full_needed = True
        self._wake = asyncio.Event()
        self._last_change = time.monotonic()
        self._started = time.monotonic()
        self._writer: IndexWriter | None = None

    # --- called from handlers (synchronous, never touch Redis) --------------------

    def put(
        self,
        key: Key,
        body: dict[str, Any],
        phase: Phase,
        last_seen: datetime | None,
        load: Load | None = None,
        card: StoredCard | None = None,
    ) -> None:
        """Index the Agent ``body``; ``card`` is its card as the operator validated it (None: it serves none)."""
        try:
            record = record_from_resource(body, phase=phase, last_seen=last_seen, load=load, card=card)
        except ValueError as exc:
            logger.error("agent %s/%s cannot be indexed: %s", key[0], key[1], exc)
            return
        previous = self.records.get(key)
        if previous is None:
            self._last_change = time.monotonic()
        self.records[key] = record
        self._removed.pop(key, None)
        self._mark(key, change_between(previous, record))

    def set_phase(self, key: Key, phase: Phase) -> None:
        record = self.records.get(key)
        if record is not None:
            view = record.agent.model_copy(update={"status": rest_status(phase)})
            updated = record.model_copy(update={"agent": view, "phase": phase})
            self.records[key] = updated
            self._mark(key, change_between(record, updated))

    def touch(self, key: Key, last_seen: datetime | None, load: Load | None = None) -> None:
        """A heartbeat seen elsewhere than on the Agent (a Lease renewal): ``last_seen`` moves,
        and the load is the renewal's (none when it reported none)."""
        record = self.records.get(key)
        if record is not None and last_seen is not None:
            self.records[key] = record.model_copy(
                update={"agent": record.agent.model_copy(update={"last_seen": last_seen}), "load": load}
            )
            self._mark(key)

    def drop(self, key: Key) -> None:
        record = self.records.pop(key, None)
        self._dirty.discard(key)
        self._changes.pop(key, None)
        if record is not None and record.id:
            self._removed[key] = record.id
            self._wake.set()

    def request_full_resync(self) -> None:
        self._full_needed = True
        self._wake.set()

    def _mark(self, key: Key, change: ChangeKind | None = None) -> None:
        self._dirty.add(key)
        if change is not None:
            self._changes[key] = stronger(self._changes.get(key), change) or change
        self._wake.set()

    # --- the writer task ------------------------------------------------------------

    async def run(self) -> None:
        backoff = 0.5
        outage = False
        last_refresh = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            self._wake.clear()
            if not self.is_leader():
                continue
            try:
                writer = await self._ensure_writer()
                if self._full_needed:
                    if not self._settled():
                        continue
                    await self._full_resync(writer)
                else:
                    await self._flush(writer)
                if time.monotonic() - last_refresh >= self.settings.index_refresh_seconds:
                    last_refresh = time.monotonic()
                    if not await writer.is_intact():
                        logger.warning("the Redis index is gone (restart, FLUSHALL or expiry); rebuilding it")
                        self._full_needed = True
                        self._wake.set()
                    else:
                        await writer.refresh()
                if outage:
                    logger.warning("Redis is reachable again; index rebuilt")
                outage, backoff = False, 0.5
            except IndexLost:
                # Redis answers but holds no index (restart, FLUSHALL, expiry): rebuild.
                logger.warning("the Redis index is gone; rebuilding it from memory")
                self._full_needed = True
                self._wake.set()
            except (IndexUnavailable, OSError) as exc:
                metrics.REDIS_ERRORS.inc()
                if not outage:
                    logger.warning("Redis index unavailable (%s); reconciling continues, retrying", exc)
                outage = True
                # Whatever was written during the outage may be partial: rebuild on return.
                self._full_needed = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
                self._wake.set()

    def _settled(self) -> bool:
        now = time.monotonic()
        if now - self._started > _SETTLE_LIMIT_SECONDS:
            return True
        settled = now - self._last_change >= _SETTLE_SECONDS
        if not settled:
            self._wake.set()
        return settled

    async def _ensure_writer(self) -> IndexWriter:
        if self._writer is None:
            self._writer = IndexWriter(
                connect(self.settings.redis_url),
                prefix=self.settings.redis_key_prefix,
                ttl_seconds=self.settings.index_ttl_seconds,
                changes_kept=self.settings.index_changes_kept,
            )
        return self._writer

    async def _full_resync(self, writer: IndexWriter) -> None:
        started = time.monotonic()
        records = list(self.records.values())
        # Changes not yet written would reach watchers only through a relist.
        nothing_pending = not self._changes and not self._removed
        self._dirty.clear()
        self._changes.clear()
        self._removed.clear()
        self._full_needed = False
        try:
            await writer.replace_all(records, nothing_pending=nothing_pending)
        except BaseException:
            self._full_needed = True
            raise
        metrics.REDIS_RESYNCS.inc()
        logger.info("Redis index rebuilt: %d agents in %.2fs", len(records), time.monotonic() - started)

    async def _flush(self, writer: IndexWriter) -> None:
        removed, self._removed = self._removed, {}
        dirty, self._dirty = self._dirty, set()
        changes, self._changes = self._changes, {}
        try:
            for agent_id in removed.values():
                await writer.remove(agent_id)
            for key in dirty:
                record = self.records.get(key)
                if record is not None:
                    await writer.upsert(record, changes.get(key))
        except BaseException:
            # Keep what was not written; the outage path rebuilds everything anyway.
            self._removed.update(removed)
            self._dirty |= dirty
            for key, change in changes.items():
                self._changes[key] = stronger(self._changes.get(key), change) or change
            raise

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(IndexUnavailable, OSError):
                await self._writer.drain()  # let the background clean-up of old generations finish
            await self._writer.redis.aclose()  # type: ignore[attr-defined,unused-ignore]
