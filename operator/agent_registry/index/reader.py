"""Reading the index: what the HTTP facade needs."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

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
T = TypeVar("T")


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


_LISTED_ENTRIES = 16_384
_PARSED_ENTRIES = 2_048
SEED_LIMIT = 2**31 - 1
"""Route seeds are drawn from [1, SEED_LIMIT): the script's generator needs them so."""
ROUTE_COUNTER_SECONDS = 3600
"""A routing question nobody asked for an hour starts its round robin afresh."""


def wire_json(document: Any) -> bytes:
    """JSON as the facade's responses spell it (Starlette's ``JSONResponse`` settings)."""
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Listed:
    """A record as a list answer needs it: what sorts and overlays it, and its REST
    ``Agent`` already serialised. The parsed record is not kept (it was three quarters of
    the memory per agent at 10,000); ``record`` parses it again when asked."""

    id: str
    name: str
    namespace: str
    resource_version: str
    version: str
    """The agent's software version, for routes that constrain it."""
    wire: bytes
    raw: str

    @property
    def record(self) -> IndexedAgent:
        return IndexedAgent.model_validate_json(self.raw)


@dataclass(frozen=True, slots=True)
class Picked:
    """A route's pick: the agent's id, and its record when the index has one (a candidate
    given by id may be too new for the index)."""

    id: str
    listed: Listed | None


@dataclass(frozen=True, slots=True)
class Carded:
    """An agent of a card catalogue: its record as a list answer needs it, and its card's canonical JSON."""

    listed: Listed
    card: str


class Listing:
    """One answer of the index to a query, sorted by name: shared by every caller that
    joined the read, so the joined answer body is built once for all of them."""

    __slots__ = ("_body", "entries")

    def __init__(self, entries: list[Listed]) -> None:
        self.entries = entries
        self._body: bytes | None = None

    def body(self) -> bytes:
        """The list answer's body, ``{"agents": [...], "count": n}``."""
        if self._body is None:
            self._body = list_body([entry.wire for entry in self.entries])
        return self._body


def list_body(wires: Sequence[bytes]) -> bytes:
    return b'{"agents":[' + b",".join(wires) + b'],"count":' + str(len(wires)).encode() + b"}"


class _Bounded(dict[str, T]):
    """A dict that forgets its oldest entries beyond ``size``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: str, value: T) -> T:
        while len(self) >= self.size:
            del self[next(iter(self))]
        self[key] = value
        return value


class _ParsedRecords:
    """Records seen lately, by their exact JSON.

    A discovery query returns the same records again and again (an agent's record changes
    once per heartbeat interval), and parsing them, then serialising them again for the
    answer, was most of a query's CPU. A list needs only each record's wire form and sort
    key, kept for many records; a lookup by id needs the parsed record, kept for fewer
    (records are frozen, so one parsed copy can be shared).
    """

    def __init__(self, listed: int = _LISTED_ENTRIES, parsed: int = _PARSED_ENTRIES) -> None:
        self._listed: _Bounded[Listed] = _Bounded(listed)
        self._records: _Bounded[IndexedAgent] = _Bounded(parsed)

    def parse(self, raw: str | bytes) -> IndexedAgent:
        key = text(raw)
        record = self._records.get(key)
        return record if record is not None else self._records.put(key, IndexedAgent.model_validate_json(key))

    def listed(self, raw: str | bytes) -> Listed:
        key = text(raw)
        entry = self._listed.get(key)
        if entry is None:
            # Not through parse(): a list of 10,000 would push out every record kept for
            # lookups by id. A record parsed for one (get_with_wire) is reused.
            record = self._records.get(key) or IndexedAgent.model_validate_json(key)
            wire = wire_json(record.to_json())
            entry = Listed(
                record.id, record.name, record.namespace, record.resource_version, record.agent.version, wire, key
            )
            self._listed.put(key, entry)
        return entry


class _SharedReads:
    """Identical queries share one Redis read.

    While a read for a query is in flight, callers asking the same question wait for the
    next read, which starts when the current one ends and answers all of them. A caller
    never joins a read that started before it arrived, so each still sees every write
    acknowledged before its request (read-your-writes). Under a crowd asking the same
    question (orchestrator workers polling for healthy agents of a type), this keeps one
    answer in memory instead of one per caller, and does the work once.
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[Listing]] = {}
        self._next: dict[Hashable, asyncio.Future[Listing]] = {}

    async def read(self, key: Hashable, read: Callable[[], Awaitable[Listing]]) -> Listing:
        following = self._next.get(key)
        if following is None and key not in self._running:
            return await self._run(key, read)
        if following is None:
            following = asyncio.ensure_future(self._after(key, read))
            following.add_done_callback(_retrieved)
            self._next[key] = following
        # Shielded: a caller that hangs up does not cancel the read for the others.
        return await asyncio.shield(following)

    async def _run(self, key: Hashable, read: Callable[[], Awaitable[Listing]]) -> Listing:
        done: asyncio.Future[Listing] = asyncio.get_running_loop().create_future()
        self._running[key] = done
        try:
            result = await read()
            done.set_result(result)
            return result
        finally:
            if not done.done():
                done.cancel()
            if self._running.get(key) is done:
                del self._running[key]

    async def _after(self, key: Hashable, read: Callable[[], Awaitable[Listing]]) -> Listing:
        running = self._running.get(key)
        if running is not None:
            await asyncio.wait([running])
        del self._next[key]
        return await self._run(key, read)


def _retrieved(task: asyncio.Future[Any]) -> None:
    # Every caller may have hung up: the outcome is then nobody's, not a lost error.
    if not task.cancelled():
        task.exception()


def _no_index(reply: Any) -> bool:
    return isinstance(reply, int) and reply == _NO_INDEX


def route_args(
    layout: k.KeyLayout,
    namespace: str,
    agent_type: str,
    capabilities: Sequence[str],
    *,
    seed: int | None = None,
    key: str | None = None,
    among: Sequence[str] | None = None,
) -> list[str | int]:
    """``scripts.ROUTE``'s ARGV for a question (its KEYS: ``layout.current`` and the question's counter)."""
    extra = k.route_sets(namespace, capabilities)
    if among is not None:
        source = ["ids", *among]
    else:
        source = ["sets", *k.query_sets(namespace, agent_type, capabilities, "healthy")]
    return [
        layout.generations,
        ROUTE_COUNTER_SECONDS,
        key or "",
        random.randrange(1, SEED_LIMIT) if seed is None else seed,
        extra.load_reporting,
        extra.full,
        len(extra.degraded),
        *extra.degraded,
        *source,
    ]


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
        self._card = redis.register_script(scripts.CARD)
        self._route = redis.register_script(scripts.ROUTE)
        self._is_intact = redis.register_script(scripts.IS_INTACT)
        self._parsed = _ParsedRecords()
        self._shared = _SharedReads()

    async def get(self, agent_id: str) -> IndexedAgent | None:
        with translated_errors():
            reply = await self._get(keys=[self.layout.current], args=[self.layout.generations, agent_id])
            return self._one(reply)

    async def get_with_wire(self, agent_id: str) -> tuple[IndexedAgent, bytes] | None:
        """As ``get``, with the REST ``Agent`` already serialised (an answer by id sends it as it is)."""
        with translated_errors():
            reply = await self._get(keys=[self.layout.current], args=[self.layout.generations, agent_id])
            record = self._one(reply)
            return None if record is None else (record, self._parsed.listed(reply).wire)

    async def get_by_name(self, namespace: str, name: str) -> IndexedAgent | None:
        with translated_errors():
            reply = await self._get_by_name(
                keys=[self.layout.current], args=[self.layout.generations, k.name_field(namespace, name)]
            )
            return self._one(reply)

    async def card(self, agent_id: str) -> tuple[IndexedAgent, str | None] | None:
        """The agent's record and its card's canonical JSON (None: no card); None when the index lacks the agent."""
        with translated_errors():
            reply = await self._card(keys=[self.layout.current], args=[self.layout.generations, agent_id])
        if _no_index(reply):
            raise IndexLost("no index in redis")
        if reply is None:
            return None
        record = self._parsed.parse(reply[0])
        return record, (text(reply[1]) if len(reply) > 1 else None)

    async def query(
        self,
        namespace: str | None,
        type: str | None = None,
        capabilities: Sequence[str] = (),
        status: str | None = None,
        skills: Sequence[str] = (),
    ) -> list[IndexedAgent]:
        """Agents matching every given filter (all ``capabilities`` and ``skills`` must
        match), sorted by name; ``namespace=None`` means all namespaces."""
        listing = await self.query_listed(namespace, type, capabilities, status, skills)
        return [self._parsed.parse(entry.raw) for entry in listing.entries]

    async def query_listed(
        self,
        namespace: str | None,
        type: str | None = None,
        capabilities: Sequence[str] = (),
        status: str | None = None,
        skills: Sequence[str] = (),
    ) -> Listing:
        """As ``query``, each record with its wire form; concurrent callers asking the same
        question may share one read and one answer (do not change it)."""
        if not self._valid_scope(namespace):
            return Listing([])
        sets = k.query_sets(namespace, type, capabilities, status, skills)
        return await self._shared.read(tuple(sorted(sets)), lambda: self._listing(sets))

    async def query_cards(
        self,
        namespace: str | None,
        type: str | None = None,
        capabilities: Sequence[str] = (),
        status: str | None = None,
        skills: Sequence[str] = (),
    ) -> list[Carded]:
        """The agents ``query`` would return that have a card, each with its card, sorted by name."""
        if not self._valid_scope(namespace):
            return []
        sets = k.query_sets(namespace, type, capabilities, status, skills)
        with translated_errors():
            reply = await self._query(keys=[self.layout.current], args=[self.layout.generations, "cards", *sets])
            if _no_index(reply):
                raise IndexLost("no index in redis")
            pairs = zip(reply[::2], reply[1::2], strict=True)  # the script answers record, card, record, card, ...
            found = [Carded(self._parsed.listed(raw), text(card)) for raw, card in pairs]
        found.sort(key=lambda entry: (entry.listed.name, entry.listed.namespace))
        return found

    async def _listing(self, sets: Sequence[str]) -> Listing:
        with translated_errors():
            reply = await self._query(keys=[self.layout.current], args=[self.layout.generations, "records", *sets])
            if _no_index(reply):
                raise IndexLost("no index in redis")
            entries = [self._parsed.listed(raw) for raw in reply]
        entries.sort(key=lambda entry: (entry.name, entry.namespace))
        return Listing(entries)

    async def route(
        self,
        namespace: str,
        agent_type: str,
        capabilities: Sequence[str],
        *,
        seed: int | None = None,
        key: str | None = None,
        among: Sequence[str] | None = None,
    ) -> Picked | None:
        """One healthy agent of the type with every capability usable (``scripts.ROUTE``
        says how it is chosen: free over full, healthy over degraded capabilities, then the
        sticky ``key``, the load, or round robin); None when none matches.

        ``among`` gives the candidates' ids instead of the sets (the caller filtered them
        itself); ``seed`` is the caller's random draw, in [1, 2**31 - 2] (a fresh one when not given)."""
        if not self._valid_scope(namespace):
            return None
        with translated_errors():
            reply = await self._route(
                keys=[self.layout.current, self.layout.route_counter(namespace, agent_type, capabilities)],
                args=route_args(self.layout, namespace, agent_type, capabilities, seed=seed, key=key, among=among),
            )
            if _no_index(reply):
                raise IndexLost("no index in redis")
            if reply is None:
                return None
            picked_id, raw = reply[0], reply[1] if len(reply) > 1 else None
            return Picked(text(picked_id), None if raw is None else self._parsed.listed(raw))

    async def count(
        self,
        namespace: str | None,
        type: str | None = None,
        capabilities: Sequence[str] = (),
        status: str | None = None,
        skills: Sequence[str] = (),
    ) -> int:
        """How many agents ``query`` would return, without fetching them."""
        if not self._valid_scope(namespace):
            return 0
        with translated_errors():
            reply = await self._query(
                keys=[self.layout.current],
                args=[self.layout.generations, "count", *k.query_sets(namespace, type, capabilities, status, skills)],
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
