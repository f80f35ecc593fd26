"""What this process wrote lately, so its clients read their writes back before the index has them.

The operator owns the index and updates it from its watch, normally within milliseconds
of a write; until then the index lacks a new agent or shows an old version. The facade
remembers the object the API server returned for each of its writes (or that it deleted
one) and prefers it while the index is older, for at most ``read_your_writes_seconds``.

Every query walks the writes of its namespace, so only writes that can change a query's
answer are kept for queries: registrations, deletes, and heartbeats that change the phase
or the metadata. A routine heartbeat (same status, no metadata) only moves ``last_seen``;
keeping it cost each query one look at every heartbeat of the last few seconds (at 333
heartbeats/s, most of a query's CPU: see docs/performance.md). ``GET /agents/{id}`` still
sees every write.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

_MAX_ENTRIES = 50_000


@dataclass(eq=False)
class RecentWrite:
    agent_id: str
    namespace: str
    name: str
    resource: dict[str, Any] | None
    """The object as the API server returned it after the write; None after a delete."""
    expires: float
    in_queries: bool = True
    """Whether queries must look at this write (see the module docstring)."""
    view: Any = field(default=None, repr=False)
    """The REST view of ``resource``, computed once by ``reads.written_view``: every query
    of the namespace looks at this write while it lives."""
    view_known: bool = field(default=False, repr=False)
    card: Any = field(default=None, repr=False)
    """The agent's card in ``resource``, validated once by ``cards.written_card``."""
    card_known: bool = field(default=False, repr=False)

    @property
    def deleted(self) -> bool:
        return self.resource is None

    @property
    def resource_version(self) -> str:
        return str(((self.resource or {}).get("metadata") or {}).get("resourceVersion", ""))


class RecentWrites:
    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self._by_id: OrderedDict[str, RecentWrite] = OrderedDict()
        self._renewals: OrderedDict[str, tuple[datetime, float]] = OrderedDict()
        """agent id -> (when its Lease was renewed, expiry): heartbeats that wrote no Agent."""
        self._by_namespace: dict[str, dict[str, RecentWrite]] = {}
        self.last_write = 0.0
        """When this process last wrote (``time.monotonic()``), for reads that must not predate it."""

    def wrote(
        self, agent_id: str, namespace: str, name: str, resource: dict[str, Any], *, changes_queries: bool = True
    ) -> None:
        """Remember a write; ``changes_queries=False`` for one no query can tell apart from the
        version before it. A write that replaces one queries still need (a registration the
        index has not caught up with) stays visible to them."""
        previous = self.get(agent_id)
        in_queries = changes_queries or (previous is not None and previous.in_queries and not previous.deleted)
        self._put(RecentWrite(agent_id, namespace, name, _slim(resource), time.monotonic() + self.ttl, in_queries))

    def renewed(self, agent_id: str, at: datetime) -> None:
        """A heartbeat renewed the agent's Lease and wrote nothing else: only ``last_seen`` moved."""
        if self.ttl <= 0:
            return
        self._renewals.pop(agent_id, None)
        self._renewals[agent_id] = (at, time.monotonic() + self.ttl)
        while len(self._renewals) > _MAX_ENTRIES:
            self._renewals.popitem(last=False)

    def renewed_at(self, agent_id: str) -> datetime | None:
        entry = self._renewals.get(agent_id)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            del self._renewals[agent_id]
            return None
        return entry[0]

    def deleted(self, agent_id: str, namespace: str, name: str) -> None:
        self._put(RecentWrite(agent_id, namespace, name, None, time.monotonic() + self.ttl))

    def forget(self, agent_id: str) -> None:
        self._renewals.pop(agent_id, None)
        entry = self._by_id.pop(agent_id, None)
        if entry is not None:
            self._by_namespace.get(entry.namespace, {}).pop(agent_id, None)

    def get(self, agent_id: str) -> RecentWrite | None:
        entry = self._by_id.get(agent_id)
        if entry is not None and entry.expires < time.monotonic():
            self.forget(agent_id)
            return None
        return entry

    def in_namespace(self, namespace: str) -> Iterator[RecentWrite]:
        """The live writes in ``namespace`` that queries must look at."""
        now = time.monotonic()
        entries = self._by_namespace.get(namespace, {})
        for entry in list(entries.values()):
            if entry.expires < now:
                self.forget(entry.agent_id)
            else:
                yield entry

    def _put(self, entry: RecentWrite) -> None:
        self.last_write = time.monotonic()
        if self.ttl <= 0:
            return
        self.forget(entry.agent_id)
        self._by_id[entry.agent_id] = entry
        if entry.in_queries:
            self._by_namespace.setdefault(entry.namespace, {})[entry.agent_id] = entry
        while len(self._by_id) > _MAX_ENTRIES:
            oldest = next(iter(self._by_id))
            self.forget(oldest)


def _slim(resource: dict[str, Any]) -> dict[str, Any]:
    """What a view needs, without managedFields and annotations, which can be most of an object."""
    meta = {k: v for k, v in (resource.get("metadata") or {}).items() if k not in ("managedFields", "annotations")}
    return {**resource, "metadata": meta}


def is_older(index_version: str, written_version: str) -> bool:
    """Whether the index's copy predates what this process wrote.

    resourceVersions are opaque by contract, but every API server backed by etcd issues
    increasing integers; when either is not one, assume the index is behind (the written
    copy is at most ``read_your_writes_seconds`` old).
    """
    try:
        return int(index_version) < int(written_version)
    except ValueError:
        return index_version != written_version
