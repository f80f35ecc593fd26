"""The benchmark's fleet: N Agent objects, their heartbeats, and watching their phases.

Fleet shape: agent *i* is ``agent-<i>``, of type ``cost|performance|resource|application``
by ``i % 4``, with two capabilities: ``common`` (every agent of the type) and one of a
vocabulary sized so that a (type, capability) pair selects about ``matches`` agents at
any N. So there are two discovery questions: a *selective* one (type + rare capability,
~``matches`` answers at every N) and a *broad* one (type + ``common``, N/4 answers).

Heartbeats follow the production timing by default (every 30 s, Unreachable after 45 s
of silence): agent *i* beats at ``i/N`` of the interval, so the fleet writes N/30 per
second evenly. In the ``mixed`` route, even agents beat through the facade
(``POST /agents/{id}/heartbeat``) and odd ones write directly to the API server; in the
``direct`` route all of them write directly. What a direct heartbeat writes is the
``writer``'s choice:

* ``lease``, the sidecar since Leases (``agent_sidecar.runner``): a merge-patch of the
  agent's Lease, no read first (``schema.lease.renewal_patch``), and a status patch with
  the heartbeat fields only when the status refresh is due (every ``status_refresh``
  seconds; the report never changes here). The Leases are created once beforehand
  (``create_agent_leases``), so a 404 is a failure, not a first heartbeat.
* ``status``, the sidecar before Leases: a merge-patch of the Agent's status with the
  heartbeat fields, every heartbeat.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from agent_registry.kubeapi import paths
from agent_registry.schema import constants as c
from agent_registry.schema import lease
from agent_registry.schema.agent import ReportedStatus
from agent_sidecar.kube import FIELD_MANAGER as SIDECAR_FIELD_MANAGER
from agent_sidecar.payloads import build_heartbeat
from bench.load import Recorder, fixed_rate, request, timed
from bench.stack import progress

SAMPLE_LABEL = "bench.registry.optiinfra.io/sample"
MERGE_PATCH = "application/merge-patch+json"
AGENTS_PATH = f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{{ns}}/{c.PLURAL}"
LEASES_PATH = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
# Who the direct heartbeats claim to be (``heartbeatSource``, the Lease's ``holderIdentity``).
SOURCE = "sidecar/bench"
SIDECAR_PARAMS = {"fieldManager": SIDECAR_FIELD_MANAGER}
# What a direct heartbeat writes (``Heartbeats.writer``).
STATUS = "status"
LEASE = "lease"
# Spreads agents' status refreshes over the refresh interval (a golden-ratio sequence).
_SPREAD = 0.6180339887498949


@dataclass(frozen=True)
class Timing:
    interval: int = 30
    unreachable_after: int = 45
    gc_after: int = 3600
    """Longer than any run: collection is not under test, and a collected agent's next
    heartbeat would be a 404 that looks like a lost heartbeat."""


@dataclass
class Fleet:
    n: int
    namespace: str
    timing: Timing
    matches: int = 20
    sample_size: int = 30
    names: list[str] = field(init=False)
    ids: list[str] = field(init=False)
    uids: list[str] = field(init=False)
    """Each Agent's ``metadata.uid``, once created: a Lease's owner reference names it."""
    types: list[str] = field(init=False)
    capabilities: list[list[str]] = field(init=False)
    sample: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.vocabulary = max(1, round(self.n / len(c.KNOWN_AGENT_TYPES) / self.matches))
        self.names = [f"agent-{i:05d}" for i in range(self.n)]
        self.ids = [str(uuid.uuid4()) for _ in range(self.n)]
        self.uids = [""] * self.n
        self.types = [c.KNOWN_AGENT_TYPES[i % len(c.KNOWN_AGENT_TYPES)] for i in range(self.n)]
        self.capabilities = [["common", f"c{(i // len(c.KNOWN_AGENT_TYPES)) % self.vocabulary}"] for i in range(self.n)]
        size = min(self.sample_size, max(1, self.n // 20))
        step = self.n // size
        # Alternate even and odd agents, so the sample beats through both routes.
        self.sample = sorted({min(self.n - 1, k * step + (k % 2)) for k in range(size)})

    @property
    def selective_query(self) -> dict[str, str]:
        return {"type": self.types[0], "capability": self.capabilities[0][1]}

    @property
    def broad_query(self) -> dict[str, str]:
        return {"type": self.types[0], "capability": "common"}

    def expected_matches(self, query: dict[str, str]) -> int:
        return sum(
            1
            for t, caps in zip(self.types, self.capabilities, strict=True)
            if t == query["type"] and query["capability"] in caps
        )

    def body(self, i: int) -> dict[str, Any]:
        labels = {c.AGENT_ID_LABEL: self.ids[i], c.AGENT_TYPE_LABEL: self.types[i]}
        if i in self._sample_set:
            labels[SAMPLE_LABEL] = "true"
        return {
            "apiVersion": c.API_VERSION,
            "kind": c.KIND,
            # The id label is set at creation, as the facade's registration does: the operator adopts it.
            "metadata": {"name": self.names[i], "labels": labels},
            "spec": {
                "type": self.types[i],
                "host": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                "port": 8000 + i % 1000,
                "capabilities": self.capabilities[i],
                "version": "1.0.0",
                "heartbeat": {
                    "intervalSeconds": self.timing.interval,
                    "unreachableAfterSeconds": self.timing.unreachable_after,
                    "gcAfterSeconds": self.timing.gc_after,
                },
            },
        }

    @property
    def _sample_set(self) -> set[int]:
        cached: set[int] | None = getattr(self, "_sample_cache", None)
        if cached is None:
            cached = set(self.sample)
            self._sample_cache = cached
        return cached


async def create_agents(api: Any, fleet: Fleet, concurrency: int = 32) -> dict[str, Any]:
    """Create every Agent through the API server, ``concurrency`` at a time."""
    path = AGENTS_PATH.format(ns=fleet.namespace)
    recorder = Recorder("create")
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(fleet.n):
        queue.put_nowait(i)
    step = max(1, fleet.n // 10)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = fleet.body(i)
            for _ in range(5):
                ok, answer = await timed(recorder, lambda b=body: request(api, "POST", path, json_body=b), expect=201)
                if ok:
                    fleet.uids[i] = str(json.loads(answer)["metadata"]["uid"])
                    break
                if b"AlreadyExists" in answer:  # an earlier attempt timed out after the write
                    fleet.uids[i] = await _agent_uid(api, fleet, i)
                    break
                if b'"reason":"Invalid"' in answer:  # the fleet's own fault (its timing): retrying cannot help
                    raise RuntimeError(f"the API server refused agent {fleet.names[i]}: {answer.decode()[:500]}")
                await asyncio.sleep(0.5)
            if recorder.ok % step == 0 and recorder.ok:
                progress(f"  created {recorder.ok}/{fleet.n} agents")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    recorder.close()
    return recorder.summary()


async def _agent_uid(api: Any, fleet: Fleet, i: int) -> str:
    status, answer = await request(api, "GET", f"{AGENTS_PATH.format(ns=fleet.namespace)}/{fleet.names[i]}")
    return str(json.loads(answer)["metadata"]["uid"]) if status == 200 else ""


async def create_agent_leases(
    api: Any, fleet: Fleet, registered_by: str | None, concurrency: int = 32
) -> dict[str, Any]:
    """Each agent's Lease, as the sidecar creates it on its first heartbeat (``schema.lease.build_lease``:
    named after the Agent, labelled for the operator's watch, owned by the Agent)."""
    recorder = Recorder("create-agent-leases")
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(fleet.n):
        queue.put_nowait(i)
    path = paths.leases(fleet.namespace)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            spec = lease.renewal(SOURCE, fleet.timing.unreachable_after, datetime.now(UTC))
            body = lease.build_lease(fleet.namespace, fleet.names[i], fleet.uids[i], spec, registered_by)
            for _ in range(5):
                ok, answer = await timed(
                    recorder,
                    lambda b=body: request(api, "POST", path, json_body=b, params=SIDECAR_PARAMS),
                    expect=201,
                )
                if ok or b"AlreadyExists" in answer:
                    break
                await asyncio.sleep(0.5)

    missing = [fleet.names[i] for i in range(fleet.n) if not fleet.uids[i]]
    if missing:
        raise RuntimeError(f"{len(missing)} agents have no known uid (e.g. {missing[0]}); their Leases need one")
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    recorder.close()
    return recorder.summary()


class AgentWatch:
    """One watch on Agents (optionally by label): each agent's last phase, and when it was
    first seen Unreachable. Without a resourceVersion the API server starts the watch with
    an ADDED event for every existing object, so no separate LIST is needed."""

    def __init__(self, api: Any, namespace: str, label_selector: str | None = None) -> None:
        self.api = api
        self.path = AGENTS_PATH.format(ns=namespace)
        self.label_selector = label_selector
        self.phases: dict[str, str | None] = {}
        self.unreachable_at: dict[str, float] = {}
        self.events = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> AgentWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def count(self, phase: str | None = None, *, with_phase: bool = False) -> int:
        if with_phase:
            return sum(1 for p in self.phases.values() if p)
        return sum(1 for p in self.phases.values() if p == phase)

    async def _run(self) -> None:
        resource_version: str | None = None
        while True:
            params = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "3600"}
            if self.label_selector:
                params["labelSelector"] = self.label_selector
            if resource_version:
                params["resourceVersion"] = resource_version
            try:
                async with self.api.get(self.path, params=params, timeout=aiohttp.ClientTimeout(total=None)) as resp:
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        meta = obj.get("metadata") or {}
                        resource_version = meta.get("resourceVersion", resource_version)
                        if event.get("type") == "BOOKMARK":
                            continue
                        if event.get("type") == "ERROR":
                            resource_version = None  # 410 Gone: start over with a fresh view
                            break
                        self.events += 1
                        name = meta.get("name", "")
                        if event.get("type") == "DELETED":
                            self.phases.pop(name, None)
                            continue
                        phase = (obj.get("status") or {}).get("phase")
                        self.phases[name] = phase
                        if phase == "Unreachable" and name not in self.unreachable_at:
                            self.unreachable_at[name] = time.monotonic()
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                progress(f"  agent watch interrupted ({type(exc).__name__}: {exc}); resuming")
                await asyncio.sleep(0.5)


def _rfc3339(micro: bool = False) -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if micro else now.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class HeartbeatTotals:
    """Every heartbeat since the generator was created, whatever the phase."""

    sent: int = 0
    ok: int = 0
    failed: int = 0


class Heartbeats:
    """The fleet heartbeating at its interval, open-loop, until stopped.

    ``totals`` counts heartbeats (one per agent per interval). ``writes`` counts the
    acknowledged writes the operator should each observe as a heartbeat, by kind: a REST
    heartbeat is one (``facade``: the facade renews the Lease or patches the status), a
    ``lease`` heartbeat one renewal plus, when the refresh is due, one ``status`` patch.
    """

    def __init__(self, fleet: Fleet, facade: Any, api: Any, *, status_refresh: float = 300.0) -> None:
        self.fleet = fleet
        self.facade = facade
        self.api = api
        self.route = "mixed"
        self.writer = STATUS
        self.status_refresh = status_refresh
        """The sidecar's AGENT_STATUS_REFRESH_SECONDS; 0: never refresh."""
        self.silenced: set[int] = set()
        self.writes: Counter[str] = Counter()
        self._status_written: list[float | None] = [None] * fleet.n
        self.recorders = {"facade": Recorder("heartbeat-facade"), "direct": Recorder("heartbeat-direct")}
        self.totals = HeartbeatTotals()
        self.last_ack = [0.0] * fleet.n
        self.sequence = [0] * fleet.n
        self.stopped = asyncio.Event()
        self._path = AGENTS_PATH.format(ns=fleet.namespace)
        self._task: asyncio.Task[int] | None = None
        self._position = 0

    @property
    def rate(self) -> float:
        return self.fleet.n / self.fleet.timing.interval

    def start(self) -> Heartbeats:
        """Start (or resume where ``stop`` left off: the agent due next beats first)."""
        self.stopped = asyncio.Event()
        first = self._position

        async def fire(k: int, due: float) -> None:
            await self._fire(first + k, due)

        self._task = asyncio.create_task(fixed_rate(self.rate, float("inf"), fire, stop=self.stopped))
        return self

    async def stop(self) -> None:
        """Stop sending and wait for every heartbeat in flight to be answered."""
        self.stopped.set()
        if self._task is not None:
            self._position += await self._task
            self._task = None

    def new_phase(self) -> dict[str, Recorder]:
        """Close the current recorders and start new ones; returns the closed ones."""
        closed = self.recorders
        for recorder in closed.values():
            recorder.close()
        self.recorders = {"facade": Recorder("heartbeat-facade"), "direct": Recorder("heartbeat-direct")}
        return closed

    async def _fire(self, k: int, due: float) -> None:
        i = k % self.fleet.n
        if i in self.silenced:
            return
        via_facade = self.route == "mixed" and i % 2 == 0
        if via_facade:
            # A REST agent has no status refresh; should it beat directly later, it starts
            # as a sidecar would (a refresh spread over the interval), not overdue at once.
            self._status_written[i] = None
        recorder = self.recorders["facade" if via_facade else "direct"]
        recorder.send_lags.append(max(0.0, time.monotonic() - due))
        self.sequence[i] += 1
        self.totals.sent += 1
        kind = "facade" if via_facade else self.writer
        if via_facade:
            path = f"/agents/{self.fleet.ids[i]}/heartbeat"

            def call() -> Any:
                return request(self.facade, "POST", path, json_body={"status": "healthy"})

        elif self.writer == LEASE:

            def call() -> Any:
                return self._lease_heartbeat(i)

        else:
            # Exactly the sidecar's heartbeat: a merge-patch of the heartbeat fields.
            body = {
                "status": {
                    "lastHeartbeatTime": _rfc3339(),
                    "heartbeatSequence": self.sequence[i],
                    "reportedStatus": "healthy",
                    "heartbeatSource": "sidecar/bench",
                }
            }
            path = f"{self._path}/{self.fleet.names[i]}/status"

            def call() -> Any:
                return request(self.api, "PATCH", path, json_body=body, content_type=MERGE_PATCH)

        ok, _ = await timed(recorder, call)
        if ok:
            self.totals.ok += 1
            self.last_ack[i] = time.monotonic()
            if kind != LEASE:  # a Lease heartbeat counts its writes one by one
                self.writes[kind] += 1
        else:
            self.totals.failed += 1

    async def _lease_heartbeat(self, i: int) -> tuple[int, bytes]:
        """The sidecar's heartbeat (``runner._beat``): the status when due, then the Lease."""
        now = datetime.now(UTC)
        name, uid = self.fleet.names[i], self.fleet.uids[i]
        if self._status_due(i):
            body = build_heartbeat(now, self.sequence[i], ReportedStatus.HEALTHY, SOURCE)
            status, answer = await request(
                self.api,
                "PATCH",
                f"{self._path}/{name}/status",
                json_body=body,
                content_type=MERGE_PATCH,
                params=SIDECAR_PARAMS,
            )
            if status != 200:
                return status, answer
            self.writes[STATUS] += 1
            self._status_written[i] = time.monotonic()
        spec = lease.renewal(SOURCE, self.fleet.timing.unreachable_after, now)
        status, answer = await request(
            self.api,
            "PATCH",
            paths.leases(self.fleet.namespace, lease.lease_name(name)),
            json_body=lease.renewal_patch(name, uid, spec),
            content_type=MERGE_PATCH,
            params=SIDECAR_PARAMS,
        )
        if status == 200:
            self.writes[LEASE] += 1
        return status, answer

    def _status_due(self, i: int) -> bool:
        """The sidecar's rule, with the report unchanged: due ``status_refresh`` seconds after
        the last status write. An agent's first Lease heartbeat places its last write a
        fraction of the refresh interval back, as in a fleet that has run for a while, so
        the refreshes are spread evenly (N / refresh per second) from the start."""
        if self.status_refresh <= 0:
            return False
        now = time.monotonic()
        written = self._status_written[i]
        if written is None:
            self._status_written[i] = now - (i * _SPREAD % 1.0) * self.status_refresh
            return False
        return now - written >= self.status_refresh


async def create_leases(api: Any, namespace: str, n: int, concurrency: int = 32) -> dict[str, Any]:
    """One Lease per agent, shaped like a kubelet's node Lease."""
    path = LEASES_PATH.format(ns=namespace)
    recorder = Recorder("create-leases")
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": f"agent-{i:05d}"},
                "spec": {"holderIdentity": f"agent-{i:05d}", "leaseDurationSeconds": 45, "renewTime": _rfc3339(True)},
            }
            await timed(recorder, lambda b=body: request(api, "POST", path, json_body=b), expect=201)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    recorder.close()
    return recorder.summary()


class LeaseRenewals:
    """The same heartbeat load as Lease renewals: a merge-patch of ``spec.renewTime``."""

    def __init__(self, api: Any, namespace: str, n: int, interval: float) -> None:
        self.api = api
        self.n = n
        self.rate = n / interval
        self.path = LEASES_PATH.format(ns=namespace)
        self.recorder = Recorder("lease-renewal")

    async def run(self, seconds: float) -> dict[str, Any]:
        async def fire(k: int, due: float) -> None:
            i = k % self.n
            self.recorder.send_lags.append(max(0.0, time.monotonic() - due))
            body = {"spec": {"renewTime": _rfc3339(True), "holderIdentity": f"agent-{i:05d}"}}
            await timed(
                self.recorder,
                lambda: request(
                    self.api, "PATCH", f"{self.path}/agent-{i:05d}", json_body=body, content_type=MERGE_PATCH
                ),
            )

        await fixed_rate(self.rate, seconds, fire)
        self.recorder.close()
        return self.recorder.summary()


async def drain_watch(api: Any, path: str, stop: asyncio.Event, label_selector: str | None = None) -> int:
    """A watcher that reads and drops events (as the node lifecycle controller's informer
    would consume Leases), optionally by label; returns how many lines it read."""
    events = 0
    params = {"watch": "1", "timeoutSeconds": "3600"}
    if label_selector:
        params["labelSelector"] = label_selector
    async with api.get(path, params=params, timeout=aiohttp.ClientTimeout(total=None)) as resp:
        while not stop.is_set():
            try:
                line = await asyncio.wait_for(resp.content.readline(), timeout=0.5)
            except TimeoutError:
                continue
            if not line:
                break
            events += 1
    return events
