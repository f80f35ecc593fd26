"""Load generation: open-loop (fixed rate) and closed-loop (as fast as possible) request drivers.

aiohttp rather than httpx: its C-accelerated HTTP parser costs a fraction of the CPU per
request, and on a 2-core machine the load generator competes with what it measures (its
own CPU is sampled and reported as ``bench``).

Fixed-rate drivers are open-loop: request *k* is due at ``start + k / rate`` whether or
not earlier ones have answered, so a slow server cannot slow the offered load down and
hide its own latency (coordinated omission). Latency is measured from the moment the
request is handed to the client (which includes waiting for a pooled connection) to the
last byte of the answer; how late the generator itself was in sending is recorded apart
(``send_lag``), so a starved generator shows up as such.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# One attempt takes at most this long; a heartbeat that has not been answered by then is lost.
REQUEST_TIMEOUT_SECONDS = 30.0


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


@dataclass
class Recorder:
    """Outcomes and latencies of one series of requests."""

    name: str
    latencies: list[float] = field(default_factory=list)
    send_lags: list[float] = field(default_factory=list)
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    in_flight: int = 0

    @property
    def count(self) -> int:
        return self.ok + sum(self.errors.values())

    def success(self, latency: float) -> None:
        self.ok += 1
        self.latencies.append(latency)

    def failure(self, kind: str) -> None:
        self.errors[kind] += 1

    def close(self) -> None:
        self.ended = time.monotonic()

    async def settle(self, timeout: float = REQUEST_TIMEOUT_SECONDS + 5) -> None:
        """Wait until every request sent in this series has been answered (or has failed)."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def summary(self) -> dict[str, Any]:
        seconds = (self.ended or time.monotonic()) - self.started
        return {
            "requests": self.count,
            "ok": self.ok,
            "errors": dict(self.errors),
            "seconds": round(seconds, 1),
            "throughput_per_s": round(self.ok / seconds, 1) if seconds > 0 else None,
            "p50_ms": ms(percentile(self.latencies, 50)),
            "p90_ms": ms(percentile(self.latencies, 90)),
            "p99_ms": ms(percentile(self.latencies, 99)),
            "max_ms": ms(max(self.latencies) if self.latencies else None),
            "send_lag_p99_ms": ms(percentile(self.send_lags, 99)),
        }


def session(base_url: str, *, token: str | None, ssl_context: ssl.SSLContext | None, connections: int) -> Any:
    """A keep-alive client for one server; ``connections`` bounds the pool."""
    headers = {"Accept": "application/json", "User-Agent": "agent-registry-bench"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connector = aiohttp.TCPConnector(limit=connections, ssl=ssl_context if ssl_context is not None else False)
    return aiohttp.ClientSession(
        base_url=base_url,
        connector=connector,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
        trust_env=False,
    )


async def timed(
    recorder: Recorder, call: Callable[[], Awaitable[tuple[int, bytes]]], expect: int = 200
) -> tuple[bool, bytes]:
    """Run one request, record its latency or its failure; returns (ok, body)."""
    started = time.monotonic()
    recorder.in_flight += 1
    try:
        status, body = await call()
    except TimeoutError:
        recorder.failure("timeout")
        return False, b""
    except aiohttp.ClientError as exc:
        recorder.failure(type(exc).__name__)
        return False, b""
    finally:
        recorder.in_flight -= 1
    if status != expect:
        recorder.failure(f"http_{status}")
        return False, body
    recorder.success(time.monotonic() - started)
    return True, body


async def request(
    client: Any,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    content_type: str | None = None,
    params: Any = None,
    timeout: float | None = None,
) -> tuple[int, bytes]:
    headers = {"Content-Type": content_type} if content_type else None
    kwargs: dict[str, Any] = {"json": json_body, "headers": headers, "params": params}
    if timeout is not None:
        kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
    async with client.request(method, path, **kwargs) as response:
        return response.status, await response.read()


async def fixed_rate(
    rate: float,
    seconds: float,
    fire: Callable[[int, float], Awaitable[None]],
    *,
    max_in_flight: int = 2000,
    stop: asyncio.Event | None = None,
) -> int:
    """Call ``fire(k, due)`` for k = 0, 1, ... at ``rate`` per second for ``seconds`` (or until ``stop``).

    Each call runs as its own task. Past ``max_in_flight`` unanswered calls the generator
    waits (and the lateness shows in the send lag) rather than pile up tasks without bound.
    Returns how many calls were fired; waits for all of them to finish.
    """
    started = time.monotonic()
    fired = 0
    in_flight: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(max_in_flight)

    async def one(k: int, due: float) -> None:
        try:
            await fire(k, due)
        finally:
            slots.release()

    while True:
        now = time.monotonic()
        if now - started >= seconds or (stop is not None and stop.is_set()):
            break
        due_count = int((now - started) * rate) + 1
        while fired < due_count:
            await slots.acquire()
            task = asyncio.create_task(one(fired, started + fired / rate))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            fired += 1
        next_due = started + fired / rate
        await asyncio.sleep(max(0.0, min(next_due - time.monotonic(), 0.05)))
    if in_flight:
        await asyncio.gather(*list(in_flight), return_exceptions=True)
    return fired


async def closed_loop(concurrency: int, seconds: float, once: Callable[[], Awaitable[None]]) -> None:
    """``concurrency`` workers, each calling ``once`` back to back for ``seconds``."""
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            await once()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
