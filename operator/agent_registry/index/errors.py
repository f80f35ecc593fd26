"""What the index raises. Callers catch ``IndexUnavailable`` and fall back to the API server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pydantic import ValidationError
from redis.exceptions import RedisError


class IndexUnavailable(Exception):  # noqa: N818 - the name reads as the condition callers handle
    """The index cannot answer: Redis is down, slow, or holds something unreadable."""


class IndexLost(IndexUnavailable):
    """Redis answers but holds no index (never built, FLUSHALL, restart, expiry).

    The operator answers with a full resync; readers treat it like any other outage.
    """


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Turn every way Redis can fail into ``IndexUnavailable``.

    redis-py raises its own errors for most failures but lets ``OSError`` and
    ``TimeoutError`` escape from some connection paths; a record that no longer parses
    (another version wrote it) is as useless as an outage.
    """
    try:
        yield
    except IndexUnavailable:
        raise
    except (RedisError, OSError, TimeoutError) as exc:
        raise IndexUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
    except ValidationError as exc:
        raise IndexUnavailable(f"unreadable index record: {exc}") from exc
