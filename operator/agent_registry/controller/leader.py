"""Leader election with a coordination.k8s.io Lease: two replicas, one active.

Why not kopf peering: peering pauses *every* operator of equal priority when they meet,
so a developer's stray local operator pointed at production would freeze it. A Lease has
one holder; a newcomer waits for it to expire.

Expiry is judged the way client-go does it: by when *this* process last saw the lease
record change, on its own monotonic clock, never by comparing the holder's renewTime with
the local wall clock (clock skew between nodes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from agent_registry import kubeapi
from agent_registry.controller.kube import Kube
from agent_registry.kubeapi import paths

logger = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]


def _micro_time() -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        name: str,
        namespace: str,
        identity: str,
        lease_duration: float,
        renew_period: float,
        on_started_leading: Callback,
        on_stopped_leading: Callback,
    ) -> None:
        self.api = kube.api
        self.path = paths.leases(namespace, name)
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_period = renew_period
        # A renewal that cannot finish before the lease would lapse is worthless; give up
        # on it in time to notice and step down (client-go's renew deadline, in spirit).
        self.call_timeout = max(1.0, min(kube.timeout, lease_duration - renew_period))
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.is_leader = False
        self._observed_record: tuple[str | None, str | None] | None = None
        self._observed_at = 0.0
        self._last_renewed = 0.0

    async def run(self) -> None:
        """Try to acquire, then keep renewing; never returns until cancelled."""
        try:
            while True:
                try:
                    await self._tick()
                except kubeapi.ApiError as exc:  # no answer, timeouts, error statuses
                    logger.warning("leader election: %s", exc)
                if self.is_leader and time.monotonic() - self._last_renewed > self.lease_duration:
                    # Could not renew for a whole lease: someone else may hold it now.
                    await self._step_down("could not renew the lease in time")
                await asyncio.sleep(self.renew_period if self.is_leader else self.renew_period / 2)
        finally:
            if self.is_leader:
                await self._release()

    async def _tick(self) -> None:
        lease = await self.api.get(self.path, timeout=self.call_timeout)
        now = time.monotonic()
        if lease is None:
            await self._create()
            return
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"))
        if record != self._observed_record:
            self._observed_record = record
            self._observed_at = now
        holder = spec.get("holderIdentity")
        if holder == self.identity:
            await self._renew(lease)
            return
        if self.is_leader:
            await self._step_down(f"lease taken by {holder}")
        expired = not holder or now - self._observed_at > float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if expired:
            await self._acquire(lease)

    def _spec(self, transitions: int, acquire: bool, previous: dict[str, Any] | None) -> dict[str, Any]:
        stamp = _micro_time()
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration),
            "acquireTime": stamp if acquire or previous is None else previous.get("acquireTime", stamp),
            "renewTime": stamp,
            "leaseTransitions": transitions,
        }

    async def _create(self) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self._spec(0, True, None),
        }
        try:
            await self.api.create(paths.leases(self.namespace), body, timeout=self.call_timeout)
        except kubeapi.Conflict:  # someone else created it first
            return
        await self._start_leading()

    async def _acquire(self, lease: dict[str, Any]) -> None:
        spec = lease.get("spec") or {}
        lease["spec"] = self._spec(int(spec.get("leaseTransitions") or 0) + 1, True, spec)
        try:
            # PUT carries metadata.resourceVersion: it fails with Conflict if anyone wrote since.
            await self.api.replace(self.path, lease, timeout=self.call_timeout)
        except kubeapi.Conflict:
            return
        await self._start_leading()

    async def _renew(self, lease: dict[str, Any]) -> None:
        spec = lease.get("spec") or {}
        lease["spec"] = self._spec(int(spec.get("leaseTransitions") or 0), False, spec)
        await self.api.replace(self.path, lease, timeout=self.call_timeout)
        self._last_renewed = time.monotonic()
        if not self.is_leader:
            await self._start_leading()

    async def _start_leading(self) -> None:
        self._last_renewed = time.monotonic()
        self.is_leader = True
        logger.info("leader election: %s now holds lease %s/%s", self.identity, self.namespace, self.name)
        await self.on_started_leading()

    async def _step_down(self, why: str) -> None:
        self.is_leader = False
        logger.warning("leader election: %s stepped down: %s", self.identity, why)
        await self.on_stopped_leading()

    async def _release(self) -> None:
        """Hand the lease over at shutdown so the standby takes over at once."""
        self.is_leader = False
        try:
            lease = await self.api.get(self.path, timeout=self.call_timeout)
            spec = (lease or {}).get("spec") or {}
            if lease is not None and spec.get("holderIdentity") == self.identity:
                spec.pop("holderIdentity", None)
                spec["leaseDurationSeconds"] = 1
                lease["spec"] = spec
                await self.api.replace(self.path, lease, timeout=self.call_timeout)
                logger.info("leader election: released lease %s/%s", self.namespace, self.name)
        except kubeapi.ApiError as exc:
            logger.warning("leader election: could not release the lease: %s", exc)
