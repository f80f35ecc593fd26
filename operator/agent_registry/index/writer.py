"""Writing the index: the operator's side.

Live changes (``upsert``, ``remove``) are single scripts. A full resync builds a new
generation beside the live one, switches the pointer in one step and collects the old
generation in the background, so readers see the old index or the new one, never a mix.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from itertools import islice
from typing import TypeVar

from agent_registry.index import keys as k
from agent_registry.index import scripts
from agent_registry.index.changes import DEFAULT_CHANGES_KEPT, ChangeKind
from agent_registry.index.errors import IndexLost, IndexUnavailable, translated_errors
from agent_registry.index.reader import IndexReader, RedisClient, text
from agent_registry.index.record import IndexedAgent

DEFAULT_TTL_SECONDS = 300
DEFAULT_RESYNC_TIMEOUT_SECONDS = 600
DEFAULT_BATCH_SIZE = 500
_RESYNC_GONE = "the resync's generation is gone (its lease ran out, or Redis lost it); start again"

log = logging.getLogger(__name__)
T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[tuple[T, ...]]:
    """``itertools.batched`` (Python 3.12+)."""
    iterator = iter(items)
    while chunk := tuple(islice(iterator, size)):
        yield chunk


class IndexWriter(IndexReader):
    """The operator's handle on the index; one per operator process."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str = k.DEFAULT_PREFIX,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        resync_timeout_seconds: int = DEFAULT_RESYNC_TIMEOUT_SECONDS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        changes_kept: int = DEFAULT_CHANGES_KEPT,
    ) -> None:
        if min(ttl_seconds, resync_timeout_seconds, batch_size, changes_kept) < 1:
            raise ValueError("ttl_seconds, resync_timeout_seconds, batch_size and changes_kept must be positive")
        super().__init__(redis, prefix=prefix)
        self.ttl_seconds = ttl_seconds
        # Keys of a generation being built live at least as long as the resync may take,
        # so a slow listing cannot let the first batches expire before the switch.
        self.lease_seconds = max(resync_timeout_seconds, ttl_seconds)
        self.batch_size = batch_size
        self.changes_kept = changes_kept
        self._upsert = redis.register_script(scripts.UPSERT)
        self._remove = redis.register_script(scripts.REMOVE)
        self._load = redis.register_script(scripts.LOAD)
        self._commit = redis.register_script(scripts.COMMIT)
        self._collect = redis.register_script(scripts.COLLECT)
        self._background: set[asyncio.Task[int]] = set()
        self._described: str | None = None
        """The live generation, if this writer committed it and has written every change to it
        since: the change feed then describes it whole, and rebuilding it needs no relist."""

    async def upsert(self, record: IndexedAgent, change: ChangeKind | None = ChangeKind.UPDATED) -> None:
        """Write one agent and move it between sets atomically.

        ``change`` is what the change feed (``changes``) records: None for a heartbeat that
        changed nothing a watcher sees. An agent the live index lacks is recorded as
        registered whatever ``change`` says.

        Raises ``IndexLost`` when there is no index to write into (and no resync building
        one): the change is not lost, the resync the operator runs next lists it.
        """
        with self._tracked(), translated_errors():
            reached = await self._upsert(
                keys=[self.layout.current, self.layout.pending, self.layout.changes],
                args=[
                    self.layout.generations,
                    self.ttl_seconds,
                    self.lease_seconds,
                    record.id,
                    record.model_dump_json(),
                    k.memberships(record),
                    record.card_json or b"",
                    change.value if change is not None else "",
                    self.changes_kept,
                ],
            )
        if not reached:
            self._described = None
            raise IndexLost("no index to write into; run a full resync")

    async def remove(self, agent_id: str) -> None:
        """Remove one agent from the record and every set, atomically. ``IndexLost`` as for upsert."""
        with self._tracked(), translated_errors():
            reached = await self._remove(
                keys=[self.layout.current, self.layout.pending, self.layout.changes],
                args=[self.layout.generations, self.ttl_seconds, self.lease_seconds, agent_id, self.changes_kept],
            )
        if not reached:
            self._described = None
            raise IndexLost("no index to write into; run a full resync")

    @contextmanager
    def _tracked(self) -> Iterator[None]:
        # A write that failed may or may not have reached the feed: it no longer describes all.
        try:
            yield
        except BaseException:
            self._described = None
            raise

    @asynccontextmanager
    async def resync(self, *, nothing_pending: bool = False) -> AsyncIterator[Resync]:
        """A full rebuild; changes made through upsert/remove meanwhile are kept.

        ``nothing_pending``: the caller has written through this writer every change it
        knows of (none is waiting to be written). If the live generation is also one this
        writer committed and has written every change to since, the feed describes it
        whole, and the new generation goes live without a relist (a new leader's routine
        rebuild of an index it kept itself).

        Enter *before* listing the agents from the API server::

            async with writer.resync() as resync:
                await resync.load(record_from_resource(r) for r in await list_agents())

        The new generation goes live when the block exits normally and is discarded when
        it raises. Several resyncs may run at once; the last to commit wins, and each is
        complete because live changes reach every generation being built.
        """
        gen = f"{int(time.time())}-{secrets.token_hex(6)}"
        layout = self.layout
        with translated_errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(layout.key(gen, k.META), mapping={"agents": 0, "state": "pending", "created": int(time.time())})
            pipe.expire(layout.key(gen, k.META), self.lease_seconds)
            pipe.sadd(layout.pending, gen)
            pipe.expire(layout.pending, self.lease_seconds)
            await pipe.execute()
        resync = Resync(self, gen, self._described if nothing_pending else None)
        try:
            yield resync
        except BaseException:
            await asyncio.shield(resync.abort())
            raise
        await resync.commit()

    async def replace_all(self, records: Iterable[IndexedAgent], *, nothing_pending: bool = False) -> int:
        """Make ``records`` the whole index. Returns how many were loaded.

        Changes made through this writer while it runs are kept, but ones made between
        listing ``records`` and this call are not: the operator should use ``resync()``.
        ``nothing_pending`` as for ``resync``.
        """
        async with self.resync(nothing_pending=nothing_pending) as resync:
            return await resync.load(records)

    async def refresh(self) -> bool:
        """Extend the TTL of every key of the live generation; call it periodically.

        Returns whether the index is intact afterwards; False means run a full resync.
        """
        with translated_errors():
            gen = await self.redis.get(self.layout.current)
            if gen is None:
                return False
            await self._expire_generation(text(gen))
        return await self.is_intact()

    async def collect_garbage(self) -> int:
        """Delete keys of generations that are neither live nor being built. Returns how many."""
        layout = self.layout
        deleted = 0

        async def collect(candidates: list[str]) -> int:
            keys = [layout.current, layout.pending, *candidates]
            return int(await self._collect(keys=keys, args=[layout.generations]))

        with translated_errors():
            candidates: list[str] = []
            async for key in self.redis.scan_iter(match=layout.generations_pattern, count=1000):
                candidates.append(text(key))
                if len(candidates) >= self.batch_size:
                    deleted += await collect(candidates)
                    candidates = []
            if candidates:
                deleted += await collect(candidates)
        return deleted

    async def drain(self) -> None:
        """Wait for background garbage collection (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _expire_generation(self, gen: str) -> None:
        layout = self.layout
        set_keys = await self.redis.smembers(layout.key(gen, k.KEY_REGISTRY))
        keys = [
            layout.current,
            layout.changes,
            *(layout.key(gen, suffix) for suffix in k.FIXED_KEYS),
            *map(text, set_keys),
        ]
        for chunk in batched(keys, self.batch_size):
            pipe = self.redis.pipeline(transaction=False)
            for key in chunk:
                pipe.expire(key, self.ttl_seconds)
            await pipe.execute()

    def _collect_in_background(self) -> None:
        task = asyncio.create_task(self.collect_garbage(), name="agent-registry-index-gc")
        self._background.add(task)
        task.add_done_callback(self._collected)

    def _collected(self, task: asyncio.Task[int]) -> None:
        self._background.discard(task)
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            # Harmless: leftover keys expire, and the next collection takes them.
            log.warning("index garbage collection failed: %s", exc)
        else:
            log.debug("index garbage collection deleted %d keys", task.result())


class Resync:
    """One generation being built; see ``IndexWriter.resync``."""

    def __init__(self, writer: IndexWriter, generation: str, described: str | None = None) -> None:
        self.writer = writer
        self.generation = generation
        self.described = described
        """The live generation the feed describes whole ('' or None: it may not)."""

    async def load(self, records: Iterable[IndexedAgent]) -> int:
        """Add records to the new generation, in pipelined batches; may be called repeatedly.

        An agent changed live since the resync began keeps its live version. Returns how
        many records were written.
        """
        w = self.writer
        layout = w.layout
        loaded = 0
        with translated_errors():
            # Ten scripts of batch_size records per round trip: few round trips, while no
            # single script blocks Redis for long.
            for group in batched(batched(records, w.batch_size), 10):
                pipe = w.redis.pipeline(transaction=False)
                for batch in group:
                    args: list[str | int | bytes] = [layout.generations, self.generation, w.lease_seconds]
                    for record in batch:
                        args += [record.id, record.model_dump_json(), k.memberships(record), record.card_json or b""]
                    await w._load(keys=[layout.pending], args=args, client=pipe)
                for result in await pipe.execute():
                    if result == -1:
                        raise IndexUnavailable(_RESYNC_GONE)
                    loaded += int(result)
        return loaded

    async def commit(self) -> None:
        """Make this generation live, then normalise its TTLs and collect the old one."""
        w = self.writer
        with translated_errors():
            result = await w._commit(
                keys=[w.layout.current, w.layout.pending, w.layout.changes],
                args=[w.layout.generations, self.generation, w.ttl_seconds, w.changes_kept, self.described or ""],
            )
            if result == -1:
                w._described = None
                raise IndexUnavailable(_RESYNC_GONE)
            w._described = self.generation
            await w._expire_generation(self.generation)
        w._collect_in_background()

    async def abort(self) -> None:
        """Drop this generation; readers never saw it."""
        w = self.writer
        try:
            with translated_errors():
                await w.redis.srem(w.layout.pending, self.generation)
        except IndexUnavailable as exc:
            log.warning("could not abort resync %s (its keys will expire): %s", self.generation, exc)
            return
        w._collect_in_background()
