"""The sidecar's life: register the Agent, heartbeat into it until told to stop, deregister.

Failures of the API server never end the loop: no answer, 429 and 5xx are retried with
exponential backoff and jitter, capped at the heartbeat interval so that recovery is
noticed within one interval; a 404 on a heartbeat means someone deleted the Agent, so it
is created again; a 409 means it changed under us, so it is read again. Other refusals
(401, 403, a missing namespace or CRD) are logged once and retried the same way, so that
RBAC applied after the pod started needs no restart. Only a spec the API server rejects
(400, 422) ends the sidecar, as the configuration error it is.

Ownership: at start the sidecar asks the API server who it is (a SelfSubjectReview) and
records that username in the Agent's registered-by annotation when it creates the Agent,
or claims an existing unowned one with it. Where the chart's owner-restriction policy is
installed, only that identity may then write or delete the Agent. An Agent of the same
name registered by another identity is not adopted: the 403 is logged once as an error
naming the owner, and retried like any refusal, so the sidecar takes the name over as soon
as the other agent's Agent is gone (deleted with its pod, or collected by the operator).

Logging is per state change: registered, health changed, capability health changed, API
lost, API back, deregistered, agent card recorded; and once for each distinct problem of
the agent's health body or its card. Each heartbeat logs at DEBUG only.

With ``AGENT_CARD_URL`` set, a heartbeat whose probe got an answer is followed, when due,
by a look at the agent's A2A card (``card.py``): the heartbeat is written first, and a
card that fails in any way is logged and recorded, never raised into the loop.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import UTC, datetime
from typing import Any

from agent_registry.kubeapi.objects import registered_by
from agent_registry.schema import lease
from agent_registry.schema.agent import CapabilityHealth, Load, ReportedStatus, capability_health_list
from agent_registry.schema.lease import build_lease
from agent_sidecar.card import CardWatch, Fetched, fetch_card
from agent_sidecar.config import SidecarConfig
from agent_sidecar.kube import DEFAULT_TIMEOUT_SECONDS, AgentApi, ApiError
from agent_sidecar.logs import log
from agent_sidecar.payloads import (
    build_adoption_patch,
    build_agent,
    build_heartbeat,
    build_owner_reference,
    heartbeat_sequence,
    heartbeat_writer,
    is_deleting,
    is_written_by,
)
from agent_sidecar.probe import BodyProblem, ProbeResult, probe

EXIT_OK = 0
EXIT_NOT_DEREGISTERED = 1
EXIT_REJECTED = 2

# Distinct health-body problems remembered so each is logged once; past this many (a body
# inventing new capability names), the memory starts again rather than grow without end.
MAX_REMEMBERED_BODY_PROBLEMS = 64
# What a status write reports: the status, and the capabilities not healthy.
Report = tuple[ReportedStatus, list[CapabilityHealth]]

# Heartbeats come up to this much sooner than the interval, never later, so that jitter
# spreads a fleet's writes without bringing any agent closer to its unreachable deadline.
INTERVAL_JITTER = 0.15


class Backoff:
    """Exponential backoff with "equal jitter": each wait is a random 50-100 % of first * 2^n, capped."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first = first
        self.cap = cap
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.first * 2.0**self._attempt)
        self._attempt += 1
        return ceiling * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._attempt = 0


class RegistrationRejectedError(Exception):
    """The API server refused the Agent itself (400/422): a configuration problem, not an outage."""


class Sidecar:
    def __init__(self, config: SidecarConfig, api: AgentApi, stop: threading.Event) -> None:
        self.config = config
        self.api = api
        self.stop = stop
        self.name = config.name
        self.source = config.heartbeat_source
        self._uid: str | None = None
        self._sequence = 0
        self._owner: dict[str, Any] | None = None
        self._owner_resolved = False
        self._identity: str | None = None
        self._identity_resolved = False
        self._foreign_owner: str | None = None  # registered-by of the Agent last found under our name
        self._health: tuple[str, str] | None = None
        self._capability_health: list[CapabilityHealth] = []  # what the last probe reported, for logging changes
        self._body_problems: set[BodyProblem] = set()  # logged once each
        self._trouble: tuple[int | None, float, int] | None = None  # (status, since, failed calls)
        self._waiting_for_deletion = False
        self._wrote_agent = False  # a create or adopt was sent, even if its answer never came
        self._status_written: tuple[Report, float] | None = None  # (report, monotonic) of the last status write
        self._lease_refused_until = 0.0
        card_url = config.settings.card_url
        self._card = (
            CardWatch(str(card_url), config.settings.card_refresh_seconds, config.interval_seconds)
            if card_url is not None
            else None
        )
        self._card_logged: Fetched | None = None  # the last card outcome logged, so each is logged once

    @property
    def sequence(self) -> int:
        """The number of the last heartbeat sent (or adopted from the Agent)."""
        return self._sequence

    def run(self) -> int:
        """Until ``stop`` is set; the exit code: 0 deregistered, 1 could not deregister, 2 rejected."""
        try:
            self.register()
            self.heartbeat_until_stopped()
        except RegistrationRejectedError as error:
            log(logging.ERROR, "the API server rejected the agent; check its configuration", error=str(error))
            return EXIT_REJECTED
        return self.deregister()

    # -- registering ---------------------------------------------------------------------

    def register(self) -> None:
        """Create the Agent or adopt the existing one; retries until done or stopped."""
        backoff = Backoff(cap=self.config.interval_seconds)
        while not self.stop.is_set():
            try:
                registered = self._register_once()
            except ApiError as error:
                if error.status == 409:
                    # Created or changed by someone else meanwhile: read it again at once. (A 404 is
                    # not retried as fast: from a create it means the namespace or the CRD is missing.)
                    log(logging.DEBUG, "agent changed while registering; reading it again", error=str(error))
                    self.stop.wait(random.uniform(0.05, 0.25))
                    continue
                if error.status in (400, 422):
                    raise RegistrationRejectedError(f"{error.status} {error.reason}: {error.message}") from error
                if error.status == 403 and self._foreign_owner:
                    self._api_failed(
                        error,
                        "adopt",
                        "cannot adopt the agent: another identity registered it, and only that identity (or one "
                        "allowed to override agents) may write it; retrying until it is gone. Give each agent "
                        "its own name and ServiceAccount",
                        agent=self.name,
                        registered_by=self._foreign_owner,
                        identity=self._identity,
                    )
                else:
                    self._api_failed(error, "register")
            else:
                self._api_answered()
                if registered:
                    return
            self.stop.wait(backoff.next())

    def _register_once(self) -> bool:
        owner = self._owner_reference()
        identity = self._whoami()
        existing = self.api.get_agent(self.name)
        self._foreign_owner = None
        if existing is None:
            self._wrote_agent = True
            created = self.api.create_agent(build_agent(self.config, owner, identity))
            self._uid = created["metadata"]["uid"]
            if self._card is not None:
                self._card.knows_agent(created)
            log(logging.INFO, "registered: created the agent", **self._describe(created, owner))
            return True
        if is_deleting(existing):
            # Finalizers hold the old object for a while; adopting it now would be lost with it.
            if not self._waiting_for_deletion:
                log(logging.INFO, "waiting for the agent being deleted to go before creating it again", agent=self.name)
                self._waiting_for_deletion = True
            return False
        self._waiting_for_deletion = False
        previous_owner = registered_by(existing)
        if previous_owner and previous_owner != identity:
            # Tried all the same: an identity allowed to override agents may adopt it.
            self._foreign_owner = previous_owner
        self._wrote_agent = True
        adopted = self.api.patch_agent(self.name, build_adoption_patch(existing, self.config, owner, identity))
        self._uid = adopted["metadata"]["uid"]
        if self._card is not None:
            self._card.knows_agent(adopted)  # a restarted sidecar does not rewrite the card it finds
        self._sequence = max(self._sequence, heartbeat_sequence(existing))
        log(
            logging.INFO,
            "registered: adopted the existing agent",
            previous_writer=heartbeat_writer(existing),
            sequence=self._sequence,
            **self._describe(adopted, owner),
        )
        return True

    def _whoami(self) -> str | None:
        """This sidecar's username, asked once; None (and a warning) when the API server will not say."""
        if self._identity_resolved:
            return self._identity
        try:
            self._identity = self.api.whoami() or None
        except ApiError as error:
            if error.transient:
                raise
            log(
                logging.WARNING,
                "cannot learn this sidecar's username (SelfSubjectReview); the agent is registered unowned, "
                "so the owner rule cannot protect it",
                error=str(error),
            )
        self._identity_resolved = True
        return self._identity

    def _owner_reference(self) -> dict[str, Any] | None:
        """The Pod to own the Agent, looked up once; None (and a log line saying why) when there is none."""
        if self._owner_resolved:
            return self._owner
        pod_name, pod_uid = self.config.settings.pod_name, self.config.settings.pod_uid
        if not pod_name:
            log(logging.INFO, "POD_NAME is unset; the agent will have no ownerReference")
        elif pod_uid:
            self._owner = build_owner_reference(pod_name, pod_uid)
        else:
            try:
                pod = self.api.get_pod(pod_name)
            except ApiError as error:
                if error.transient:
                    raise
                pod = None
                log(
                    logging.WARNING,
                    "cannot read the pod; the agent will have no ownerReference (set POD_UID to avoid the lookup)",
                    pod=pod_name,
                    error=str(error),
                )
            else:
                if pod is None:
                    log(logging.WARNING, "pod not found; the agent will have no ownerReference", pod=pod_name)
                else:
                    self._owner = build_owner_reference(pod_name, pod["metadata"]["uid"])
        self._owner_resolved = True
        return self._owner

    def _describe(self, agent: dict[str, Any], owner: dict[str, Any] | None) -> dict[str, Any]:
        spec = self.config.spec
        return {
            "agent": self.name,
            "namespace": self.config.namespace,
            "uid": agent["metadata"]["uid"],
            "type": spec.type,
            "endpoint": f"{spec.host}:{spec.port}",
            "owner_pod": owner["name"] if owner else None,
            "registered_by": registered_by(agent),
        }

    # -- heartbeats ----------------------------------------------------------------------

    def heartbeat_until_stopped(self) -> None:
        backoff = Backoff(cap=self.config.interval_seconds)
        delay = 0.0  # the first heartbeat right after registering
        while not self.stop.wait(delay):
            started = time.monotonic()
            delay = self._beat(backoff) - (time.monotonic() - started)
            delay = max(delay, 0.0)

    def _beat(self, backoff: Backoff) -> float:
        """Probe, heartbeat once; the time until the next heartbeat, counted from the start of this one.

        A heartbeat renews the agent's Lease, with the load the agent reports; the Agent's
        status is written only when the reported health (status or capabilities) changes,
        at least every ``AGENT_STATUS_REFRESH_SECONDS``, and for every heartbeat while the
        Lease cannot be used (see ``_lease_usable``). Load never goes into the status: it
        changes all the time, and a Lease renewal is written anyway."""
        settings = self.config.settings
        result = probe(
            self.config.health_url,
            settings.probe_timeout_seconds,
            settings.probe_slow_seconds,
            self.config.spec.capabilities,
        )
        self._note_health(result)
        self._note_body(result)
        report: Report = (result.status, capability_health_list(result.capabilities))
        self._note_capabilities(report[1])
        self._sequence += 1  # even when the write fails: a sequence may skip, never repeat
        now = datetime.now(UTC)
        try:
            wrote_status = self._status_due(report)
            if wrote_status:
                self._write_status(now, report)
            renewed = self._lease_usable() and self._renew_lease(now, result.load)
            if not renewed and not wrote_status:
                self._write_status(now, report)
        except ApiError as error:
            if error.status == 404:
                log(logging.WARNING, "the agent was deleted by someone else; creating it again", agent=self.name)
                self._forget_agent()
                self.register()
                return 0.0
            self._api_failed(error, "heartbeat")
            return backoff.next()
        self._api_answered()
        backoff.reset()
        log(logging.DEBUG, "heartbeat", sequence=self._sequence, status=result.status.value)
        if self._card is not None and result.reason != "no-answer" and self._card.due(time.monotonic()):
            self._check_card(self._card)
        interval = self.config.interval_seconds
        return interval * random.uniform(1 - INTERVAL_JITTER, 1.0)

    def _status_due(self, report: Report) -> bool:
        if self._status_written is None:
            return True
        reported, at = self._status_written
        return reported != report or time.monotonic() - at >= self.config.settings.status_refresh_seconds

    def _write_status(self, now: datetime, report: Report) -> None:
        status, capability_health = report
        patch = build_heartbeat(now, self._sequence, status, self.source, capability_health)
        self.api.patch_agent_status(self.name, patch)
        self._status_written = (report, time.monotonic())

    def _lease_usable(self) -> bool:
        """False for a while after the API server refused the Lease (RBAC older than this
        sidecar, or the owner rule without a known username): heartbeats then patch the
        Agent's status, as older sidecars do, and the Lease is tried again later."""
        return time.monotonic() >= self._lease_refused_until

    def _renew_lease(self, now: datetime, load: Load | None) -> bool:
        """Renew (or create) the Lease, carrying ``load``; False when the API server refuses it (403)."""
        spec = lease.renewal(self.source, self.config.spec.heartbeat.unreachable_after_seconds, now)
        name = lease.lease_name(self.name)
        uid = self._uid or ""
        try:
            try:
                self.api.renew_lease(name, lease.renewal_patch(self.name, uid, spec, load))
                return True
            except ApiError as error:
                if error.status != 404:
                    raise
            # No Lease: first heartbeat, or deleted. If the Agent went too (the garbage
            # collector deletes the Lease with it), the 404 makes the caller register again.
            agent = self.api.get_agent(self.name)
            if agent is None or agent["metadata"]["uid"] != uid:
                raise ApiError(404, "NotFound", f"agent {self.name} is gone")
            try:
                self.api.create_lease(build_lease(self.config.namespace, self.name, uid, spec, self._identity, load))
                log(logging.INFO, "created the agent's Lease", agent=self.name, lease=name)
            except ApiError as error:
                if error.status != 409:
                    raise
                self.api.renew_lease(name, lease.renewal_patch(self.name, uid, spec, load))  # created meanwhile
            return True
        except ApiError as error:
            if error.status != 403:
                raise
            self._lease_refused_until = time.monotonic() + self.config.settings.status_refresh_seconds
            log(
                logging.WARNING,
                "the API server refuses the agent's Lease; heartbeats patch the Agent's status instead "
                "(grant the sidecar's Role get/create/patch on leases: see the chart's RBAC)",
                lease=name,
                error=str(error),
                retry_in_seconds=self.config.settings.status_refresh_seconds,
            )
            return False

    def _delete_lease(self, timeout: float) -> None:
        """Best effort, after the Agent: left behind, the Lease would hold this identity's
        name until the garbage collector comes, and the next agent of the name could not renew it."""
        try:
            self.api.delete_lease(lease.lease_name(self.name), timeout=timeout)
        except ApiError as error:
            if error.status != 404:
                log(logging.INFO, "left the agent's Lease to the garbage collector", error=str(error))

    def _forget_agent(self) -> None:
        self._uid = None
        self._status_written = None
        if self._card is not None:
            self._card.knows_agent(None)

    def _check_card(self, watch: CardWatch) -> None:
        """Fetch the card and record it (or its problem) when the Agent does not say so already."""
        fetched = fetch_card(watch.url, self.config.settings.probe_timeout_seconds, watch.etag)
        now = time.monotonic()
        watch.checked(fetched, now)
        self._note_card(watch, fetched)
        patch = watch.patch_for(fetched)
        if patch is not None:
            try:
                self.api.patch_agent_status(self.name, {"status": patch})
            except ApiError as error:
                log(
                    logging.WARNING,
                    "could not record the agent card; trying again after the next heartbeat",
                    error=str(error),
                )
                watch.retry_soon(now)
                return
            if fetched.card is not None and fetched.card.hash != watch.stored_hash:
                log(
                    logging.INFO,
                    "recorded the agent card",
                    hash=fetched.card.hash,
                    skills=list(fetched.card.skills),
                    url=watch.url,
                )
        watch.wrote(fetched)

    def _note_card(self, watch: CardWatch, fetched: Fetched) -> None:
        """One line per distinct problem with the card, and one when it is fine again."""
        if fetched.unchanged:
            return
        previous = self._card_logged
        if fetched.problem is not None:
            if previous is None or previous.problem != fetched.problem:
                log(
                    logging.WARNING,
                    "the agent's card was not taken; heartbeats go on",
                    reason=fetched.problem.reason,
                    problem=fetched.problem.message,
                    url=watch.url,
                )
        elif previous is not None and previous.problem is not None:
            log(logging.INFO, "the agent's card is fine again", url=watch.url)
        self._card_logged = fetched

    def _note_health(self, result: ProbeResult) -> None:
        state = (result.status.value, result.reason)
        if state == self._health:
            return
        log(
            logging.INFO if result.reason == "ok" else logging.WARNING,
            "agent health changed",
            status=result.status.value,
            previous=self._health[0] if self._health else None,
            reason=result.reason,
            detail=result.detail,
            url=self.config.health_url,
        )
        self._health = state

    def _note_capabilities(self, capability_health: list[CapabilityHealth]) -> None:
        if capability_health == self._capability_health:
            return
        log(
            logging.WARNING if capability_health else logging.INFO,
            "capability health changed",
            not_healthy={entry.name: entry.status.value for entry in capability_health},
            reasons={entry.name: entry.reason for entry in capability_health if entry.reason},
            previous={entry.name: entry.status.value for entry in self._capability_health},
        )
        self._capability_health = capability_health

    def _note_body(self, result: ProbeResult) -> None:
        """One line per distinct problem of the health body, not one per heartbeat: a body
        broken the same way on every probe is one mistake."""
        if len(self._body_problems) >= MAX_REMEMBERED_BODY_PROBLEMS:
            self._body_problems.clear()
        for problem in result.problems:
            if problem in self._body_problems:
                continue
            self._body_problems.add(problem)
            log(
                logging.WARNING,
                "ignoring the agent's health body: it breaks a rule; heartbeats report only its HTTP status",
                field=problem.field,
                rule=problem.rule,
                url=self.config.health_url,
            )

    # -- the API server's state ----------------------------------------------------------

    def _api_failed(
        self,
        error: ApiError,
        action: str,
        message: str = "kubernetes API call failing; retrying with backoff",
        **details: Any,
    ) -> None:
        if self._trouble is not None and self._trouble[0] == error.status:
            status, since, failures = self._trouble
            self._trouble = (status, since, failures + 1)
            return
        since = self._trouble[1] if self._trouble else time.monotonic()
        failures = self._trouble[2] + 1 if self._trouble else 1
        self._trouble = (error.status, since, failures)
        log(
            logging.WARNING if error.transient else logging.ERROR,
            message,
            action=action,
            status=error.status,
            error=str(error),
            server=self.api.server,
            **details,
        )

    def _api_answered(self) -> None:
        if self._trouble is None:
            return
        _, since, failures = self._trouble
        self._trouble = None
        log(
            logging.INFO,
            "kubernetes API calls succeed again",
            after_seconds=round(time.monotonic() - since, 1),
            failed_calls=failures,
        )

    # -- deregistering -------------------------------------------------------------------

    def deregister(self) -> int:
        """Delete the Agent if it is still ours, within the shutdown timeout; the exit code."""
        if not self._wrote_agent:
            log(logging.INFO, "stopped before registering; nothing to delete", agent=self.name)
            return EXIT_OK
        deadline = time.monotonic() + self.config.settings.shutdown_timeout_seconds
        backoff = Backoff(first=0.2, cap=2.0)
        last_error: ApiError | None = None
        while (remaining := deadline - time.monotonic()) > 0:
            timeout = min(remaining, DEFAULT_TIMEOUT_SECONDS)
            try:
                agent = self.api.get_agent(self.name, timeout=timeout)
                if agent is None:
                    log(logging.INFO, "deregistered: the agent was already gone", agent=self.name)
                    return EXIT_OK
                owner = registered_by(agent)
                if owner and self._identity and owner != self._identity:
                    log(logging.INFO, "left the agent in place: another identity registered it", registered_by=owner)
                    return EXIT_OK
                if not is_written_by(agent, self.source, self._uid):
                    writer = heartbeat_writer(agent)
                    log(logging.INFO, "left the agent in place: another writer took it over", writer=writer)
                    return EXIT_OK
                meta = agent["metadata"]
                self.api.delete_agent(self.name, meta["uid"], meta["resourceVersion"], timeout=timeout)
                self._delete_lease(timeout)
                log(logging.INFO, "deregistered: deleted the agent", agent=self.name, uid=meta["uid"])
                return EXIT_OK
            except ApiError as error:
                if error.status == 404:
                    continue  # gone meanwhile; the next read says so
                if error.status == 409:
                    continue  # changed since it was read; read it again
                if last_error is None or last_error.status != error.status:
                    log(logging.WARNING, "deregistering failed; retrying", error=str(error))
                last_error = error
                time.sleep(min(backoff.next(), max(deadline - time.monotonic(), 0)))
        log(
            logging.ERROR,
            "could not delete the agent before the shutdown timeout; its ownerReference or the operator will",
            agent=self.name,
            error=str(last_error) if last_error else None,
        )
        return EXIT_NOT_DEREGISTERED
