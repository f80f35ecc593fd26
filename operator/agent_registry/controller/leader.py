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

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agent_registry.controller.kube import Kube

logger = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]


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
        self.kube = kube
        self.api = kube.coordination
        # A renewal that cannot finish before the lease would lapse is worthless; give up
        # on it in time to notice and step down (client-go's renew deadline, in spirit).
        self.call_timeout = max(1.0, min(kube.timeout, lease_duration - renew_period))
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_period = renew_period
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
                except ApiException as exc:
                    logger.warning("leader election: API error %s %s", exc.status, exc.reason)
                except Exception as exc:  # connection errors, timeouts
                    logger.warning("leader election: %s", exc)
                if self.is_leader and time.monotonic() - self._last_renewed > self.lease_duration:
                    # Could not renew for a whole lease: someone else may hold it now.
                    await self._step_down("could not renew the lease in time")
                await asyncio.sleep(self.renew_period if self.is_leader else self.renew_period / 2)
        finally:
            if self.is_leader:
                await self._release()

    async def _tick(self) -> None:
        lease = await self._read()
        now = time.monotonic()
        if lease is None:
            await self._create()
            return
        spec = lease.spec or client.V1LeaseSpec()
        record = (spec.holder_identity, str(spec.renew_time) if spec.renew_time else None)
        if record != self._observed_record:
            self._observed_record = record
            self._observed_at = now
        holder = spec.holder_identity
        if holder == self.identity:
            await self._renew(lease)
            return
        if self.is_leader:
            await self._step_down(f"lease taken by {holder}")
        expired = not holder or now - self._observed_at > float(spec.lease_duration_seconds or self.lease_duration)
        if expired:
            await self._acquire(lease)

    async def _call(self, method: Any, *args: Any) -> Any:
        return await self.kube.call(method, *args, _request_timeout=self.call_timeout)

    async def _read(self) -> client.V1Lease | None:
        try:
            lease: client.V1Lease = await self._call(self.api.read_namespaced_lease, self.name, self.namespace)
            return lease
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _spec(self, transitions: int, acquire: bool, previous: client.V1LeaseSpec | None) -> client.V1LeaseSpec:
        stamp = datetime.now(UTC)
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=int(self.lease_duration),
            acquire_time=stamp if acquire or previous is None else previous.acquire_time,
            renew_time=stamp,
            lease_transitions=transitions,
        )

    async def _create(self) -> None:
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=self._spec(0, True, None),
        )
        try:
            await self._call(self.api.create_namespaced_lease, self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:  # someone else created it first
                return
            raise
        await self._start_leading()

    async def _acquire(self, lease: client.V1Lease) -> None:
        spec = lease.spec or client.V1LeaseSpec()
        lease.spec = self._spec((spec.lease_transitions or 0) + 1, True, spec)
        try:
            # replace carries metadata.resourceVersion: it fails with 409 if anyone wrote since.
            await self._call(self.api.replace_namespaced_lease, self.name, self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:
                return
            raise
        await self._start_leading()

    async def _renew(self, lease: client.V1Lease) -> None:
        spec = lease.spec or client.V1LeaseSpec()
        lease.spec = self._spec(spec.lease_transitions or 0, False, spec)
        await self._call(self.api.replace_namespaced_lease, self.name, self.namespace, lease)
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
            lease = await self._read()
            if lease is not None and lease.spec is not None and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.lease_duration_seconds = 1
                await self._call(self.api.replace_namespaced_lease, self.name, self.namespace, lease)
                logger.info("leader election: released lease %s/%s", self.namespace, self.name)
        except Exception as exc:
            logger.warning("leader election: could not release the lease: %s", exc)
