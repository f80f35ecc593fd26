"""Reading the index: what the HTTP facade needs."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from agent_registry.index import keys as k
from agent_registry.index import scripts
from agent_registry.index.errors import IndexLost, translated_errors
from agent_registry.index.record import IndexedAgent
from agent_registry.schema.agent import DNS_LABEL_PATTERN

# The dev environment carries types-redis (stubs for redis 4), in which the client is
# generic; redis-py 8's own hints are not. One alias keeps both type-checking.
RedisClient: TypeAlias = "Redis[Any]"  # type: ignore[type-arg,unused-ignore]

DEFAULT_TIMEOUT_SECONDS = 2.0
_NO_INDEX = -1  # what the read scripts return when there is no intact index
_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)


def connect(url: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> RedisClient:
    """A client suited to the index.

    A cache that hangs is worse than one that is down: callers fall back to the API
    server, so every socket operation is bounded. One immediate retry covers the stale
    pooled connection a Redis restart leaves behind; more would only delay the fallback.
    """
    return Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), retries=1),
        decode_responses=True,
    )


def text(value: str | bytes) -> str:
    """Key names and ids as ``str``, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value


_PARSED_ENTRIES = 10_000
ROUTE_COUNTER_SECONDS = 3600
"""A routing question nobody asked for an hour starts its round robin afresh."""


def wire_json(document: Any) -> bytes:
    """JSON as the facade's responses spell it (Starlette's ``JSONResponse`` settings)."""
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Listed:
    """A record with its REST ``Agent`` already serialised: a list answer joins these."""

    record: IndexedAgent
    wire: bytes


class _ParsedRecords:
    """Records parsed lately, by their exact JSON, each with its wire form.

    A discovery query returns the same records again and again (an agent's record changes
    once per heartbeat interval), and parsing them, then serialising them again for the
    answer, was most of a query's CPU. Records are frozen, so one parsed copy can be
    shared; the oldest entries make room first.
    """

    def __init__(self, size: int = _PARSED_ENTRIES) -> None:
        self.size = size
        self._records: dict[str, Listed] = {}

    def parse(self, raw: str | bytes) -> IndexedAgent:
        return self.listed(raw).record

    def listed(self, raw: str | bytes) -> Listed:
        key = text(raw)
        entry = self._records.get(key)
        if entry is None:
            record = IndexedAgent.model_validate_json(key)
            entry = Listed(record, wire_json(record.to_json()))
            while len(self._records) >= self.size:
                del self._records[next(iter(self._records))]
            self._records[key] = entry
        return entry


def _no_index(reply: Any) -> bool:
    return isinstance(reply, int) and reply == _NO_INDEX


class IndexReader:
    """Lookups against the live generation. Every method raises ``IndexUnavailable``
    (``IndexLost`` when Redis answers but holds no index) instead of a Redis error.

    Each lookup is one script that resolves the current generation and reads it, so a
    resync switching generations underneath is never seen half-way and needs no retry.
    """

    def __init__(self, redis: RedisClient, *, prefix: str = k.DEFAULT_PREFIX) -> None:
        self.redis = redis
        self.layout = k.KeyLayout(prefix)
        self._get = redis.register_script(scripts.GET)
        self._get_by_name = redis.register_script(scripts.GET_BY_NAME)
        self._query = redis.register_script(scripts.QUERY)
        self._route = redis.register_script(scripts.ROUTE)
        self._is_intact = redis.register_script(scripts.IS_INTACT)
        self._parsed = _ParsedRecords()

    async def get(self, agent_id: str) -> IndexedAgent | None:
        with translated_errors():
            reply = await self._get(keys=[self.layout.current], args=[self.layout.generations, agent_id])
            return self._one(reply)

    async def get_by_name(self, namespace: str, name: str) -> IndexedAgent | None:
        with translated_errors():
            reply = await self._get_by_name(
                keys=[self.layout.current], args=[self.layout.generations, k.name_field(namespace, name)]
            )
            return self._one(reply)

    async def query(
        self,
        namespace: str | None,
        type: str | None = None,
        capabilities: Sequence[str] = (),
        status: str | None = None,
    ) -> list[IndexedAgent]:
        """Agents matching every given filter (all ``capabilities`` must match), sorted
        by name; ``namespace=None`` means all namespaces."""
        return [entry.record for entry in await self.query_listed(namespace, type, capabilities, status)]

    async def query_listed(
        self,
        namespace: str | None,
        type: str | None = None,
        capabilities: Sequence[str] = (),
        status: str | None = None,
    ) -> list[Listed]:
        """As ``query``, each record with its wire form."""
        if not self._valid_scope(namespace):
            return []
        with translated_errors():
            reply = await self._query(
                keys=[self.layout.current],
                args=[self.layout.generations, "records", *k.query_sets(namespace, type, capabilities, status)],
            )
            if _no_index(reply):
                raise IndexLost("no index in redis")
            entries = [self._parsed.listed(raw) for raw in reply]
        entries.sort(key=lambda entry: (entry.record.name, entry.record.namespace))
        return entries

    async def route(self, namespace: str, agent_type: str, capabilities: Sequence[str]) -> Listed | None:
        """One healthy agent of the type with every capability, round robin over all that
        match (one counter per question, shared by every reader); None when none does."""
        if not self._valid_scope(namespace):
            return None
        with translated_errors():
            reply = await self._route(
                keys=[self.layout.current, self.layout.route_counter(namespace, agent_type, capabilities)],
                args=[
                    self.layout.generations,
                    ROUTE_COUNTER_SECONDS,
                    *k.query_sets(namespace, agent_type, capabilities, "healthy"),
                ],
            )
            if _no_index(reply):
                raise IndexLost("no index in redis")
            return None if reply is None else self._parsed.listed(reply)

    async def count(
        self,
        namespace: str | None,
        type: str | None = None,
        capabilities: Sequence[str] = (),
        status: str | None = None,
    ) -> int:
        """How many agents ``query`` would return, without fetching them."""
        if not self._valid_scope(namespace):
            return 0
        with translated_errors():
            reply = await self._query(
                keys=[self.layout.current],
                args=[self.layout.generations, "count", *k.query_sets(namespace, type, capabilities, status)],
            )
        if _no_index(reply):
            raise IndexLost("no index in redis")
        return int(reply)

    async def is_intact(self) -> bool:
        """False when the index is gone or damaged (FLUSHALL, a restart without
        persistence, expiry, eviction): the operator then runs a full resync."""
        with translated_errors():
            return bool(await self._is_intact(keys=[self.layout.current], args=[self.layout.generations]))

    async def ping(self) -> bool:
        with translated_errors():
            return bool(await self.redis.ping())

    def _one(self, reply: Any) -> IndexedAgent | None:
        if _no_index(reply):
            raise IndexLost("no index in redis")
        return None if reply is None else self._parsed.parse(reply)

    @staticmethod
    def _valid_scope(namespace: str | None) -> bool:
        # A namespace comes from a URL; "*" would otherwise widen the query to every namespace.
        return namespace is None or bool(_DNS_LABEL.match(namespace))
