"""The real operator as a subprocess with test settings, and heartbeats written like a sidecar's."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent_registry import kubeapi
from agent_registry.kubeapi import paths
from agent_registry.kubeapi.sync import SyncApi
from agent_registry.localcluster.launcher import OperatorProcess
from agent_registry.localcluster.process import wait_for
from agent_registry.schema import constants as c
from agent_registry.schema import lease
from agent_registry.schema.card import StoredCard


def key_prefix(namespace: str) -> str:
    """The index prefix of a test's namespace; the operator writes under it and the facade reads it."""
    return f"test-{namespace}"


def operator_for_test(
    kubeconfig: Path, namespace: str, redis_url: str, log_dir: Path, identity: str = "op-a", **settings: Any
) -> OperatorProcess:
    """An operator watching one namespace, quick enough for tests: a sweep every 0.5 s, a
    lease that changes hands within seconds. ``settings`` override by field name."""
    timings: dict[str, Any] = {
        "sweep_interval_seconds": 0.5,
        "index_refresh_seconds": 1,
        "lease_duration_seconds": 4,
        "lease_renew_seconds": 1,
    }
    return OperatorProcess(
        log_dir,
        name=f"operator-{identity}",
        kubeconfig=kubeconfig,
        redis_url=redis_url,
        namespaces=[namespace],
        redis_key_prefix=key_prefix(namespace),
        stop_grace_seconds=15,
        lease_namespace=namespace,
        identity=identity,
        **(timings | settings),
    )


class Agents:
    """Agent objects in one namespace through the real API server, as plain dicts."""

    def __init__(self, api: SyncApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.sequence: dict[str, int] = {}

    def path(self, name: str | None = None, subresource: str | None = None) -> str:
        return paths.agents(self.namespace, name, subresource)

    def create(self, name: str, *, owner_references: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": name}
        if owner_references:
            metadata["ownerReferences"] = owner_references
        body = {
            "apiVersion": c.API_VERSION,
            "kind": c.KIND,
            "metadata": metadata,
            "spec": {"type": "cost", "host": "10.0.0.1", "port": 8000, **spec},
        }
        return self.api.create(self.path(), body)

    def get(self, name: str) -> dict[str, Any] | None:
        return self.api.get(self.path(name))

    def list(self) -> list[dict[str, Any]]:
        return self.api.list(self.path())

    def phase(self, name: str) -> str | None:
        obj = self.get(name)
        return (obj or {}).get("status", {}).get("phase")

    def heartbeat(
        self, name: str, status: str = "healthy", skew: timedelta = timedelta(0), timeout: float | None = None
    ) -> None:
        """What the sidecar writes: only the heartbeat fields, on the writer's own clock.

        With ``timeout``, a stalled API server makes the call fail instead of hang, so a
        pump keeps trying every interval as a sidecar does."""
        self.sequence[name] = self.sequence.get(name, 0) + 1
        stamp = (datetime.now(UTC) + skew).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "status": {
                "lastHeartbeatTime": stamp,
                "heartbeatSequence": self.sequence[name],
                "reportedStatus": status,
                "heartbeatSource": "test",
            }
        }
        self.api.merge_patch(self.path(name, "status"), body, timeout=timeout)

    def store_card(self, name: str, card: dict[str, Any]) -> None:
        """What the sidecar writes for a card it fetched and validated."""
        self.api.merge_patch(self.path(name, "status"), {"status": StoredCard.validated(card).status_fields()})

    def renew(self, name: str, skew: timedelta = timedelta(0), timeout: float | None = None) -> None:
        """What a sidecar's heartbeat writes now: a renewal of the agent's Lease, created
        (owned by the Agent) when missing. ``renewTime`` is on the writer's clock, ``skew`` off."""
        spec = lease.renewal("test", 3, datetime.now(UTC) + skew)
        agent = self.get(name)
        assert agent is not None, f"no Agent {name}"
        uid = agent["metadata"]["uid"]
        try:
            self.api.merge_patch(self.lease_path(name), lease.renewal_patch(name, uid, spec), timeout=timeout)
        except kubeapi.NotFound:
            body = lease.build_lease(self.namespace, name, uid, spec)
            self.api.create(paths.leases(self.namespace), body, timeout=timeout)

    def lease_path(self, name: str) -> str:
        return paths.leases(self.namespace, lease.lease_name(name))

    def lease(self, name: str) -> dict[str, Any] | None:
        return self.api.get(self.lease_path(name))

    def renew_time(self, name: str) -> str | None:
        """The agent's Lease's ``renewTime``, None without a Lease."""
        found = self.lease(name)
        return ((found or {}).get("spec") or {}).get("renewTime")

    def beat_marker(self, name: str) -> tuple[int, str]:
        """Changes with every heartbeat, whichever way it came: the status's sequence, the Lease's renewTime."""
        status = (self.get(name) or {}).get("status") or {}
        return int(status.get("heartbeatSequence") or 0), self.renew_time(name) or ""

    def wait_beats(self, name: str, count: int = 1, timeout: float = 30) -> None:
        """Wait until ``count`` more heartbeats of ``name`` have landed (as Lease renewals or status patches)."""
        seen = [self.beat_marker(name)]

        def more() -> bool:
            current = self.beat_marker(name)
            if current != seen[-1]:
                seen.append(current)
            return len(seen) > count

        wait_for(f"{count} more heartbeats of {name}", more, timeout=timeout)

    def delete_lease(self, name: str) -> None:
        self.api.delete(self.lease_path(name))

    def delete(self, name: str) -> None:
        self.api.delete(self.path(name))

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The namespace's core Events, those about ``name`` only when given."""
        events = self.api.list(paths.events(self.namespace))
        return [e for e in events if name is None or e.get("involvedObject", {}).get("name") == name]

    def reasons(self, name: str | None = None) -> list[str]:
        return [str(e.get("reason")) for e in self.events(name)]


class HeartbeatPump:
    """Heartbeats a set of agents every ``interval`` seconds from a thread, like sidecars:
    status patches as older writers do, or Lease renewals with ``by_lease``."""

    def __init__(
        self, agents: Agents, names: Iterable[str], interval: float = 0.5, by_lease: bool = False, **kwargs: Any
    ) -> None:
        self.agents = agents
        self.beat = agents.renew if by_lease else agents.heartbeat
        self.names = set(names)
        self.interval = interval
        self.kwargs = kwargs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.errors: list[Exception] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in list(self.names):
                try:
                    self.beat(name, **self.kwargs)
                except Exception as exc:
                    self.errors.append(exc)
            self._stop.wait(self.interval)

    def __enter__(self) -> HeartbeatPump:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
