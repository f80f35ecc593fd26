"""The index's fixtures: a client, a writer over an empty intact index, and a reader on its own connection."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.helpers.index_records import TTL

from agent_registry.index import IndexReader, IndexWriter, connect
from agent_registry.index.reader import RedisClient


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RedisClient]:
    redis = connect(redis_url)
    yield redis
    await redis.aclose()


@pytest.fixture
async def writer(client: RedisClient) -> AsyncIterator[IndexWriter]:
    index = IndexWriter(client, ttl_seconds=TTL)
    await index.replace_all([])  # an empty, intact index, as after the operator's first resync
    yield index
    await index.drain()


@pytest.fixture
async def reader(redis_url: str) -> AsyncIterator[IndexReader]:
    """A reader on its own connection, as the facade has."""
    redis = connect(redis_url)
    yield IndexReader(redis)
    await redis.aclose()
