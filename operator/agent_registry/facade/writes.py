"""Register, heartbeat and unregister, translated onto Agent objects.

* register creates the Agent with the ``agent-id`` label already set to a fresh UUID, so
  the id is known at once (the operator adopts it), then writes ``agentId``,
  ``registeredAt`` and a first heartbeat into the status. A name that exists gets its spec
  updated and keeps its id.
* heartbeat renews the agent's Lease (``schema.lease``), as the sidecar does; the Agent's
  status gets the heartbeat fields (the same small merge-patch the sidecar writes;
  ``reportedMetadata`` is merged by the merge-patch itself) only when the reported status
  or metadata differs from what the registry shows, or when the Lease cannot be used.
* unregister deletes the object, with the uid as a precondition so that a replacement
  created meanwhile under the same name survives.
* with authentication on, register records the caller's username in the Agent's
  registered-by annotation, and heartbeats, re-registrations and unregisters by another
  caller are refused unless it may override agents (``owners.py``, the owner rule).

The operator owns the index; writes never touch Redis (see ``recent.py`` for how clients
still read their writes back at once).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

from agent_registry.facade import metrics
from agent_registry.facade.auth import Authenticator, Caller
from agent_registry.facade.errors import AGENT_NOT_FOUND, ApiError, bad_request, not_found, unavailable
from agent_registry.facade.kube import Kube
from agent_registry.facade.owners import Owners
from agent_registry.facade.reads import Located
from agent_registry.facade.recent import RecentWrites
from agent_registry.facade.settings import FacadeSettings
from agent_registry.kubeapi import StatusError, Unavailable, objects
from agent_registry.schema import constants as c
from agent_registry.schema import lease
from agent_registry.schema.agent import (
    UUID_PATTERN,
    AgentSpec,
    AgentStatus,
    HeartbeatSettings,
    Load,
    ReportedStatus,
    capability_health_list,
    capability_reports,
)
from agent_registry.schema.card import StoredCard
from agent_registry.schema.rest import (
    HeartbeatRequest,
    HeartbeatResponse,
    RegistrationRequest,
    RegistrationResponse,
    rest_status,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

HEARTBEAT_SOURCE = "rest"
_UUID = re.compile(UUID_PATTERN)
_CONFLICT_ATTEMPTS = 5
# After the API server refused a Lease, heartbeats patch the status for this long before
# trying Leases again (an upgrade that applied the new image before the new RBAC).
LEASE_RETRY_SECONDS = 300.0


class HeartbeatSequence:
    """``status.heartbeatSequence`` from the facade's clock: microseconds since the epoch.

    The operator only needs the sequence to change with every heartbeat (it judges time
    on its own clock). A counter would need a read before every patch and could still
    collide between facade replicas; a clock-based value costs nothing, increases across
    replicas whose clocks roughly agree, and never repeats within this process.
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(time.time_ns() // 1000, self._last + 1)
            return self._last


class Writes:
    def __init__(self, kube: Kube, auth: Authenticator, recent: RecentWrites, settings: FacadeSettings) -> None:
        self.kube = kube
        self.auth = auth
        self.recent = recent
        self.settings = settings
        self.sequence = HeartbeatSequence()
        self.owners = Owners(auth)
        self._lease_refused_until = 0.0
        # Validated once: a bad combination fails at start-up, not at the first registration.
        self.heartbeat_settings = HeartbeatSettings(
            interval_seconds=settings.heartbeat_interval_seconds,
            unreachable_after_seconds=settings.unreachable_after_seconds,
            gc_after_seconds=settings.gc_after_seconds,
        )

    # --- register ------------------------------------------------------------------------

    async def register(self, caller: Caller, namespace: str, request: RegistrationRequest) -> RegistrationResponse:
        await self.auth.authorize(caller, "create", namespace, name=request.name)
        spec = request.to_spec()
        spec.heartbeat = self.heartbeat_settings.model_copy()
        for _ in range(_CONFLICT_ATTEMPTS):
            agent_id = str(uuid.uuid4())
            metadata: dict[str, Any] = {
                "name": request.name,
                "namespace": namespace,
                "labels": {c.AGENT_ID_LABEL: agent_id, c.AGENT_TYPE_LABEL: request.type},
            }
            if caller.authenticated:
                metadata["annotations"] = {c.REGISTERED_BY_ANNOTATION: caller.user}
            body = {
                "apiVersion": c.API_VERSION,
                "kind": c.KIND,
                "metadata": metadata,
                "spec": spec.model_dump(mode="json", by_alias=True),
            }
            try:
                created = await self._kube(self.kube.create_agent(namespace, body), "register the agent")
            except StatusError as exc:
                if exc.status == 409 and exc.reason == "AlreadyExists":
                    response = await self._reregister(caller, namespace, request, spec)
                    if response is not None:
                        return response
                    continue  # deleted between the create and the read: create again
                raise self._rejected(exc, namespace) from exc
            self.owners.remember(created)
            now = _whole_seconds(_now())
            status = _registration_status(agent_id, now, self.sequence.next()) | _card_status(request)
            resource = await self._write_status(
                namespace, request.name, created, status, required=request.agent_card is not None
            )
            self.recent.wrote(agent_id, namespace, request.name, resource)
            metrics.OPERATIONS.labels(operation="register", outcome="created").inc()
            logger.info("registered agent %s/%s as %s", namespace, request.name, agent_id)
            return self._registered(agent_id, now, namespace, spec.heartbeat.interval_seconds)
        raise ApiError(409, f"agent {request.name!r} keeps changing; try again")

    async def _reregister(
        self, caller: Caller, namespace: str, request: RegistrationRequest, spec: AgentSpec
    ) -> RegistrationResponse | None:
        """Update an existing agent of the same name; None when it vanished meanwhile."""
        await self.auth.authorize(caller, "update", namespace, name=request.name)
        for _ in range(_CONFLICT_ATTEMPTS):
            existing = await self._kube(self.kube.get_agent(namespace, request.name), "register the agent")
            if existing is None:
                return None
            old_spec = existing.get("spec") or {}
            if old_spec.get("type") != request.type:
                raise ApiError(
                    409,
                    f"agent {request.name!r} already exists with type {old_spec.get('type')!r}; "
                    "an agent's type cannot change (unregister it first)",
                )
            # The same name from another identity is not a re-registration but a takeover.
            owner = objects.registered_by(existing) or ""
            await self.owners.require(caller, namespace, request.name, owner, "register")
            meta = existing.get("metadata") or {}
            status = existing.get("status") or {}
            agent_id = _existing_id(existing) or str(uuid.uuid4())
            new_spec = spec.model_dump(mode="json", by_alias=True, exclude={"heartbeat"})
            # Merge-patch merges maps: metadata keys the new registration dropped must be
            # nulled, or they would survive. The heartbeat settings stay as they are: a
            # sidecar or kubectl may have tuned them.
            new_spec["metadata"] = {**dict.fromkeys(old_spec.get("metadata") or {}), **new_spec["metadata"]}
            patch = {
                "metadata": {
                    # A precondition: a concurrent change makes this a 409 instead of a mix.
                    "resourceVersion": meta.get("resourceVersion"),
                    "labels": {c.AGENT_ID_LABEL: agent_id, c.AGENT_TYPE_LABEL: request.type},
                },
                "spec": new_spec,
            }
            if caller.authenticated and not owner:
                patch["metadata"]["annotations"] = {c.REGISTERED_BY_ANNOTATION: caller.user}  # claim the unowned
            try:
                updated = await self._kube(self.kube.patch_agent(namespace, request.name, patch), "update the agent")
            except StatusError as exc:
                if exc.status == 409:
                    continue
                if exc.status == 404:
                    return None
                raise self._rejected(exc, namespace) from exc
            self.owners.remember(updated)
            registered_at = _parse_time(status.get("registeredAt")) or _whole_seconds(_now())
            new_status = _registration_status(agent_id, registered_at, self.sequence.next()) | _card_status(request)
            resource = await self._write_status(
                namespace, request.name, updated, new_status, required=request.agent_card is not None
            )
            self.recent.wrote(agent_id, namespace, request.name, resource)
            interval = int(((updated.get("spec") or {}).get("heartbeat") or {}).get("intervalSeconds", 0)) or (
                self.heartbeat_settings.interval_seconds
            )
            metrics.OPERATIONS.labels(operation="register", outcome="updated").inc()
            logger.info("re-registered agent %s/%s (%s)", namespace, request.name, agent_id)
            return self._registered(agent_id, registered_at, namespace, interval)
        raise ApiError(409, f"agent {request.name!r} keeps changing; try again")

    async def _write_status(
        self, namespace: str, name: str, current: dict[str, Any], status: dict[str, Any], *, required: bool = False
    ) -> dict[str, Any]:
        """The registration's status patch. If it fails, the object is there with its id
        label, which the operator adopts; the registration stands, unless the status is
        ``required``: a card lives only there, and only a retry of the registration can
        write it, so the caller is told to retry (it keeps its id)."""
        try:
            return await self.kube.patch_status(namespace, name, {"status": status})
        except (Unavailable, StatusError) as exc:
            if required:
                metrics.KUBE_ERRORS.inc()
                raise unavailable(f"registered {name!r} but could not store its agent card ({exc})") from exc
            logger.warning(
                "registered %s/%s but could not write its status (the operator will): %s", namespace, name, exc
            )
            return current

    def _registered(
        self, agent_id: str, registered_at: datetime, namespace: str, interval: int
    ) -> RegistrationResponse:
        url = f"/agents/{agent_id}/heartbeat"
        if namespace != self.settings.namespace:
            url += f"?namespace={namespace}"
        return RegistrationResponse(
            agent_id=agent_id, registered_at=registered_at, heartbeat_url=url, heartbeat_interval_seconds=interval
        )

    # --- heartbeat -------------------------------------------------------------------------

    async def heartbeat(self, caller: Caller, agent: Located, request: HeartbeatRequest) -> HeartbeatResponse:
        _check_capabilities(agent, request)
        await self._require_owner(caller, agent, "heartbeat")
        now = _now()
        if not _report_changes(agent, request) and agent.uid and self._lease_usable():
            renewed = await self._renew_lease(agent, now, request.load)
            if renewed:
                self.recent.renewed(agent.agent_id, now)
                metrics.HEARTBEAT_WRITES.labels(write="lease").inc()
                metrics.OPERATIONS.labels(operation="heartbeat", outcome=request.status.value).inc()
                interval = agent.interval_seconds or self.heartbeat_settings.interval_seconds
                return HeartbeatResponse(received=True, next_interval_seconds=interval, timestamp=now)
        response = await self._status_heartbeat(agent, request, now)
        if agent.uid and self._lease_usable():
            # Load travels only on the Lease (the index takes it from there): a heartbeat
            # that had to write the status renews the Lease as well, so its load, or the
            # withdrawal of an earlier one, counts. Status writes are the rare heartbeats.
            try:
                await self._renew_lease(agent, now, request.load)
            except ApiError as exc:
                # The heartbeat is recorded in the status; its load waits for the next one.
                logger.info(
                    "heartbeat of %s/%s recorded; its Lease was not renewed: %s",
                    agent.namespace,
                    agent.name,
                    exc.message,
                )
        return response

    async def _status_heartbeat(self, agent: Located, request: HeartbeatRequest, now: datetime) -> HeartbeatResponse:
        """The heartbeat as a status patch: the report changed, or the Lease cannot be used."""
        fields: dict[str, Any] = {
            "last_heartbeat_time": now,
            "heartbeat_sequence": self.sequence.next(),
            "reported_status": request.status,
            "heartbeat_source": HEARTBEAT_SOURCE,
        }
        if request.metadata:
            fields["reported_metadata"] = request.metadata
        if request.capabilities or agent.view.capability_health:
            # The whole list, empty when all are healthy: a merge-patch replaces lists, so
            # capabilities that recovered drop out. An agent that never reported any
            # heartbeats exactly as before.
            fields["capability_health"] = capability_health_list(request.capabilities)
        status = AgentStatus(**fields).model_dump(mode="json", by_alias=True, exclude_unset=True)
        try:
            resource = await self._kube(
                self.kube.patch_status(agent.namespace, agent.name, {"status": status}), "record the heartbeat"
            )
        except StatusError as exc:
            if exc.status == 404:
                self.recent.forget(agent.agent_id)
                metrics.OPERATIONS.labels(operation="heartbeat", outcome="unknown").inc()
                raise not_found() from exc
            raise self._rejected(exc, agent.namespace) from exc
        self.owners.remember(resource)
        if _existing_id(resource) not in (None, agent.agent_id):
            # The name now belongs to another agent (deleted and registered again while the
            # index still pointed here). Telling the caller its id is unknown makes it register
            # again, which is right: it gets the live agent's id.
            self.recent.forget(agent.agent_id)
            raise not_found()
        self.recent.wrote(
            agent.agent_id,
            agent.namespace,
            agent.name,
            resource,
            changes_queries=_changes_queries(resource, request, agent),
        )
        metrics.HEARTBEAT_WRITES.labels(write="status").inc()
        metrics.OPERATIONS.labels(operation="heartbeat", outcome=request.status.value).inc()
        interval = ((resource.get("spec") or {}).get("heartbeat") or {}).get("intervalSeconds")
        return HeartbeatResponse(
            received=True,
            next_interval_seconds=int(interval or self.heartbeat_settings.interval_seconds),
            timestamp=now,
        )

    def _lease_usable(self) -> bool:
        return time.monotonic() >= self._lease_refused_until

    async def _renew_lease(self, agent: Located, now: datetime, load: Load | None) -> bool:
        """Renew the agent's Lease, creating it when missing; False when the API server
        refuses Leases (RBAC older than this facade): the heartbeat then patches the status,
        and Leases are tried again after ``LEASE_RETRY_SECONDS``."""
        unreachable = agent.unreachable_after_seconds or self.heartbeat_settings.unreachable_after_seconds
        spec = lease.renewal(HEARTBEAT_SOURCE, unreachable, now)
        name = lease.lease_name(agent.name)
        patch = lease.renewal_patch(agent.name, agent.uid, spec, load)
        try:
            try:
                await self._kube(self.kube.renew_lease(agent.namespace, name, patch), "renew the agent's Lease")
                return True
            except StatusError as exc:
                if exc.status != 404:
                    raise
            # No Lease yet (the first heartbeat since registering), or deleted. The Agent
            # must exist as located: the garbage collector deletes the Lease with it.
            current = await self._kube(self.kube.get_agent(agent.namespace, agent.name), "record the heartbeat")
            if current is None or objects.uid(current) != agent.uid:
                self.recent.forget(agent.agent_id)
                metrics.OPERATIONS.labels(operation="heartbeat", outcome="unknown").inc()
                raise not_found()
            owner = objects.registered_by(current)
            body = lease.build_lease(agent.namespace, agent.name, agent.uid, spec, owner, load)
            try:
                await self._kube(self.kube.create_lease(agent.namespace, body), "create the agent's Lease")
            except StatusError as exc:
                if exc.status != 409:
                    raise
                await self._kube(self.kube.renew_lease(agent.namespace, name, patch), "renew the agent's Lease")
            return True
        except StatusError as exc:
            if exc.status not in (401, 403):
                raise self._rejected(exc, agent.namespace) from exc
            self._lease_refused_until = time.monotonic() + LEASE_RETRY_SECONDS
            logger.warning(
                "the API server refuses agents' Leases in %s (%s); heartbeats patch Agent status instead for "
                "%.0fs (grant the facade get/create/patch on leases: see the chart's RBAC)",
                agent.namespace,
                exc.message,
                LEASE_RETRY_SECONDS,
            )
            return False

    # --- unregister -------------------------------------------------------------------------

    async def unregister(self, caller: Caller, agent: Located) -> None:
        await self._require_owner(caller, agent, "unregister")
        try:
            await self._kube(
                self.kube.delete_agent(agent.namespace, agent.name, agent.uid or None), "unregister the agent"
            )
        except StatusError as exc:
            # 409: the uid precondition failed, the name belongs to a newer agent now.
            if exc.status in (404, 409):
                self.recent.forget(agent.agent_id)
                raise not_found() from exc
            raise self._rejected(exc, agent.namespace) from exc
        self.recent.deleted(agent.agent_id, agent.namespace, agent.name)
        metrics.OPERATIONS.labels(operation="unregister", outcome="deleted").inc()
        logger.info("unregistered agent %s/%s (%s)", agent.namespace, agent.name, agent.agent_id)

    # --- the owner rule ---------------------------------------------------------------------------

    async def _require_owner(self, caller: Caller, agent: Located, action: str) -> None:
        """403 unless the caller registered this agent, it is unowned, or the caller may override agents."""
        if not caller.authenticated:
            return
        owner = self.owners.known(agent.namespace, agent.name, agent.uid)
        if owner is None:
            resource = await self._kube(self.kube.get_agent(agent.namespace, agent.name), f"{action} the agent")
            if resource is None:
                return  # gone: the write itself answers 404
            # Whatever object holds the name now is the one the write would reach.
            owner = self.owners.remember(resource)
        await self.owners.require(caller, agent.namespace, agent.name, owner, action)

    # --- errors ---------------------------------------------------------------------------------

    @staticmethod
    async def _kube(call: Awaitable[T], action: str) -> T:
        try:
            return await call
        except Unavailable as exc:
            metrics.KUBE_ERRORS.inc()
            raise unavailable(f"cannot {action}: the Kubernetes API server is unavailable ({exc})") from exc

    @staticmethod
    def _rejected(exc: StatusError, namespace: str) -> ApiError:
        if exc.status == 422:
            # The models check everything the CRD checks, so this is rare: e.g. more than the
            # allowed metadata entries once a heartbeat's metadata is merged with the old.
            return bad_request(f"the Kubernetes API server rejected the agent: {exc.describe()}")
        if exc.status == 404 and exc.reason == "NotFound" and "namespace" in exc.message:
            return not_found(f"namespace {namespace!r} does not exist")
        if exc.status in (401, 403):
            return unavailable(
                f"the registry is not allowed to write agents in {namespace!r} (check its RBAC): {exc.message}"
            )
        if exc.status == 404:
            return not_found(AGENT_NOT_FOUND)
        return ApiError(502, f"the Kubernetes API server refused: {exc.message}")


def _registration_status(agent_id: str, registered_at: datetime, sequence: int) -> dict[str, Any]:
    status = AgentStatus(
        agent_id=agent_id,
        registered_at=registered_at,
        last_heartbeat_time=_now(),
        heartbeat_sequence=sequence,
        reported_status=ReportedStatus.HEALTHY,
        heartbeat_source=HEARTBEAT_SOURCE,
    )
    return status.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _card_status(request: RegistrationRequest) -> dict[str, Any]:
    """The card's status fields: the registration's card, or none. A registration says all
    there is about the agent, so one without a card removes a card registered before (a
    merge-patch null deletes the field)."""
    if request.agent_card is not None:
        return StoredCard.of(request.agent_card).status_fields()
    return dict.fromkeys(("agentCard", "agentCardHash", "agentCardSkills", "agentCardProblem"))


def _existing_id(resource: dict[str, Any]) -> str | None:
    """The id an object already has: its status, else its label if that is a UUID."""
    status_id = (resource.get("status") or {}).get("agentId")
    if status_id:
        return str(status_id)
    label = ((resource.get("metadata") or {}).get("labels") or {}).get(c.AGENT_ID_LABEL, "")
    return str(label) if _UUID.match(str(label)) else None


def _now() -> datetime:
    return datetime.now(UTC)


def _whole_seconds(moment: datetime) -> datetime:
    """registeredAt in whole seconds: the operator's status initialisation, which may land
    just after the facade's, writes that precision, so both agree on the value."""
    return moment.replace(microsecond=0)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _check_capabilities(agent: Located, request: HeartbeatRequest) -> None:
    """A capability's health can be reported only for a capability the agent has."""
    unknown = sorted(set(request.capabilities or {}) - set(agent.view.capabilities))
    if unknown:
        have = ", ".join(agent.view.capabilities) or "none"
        raise bad_request(
            f"capabilities.{unknown[0]}: not one of the agent's capabilities ({have}); "
            "report health only for capabilities it registered"
        )


def _report_changes(agent: Located, request: HeartbeatRequest) -> bool:
    """Whether the heartbeat reports something the registry does not show yet: another
    status (an Unreachable agent's report differs too, so its phase is written back at
    once), another health of a capability, or a metadata value that differs."""
    if request.status.value != agent.view.status:
        return True
    reported = capability_reports(capability_health_list(request.capabilities))
    if reported != (agent.view.capability_health or {}):
        return True
    shown = agent.view.metadata or {}
    return any(key not in shown or shown[key] != value for key, value in (request.metadata or {}).items())


def _changes_queries(resource: dict[str, Any], request: HeartbeatRequest, agent: Located) -> bool:
    """Whether a heartbeat can change what a query answers: new metadata or capability
    health, or a reported status other than the phase the index shows (the operator will
    change the phase)."""
    if request.metadata or request.capabilities or agent.view.capability_health:
        return True
    phase = (resource.get("status") or {}).get("phase")
    return phase is None or rest_status(str(phase)) != request.status.value
