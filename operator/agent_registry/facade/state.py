"""Everything one facade process holds: settings, the API-server client, the index, and the
services built on them. Built at start-up (the app's lifespan), closed at shutdown."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from agent_registry import kubeapi
from agent_registry.facade import metrics
from agent_registry.facade.auth import Authenticator
from agent_registry.facade.cards import CardReads
from agent_registry.facade.kube import Kube
from agent_registry.facade.models import DependencyCheck, ReadyResponse
from agent_registry.facade.reads import IndexAccess, Reads
from agent_registry.facade.recent import RecentWrites
from agent_registry.facade.routing import RoundRobin
from agent_registry.facade.settings import FacadeSettings
from agent_registry.facade.watch import WAIT_SECONDS, WatchHub
from agent_registry.facade.writes import Writes
from agent_registry.index import IndexReader, IndexUnavailable
from agent_registry.index.changes import ChangeFeed
from agent_registry.index.reader import RedisClient
from agent_registry.kubeapi import StatusError, Unavailable

logger = logging.getLogger(__name__)
_CHECK_TIMEOUT_SECONDS = 3.0


def redis_client(settings: FacadeSettings) -> RedisClient:
    """The index's client settings (``connect``), with a pool that waits for a free connection.

    redis-py's default pool raises once all its connections are busy; for the facade a busy
    pool under load is not an outage, and treating it as one would send every read to the
    API server. Waiting is bounded by the same timeout as any Redis call.
    """
    timeout = settings.redis_timeout_seconds
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries=1),
        decode_responses=True,
    )
    client: RedisClient = Redis(connection_pool=pool)
    return client


def waiting_redis_client(settings: FacadeSettings) -> RedisClient:
    """The change feed's blocking reads (``WatchHub``): one connection, whose socket
    timeout outlasts the read's own wait."""
    timeout = settings.redis_timeout_seconds
    client: RedisClient = Redis.from_url(
        settings.redis_url,
        max_connections=2,
        socket_timeout=timeout + WAIT_SECONDS,
        socket_connect_timeout=timeout,
        decode_responses=True,
    )
    return client


class Registry:
    def __init__(
        self,
        settings: FacadeSettings,
        kube: Kube,
        reader: IndexReader | None,
        waiting: RedisClient | None = None,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.reader = reader
        self.recent = RecentWrites(settings.read_your_writes_seconds)
        self.index = IndexAccess(reader, settings.redis_retry_seconds)
        self.auth = Authenticator(kube, settings)
        self.reads = Reads(kube, self.index, self.recent, RoundRobin(), random.Random(settings.route_seed))
        self.cards = CardReads(self.reads)
        self.writes = Writes(kube, self.auth, self.recent, settings)
        self.waiting = waiting
        feed = None if reader is None else ChangeFeed(reader.redis, reader.layout, waiting)
        self.watches = WatchHub(feed, max_open=settings.watch_max_open, buffer_events=settings.watch_buffer_events)

    @classmethod
    def from_settings(cls, settings: FacadeSettings) -> Registry:
        kube = Kube(kubeapi.load(settings.kubeconfig), settings.kube_timeout_seconds)
        reader = IndexReader(redis_client(settings), prefix=settings.redis_key_prefix)
        return cls(settings, kube, reader, waiting_redis_client(settings))

    async def aclose(self) -> None:
        await self.watches.aclose()
        if self.waiting is not None:
            await self.waiting.aclose()
        await self.kube.aclose()
        if self.reader is not None:
            redis: Any = self.reader.redis
            await redis.aclose(close_connection_pool=True)  # a pool passed in is not closed by default

    async def readiness(self) -> ReadyResponse:
        kube, (redis, index) = await asyncio.gather(self._check_kube(), self._check_index())
        metrics.DEPENDENCY_UP.labels(dependency="kubernetes").set(1 if kube.ok else 0)
        metrics.DEPENDENCY_UP.labels(dependency="redis").set(1 if redis.ok else 0)
        metrics.DEPENDENCY_UP.labels(dependency="index").set(1 if index.ok else 0)
        if kube.ok and index.ok:
            status = "ready"
        elif kube.ok or index.ok:
            status = "degraded"
        else:
            status = "unavailable"
        return ReadyResponse(
            status=status,
            checks={"kubernetes": kube, "redis": redis, "index": index},
            timestamp=datetime.now(UTC),
        )

    async def _check_kube(self) -> DependencyCheck:
        try:
            await asyncio.wait_for(self.kube.ping(self.settings.namespace), _CHECK_TIMEOUT_SECONDS)
        except (Unavailable, TimeoutError) as exc:
            return DependencyCheck(ok=False, error=f"unreachable: {exc or 'timed out'}")
        except StatusError as exc:
            return DependencyCheck(ok=False, error=f"cannot list agents in {self.settings.namespace!r}: {exc}")
        return DependencyCheck(ok=True)

    async def _check_index(self) -> tuple[DependencyCheck, DependencyCheck]:
        if self.reader is None:
            off = DependencyCheck(ok=False, error="no index configured")
            return off, off
        try:
            await asyncio.wait_for(self.reader.ping(), _CHECK_TIMEOUT_SECONDS)
        except (IndexUnavailable, TimeoutError) as exc:
            error = f"unreachable: {exc or 'timed out'}"
            return DependencyCheck(ok=False, error=error), DependencyCheck(ok=False, error=error)
        try:
            intact = await asyncio.wait_for(self.reader.is_intact(), _CHECK_TIMEOUT_SECONDS)
        except (IndexUnavailable, TimeoutError) as exc:
            return DependencyCheck(ok=True), DependencyCheck(ok=False, error=str(exc) or "timed out")
        if not intact:
            error = "Redis holds no intact index yet (the operator builds it); reads come from the API server"
            return DependencyCheck(ok=True), DependencyCheck(ok=False, error=error)
        return DependencyCheck(ok=True), DependencyCheck(ok=True)
