"""The HTTP facade as a real uvicorn subprocess on loopback, with test settings.

The fixtures built on it live in ``facade_fixtures``, which ``tests/conftest.py`` loads.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from agent_registry.index import IndexedAgent, IndexReader, IndexUnavailable, connect
from agent_registry.localcluster.launcher import FacadeProcess, HeartbeatTimings
from operator_harness import key_prefix

# The operator's heartbeat timings for tests: Unreachable after 3 s of silence, kept long
# enough that nothing is garbage-collected while a test looks at it.
FAST_TIMINGS = HeartbeatTimings(interval_seconds=1, unreachable_after_seconds=3, gc_after_seconds=600)


def facade_for_test(
    kubeconfig: Path,
    namespace: str,
    redis_url: str,
    log_dir: Path,
    *,
    auth: bool | None = False,
    name: str = "facade",
    **settings: Any,
) -> FacadeProcess:
    """A facade serving the test's namespace and reading the index the test's operator writes.

    Authentication is off unless asked for; ``auth=None`` leaves the facade's own default.
    ``settings`` override by field name (``port``, ``metrics_port`` and ``timings`` included).
    """
    return FacadeProcess(
        log_dir,
        name=name,
        kubeconfig=kubeconfig,
        redis_url=redis_url,
        namespace=namespace,
        redis_key_prefix=key_prefix(namespace),
        auth=auth,
        stop_grace_seconds=25,
        **({"shutdown_timeout_seconds": 20} | settings),
    )


def index_built(facade: FacadeProcess, timeout: float = 60.0) -> FacadeProcess:
    """Wait until the facade reads an intact index (``GET /ready`` checks ``index``): the
    operator has built it. A 200 alone is not that: a facade whose API server answers is
    ready (degraded) before any index exists.

    Until then reads come from the API server, and the operator's first build goes live with
    a relist on every watch (``index.changes``); a test that expects one event per change
    must not open its watch before that."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=facade.url, trust_env=False, timeout=5) as http:
        while True:
            try:
                response = http.get("/ready")
                if response.status_code == 200 and response.json()["checks"]["index"]["ok"]:
                    return facade
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the facade read no intact index within {timeout} s")
            time.sleep(0.2)


def registration(name: str, **fields: Any) -> dict[str, Any]:
    """A valid ``RegistrationRequest`` body."""
    body: dict[str, Any] = {
        "name": name,
        "type": "cost",
        "host": "10.0.0.7",
        "port": 8001,
        "capabilities": ["spot_migration", "rightsizing"],
        "version": "1.2.3",
    }
    body.update(fields)
    return body


def assert_error(response: httpx.Response, status: int, *mentions: str) -> None:
    """The facade's JSON error: ``status``, and a message that names each of ``mentions``."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for mention in mentions:
        assert mention in error, (mention, error)


def unchanged_for(http: httpx.Client, path: str, seconds: float) -> bool:
    """Whether ``path`` answers the same twice ``seconds`` apart: the operator indexes a new
    agent, then its observed heartbeat (``last_seen`` on its own clock), so two asks close
    together may see two versions until it has."""
    before = http.get(path).json()
    time.sleep(seconds)
    return bool(http.get(path).json() == before)


def indexed(redis_url: str, namespace: str, agent_id: str) -> IndexedAgent | None:
    """The agent's record as the index holds it, read straight from Redis (None: not there, or no Redis)."""

    async def read() -> IndexedAgent | None:
        reader = IndexReader(connect(redis_url), prefix=key_prefix(namespace))
        try:
            return await reader.get(agent_id)
        except IndexUnavailable:
            return None
        finally:
            await reader.redis.aclose()

    return asyncio.run(read())
