"""kopf handlers: framework settings, lifecycle, and the two watch-event handlers (Agents,
and agents' Leases).

Only ``@kopf.on.event`` watches Agents and Leases. kopf's change-detecting handlers (on.create,
on.update) keep a diff-base annotation and progress annotations on each object, and
timers/daemons add a finalizer; an event handler needs neither. So kopf never writes
an annotation or a finalizer on an Agent: a heartbeat costs one Lease renewal by the
agent (or one status patch, from an older writer) and no write by the operator unless the
phase changes, and `kubectl delete agent`
completes while the operator is down.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from typing import Any

import kopf

from agent_registry import kubeapi
from agent_registry.controller import metrics
from agent_registry.controller.announce import announce
from agent_registry.controller.cards import CARD_VALID, INVALID_CARD_EVENT, CardVerdict, judge_card, with_condition
from agent_registry.controller.initialisation import (
    agent_id_for,
    decide_initialisation,
    needs_initialisation,
    phase_status,
)
from agent_registry.controller.kube import agent_reference, now_rfc3339
from agent_registry.controller.runtime import Runtime
from agent_registry.controller.settings import OperatorSettings
from agent_registry.controller.sweeper import BeforeDelete
from agent_registry.controller.tracker import LeaseSeen
from agent_registry.schema import constants as c
from agent_registry.schema import lease
from agent_registry.schema.agent import AgentSpec

logger = logging.getLogger(__name__)

LEASE_GROUP, LEASE_VERSION = lease.API_VERSION.split("/")
LEASE_PLURAL = "leases"


def operator_memo(settings: OperatorSettings, before_delete: BeforeDelete | None = None) -> kopf.Memo:
    """The memo to start kopf with (``kopf.operator(memo=...)``): the settings this process
    read once, and the sweeper's test seam (``Sweeper.before_delete``), for ``configure``."""
    return kopf.Memo(settings=settings, before_delete=before_delete)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Started by `kopf run -m agent_registry.controller.handlers`, nobody has read them yet.
    config: OperatorSettings = memo.get("settings") or OperatorSettings()
    # No change-detecting handlers exist, so kopf stores no progress or diff-base; name
    # the storages anyway so that a future on.create/on.update handler writes under our
    # own prefix and into annotations, never into status (which heartbeats own).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=c.GROUP)
    settings.persistence.finalizer = f"{c.GROUP}/finalizer"
    settings.watching.server_timeout = config.watch_server_timeout_seconds
    settings.watching.client_timeout = config.watch_server_timeout_seconds + 60
    settings.watching.inactivity_timeout = config.watch_inactivity_timeout_seconds
    settings.watching.chunk_size = config.watch_chunk_size
    # Only agents' Leases, filtered by the API server, not by kopf after receiving them all.
    settings.watching.label_selectors[LEASE_GROUP, LEASE_PLURAL] = c.AGENT_LEASE_LABEL
    # kopf would turn its own log lines into k8s Events; at shutdown with thousands of
    # in-flight handlers that is thousands of "cancelled" Events and a slow exit. Our
    # handler never raises, and every Event worth posting is posted by us.
    settings.posting.enabled = False
    # A pod gets 30 s between SIGTERM and SIGKILL; exit by ourselves before that even if
    # a shutdown step hangs (seen once at 3,000 agents on an overloaded machine).
    settings.process.ultimate_exiting_timeout = config.shutdown_timeout_seconds
    # Leadership comes from our Lease (leader.py), not kopf peering.
    settings.peering.standalone = True
    # kopf's default backoffs grow to 21 s and then give up; after an outage the watch
    # would reconnect many seconds after the API server is back, while agents' heartbeats
    # go unseen. Retry briefly at first, then steadily, for as long as it takes.
    settings.networking.error_backoffs = SteadyBackoffs()
    runtime = Runtime(config, before_delete=memo.get("before_delete"))
    memo["runtime"] = runtime
    await runtime.start()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's watch authenticates with the credentials every other call of the registry
    uses, found by the same precedence (``kubeapi.credentials``); kopf asks again after a
    401, so a rotated service-account token is re-read. Exec plugins and auth-providers are
    renewed by the ``kubernetes`` loader, so those go to kopf's own login through it."""
    connection = kubeapi.load()
    if connection.refreshes_itself:
        return kopf.login_via_client(**kwargs)
    material = connection.material
    return kopf.ConnectionInfo(
        server=connection.server,
        ca_path=str(material.ca_file) if material.ca_file else None,
        ca_data=material.ca_data,
        insecure=material.insecure or None,
        token=connection.token,
        certificate_path=str(material.cert_file) if material.cert_file else None,
        private_key_path=str(material.key_file) if material.key_file else None,
        default_namespace=connection.namespace,
    )


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.stop()


@kopf.on.probe(id="leader")
def probe_leader(memo: kopf.Memo, **_: Any) -> bool:
    runtime: Runtime | None = memo.get("runtime")
    return bool(runtime and runtime.is_leader())


@kopf.on.probe(id="agents")
def probe_agents(memo: kopf.Memo, **_: Any) -> int:
    runtime: Runtime | None = memo.get("runtime")
    return len(runtime.tracker.agents) if runtime else 0


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL)
async def agent_event(event: kopf.RawEvent, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo["runtime"]
    started = time.monotonic()
    runtime.sight.watch_delivered(str(body.get("metadata", {}).get("namespace", "")), "agents")
    try:
        await _handle(runtime, event, dict(body), patch)
    except Exception as exc:
        # Never let one bad object crash-loop the handler or block the others.
        meta = body.get("metadata", {})
        logger.exception("could not process agent %s/%s", meta.get("namespace"), meta.get("name"))
        await runtime.kube.post_event(
            agent_reference(meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")),
            "Warning",
            "ProcessingFailed",
            f"The operator could not process this Agent: {exc}",
        )
    finally:
        metrics.EVENT_LAG.observe(time.monotonic() - started)


@kopf.on.event(LEASE_GROUP, LEASE_VERSION, LEASE_PLURAL, labels={c.AGENT_LEASE_LABEL: kopf.PRESENT})
async def lease_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """An agent's Lease changed: a renewal is a heartbeat (``schema.lease``). Only Leases
    with the agent label are watched at all (a server-side selector, set in ``configure``):
    node and leader-election Leases renew all the time and are none of the operator's business."""
    runtime: Runtime = memo["runtime"]
    namespace = str(body.get("metadata", {}).get("namespace", ""))
    runtime.sight.watch_delivered(namespace, "leases")
    owner = lease.owning_agent(body)
    if owner is None:
        return
    agent_name, agent_uid = owner
    meta = body.get("metadata", {})
    if event.get("type") == "DELETED":
        runtime.tracker.lease_gone(namespace, agent_name, str(meta.get("uid", "")))
        return
    seen = LeaseSeen(
        agent_uid=agent_uid,
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        signature=lease.renewal_signature(body),
        load=lease.load_of(body),
    )
    agent = runtime.tracker.observe_lease(namespace, agent_name, seen, time.monotonic())
    if agent is not None:
        metrics.HEARTBEATS.labels(via="lease").inc()
        runtime.sweeper.renewed(agent)


async def _handle(runtime: Runtime, event: kopf.RawEvent, body: dict[str, Any], patch: kopf.Patch) -> None:
    meta = body.get("metadata", {})
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    if event.get("type") == "DELETED":
        gone = runtime.tracker.forget(namespace, name)
        if gone is not None:
            logger.info("agent %s/%s deleted", namespace, name)
            if gone.lease is not None and runtime.is_leader():
                # The garbage collector would delete it too, but only once it knows the CRD
                # and gets to it; until the Lease is gone its writer keeps renewing it and
                # does not learn that its Agent went (its next renewal's 404 tells it).
                runtime.writes.start(gone.key, runtime.sweeper.delete_lease(gone.namespace, gone.lease))
        runtime.index_forget(namespace, name)
        return
    if meta.get("deletionTimestamp"):
        return

    spec_error = _spec_error(body)
    observation = runtime.tracker.observe(body, time.monotonic())
    agent = observation.agent
    if observation.is_heartbeat:
        metrics.HEARTBEATS.labels(via="status").inc()
    if spec_error is not None:
        agent.initialised = True  # nothing to initialise until the spec is fixed
        await runtime.warn_invalid_once(agent, spec_error)
        return

    status = body.get("status") or {}
    labels = meta.get("labels") or {}
    agent_id = agent_id_for(agent, status, labels)
    agent.agent_id = agent_id
    agent.initialised = bool(status.get("agentId")) and labels.get(c.AGENT_ID_LABEL) == status.get("agentId")
    needs_init = needs_initialisation(status, labels, agent_id)
    desired = observation.desired_phase
    if not status.get("agentId"):
        # Index it under the id it is about to get, not under nothing.
        body = {**body, "status": {**status, "agentId": agent_id}}
    verdict = judge_card(status, agent.card)
    agent.card = verdict.card
    runtime.index_put(body, agent, desired)
    if not runtime.is_leader():
        return

    now = now_rfc3339()
    ref = agent_reference(namespace, name, agent.uid)
    if needs_init:
        init = decide_initialisation(agent, agent_id, desired, now)
        if any(labels.get(key) != value for key, value in init.labels.items()):
            patch.metadata["labels"] = init.labels  # else one write, the status, not two
        patch.status.update(init.status)
        agent.initialised, agent.phase = True, desired
        if init.announce:
            agent.registered_announced = True
            await runtime.registered_event(ref, init.event_message)
            logger.info("agent %s/%s registered as %s (%s)", namespace, name, agent_id, desired.value)
    elif observation.phase_changed:
        patch.status.update(phase_status(agent, desired, now))
        agent.phase = desired
        await announce(runtime.kube.post_event, ref, observation.previous_phase, desired, observation.recovered)
    elif agent.generation != status.get("observedGeneration"):
        patch.status["observedGeneration"] = agent.generation
    await _card_condition(runtime, agent.conditions, verdict, patch, ref, now)


async def _card_condition(
    runtime: Runtime,
    seen: list[dict[str, Any]],
    verdict: CardVerdict,
    patch: kopf.Patch,
    ref: dict[str, str],
    now: str,
) -> None:
    """Write ``CardValid`` when it differs from what the card calls for, into the same patch
    as any phase change (whose conditions already keep the others); a new problem is also
    an Event and a log line, once, as the condition changes."""
    base = patch.status.get("conditions", seen)
    conditions = with_condition(list(base), CARD_VALID, verdict.condition, now)
    if conditions is None:
        return
    patch.status["conditions"] = conditions
    if verdict.condition is not None and verdict.condition[0] == "False":
        _, reason, message = verdict.condition
        where = f"{ref['namespace']}/{ref['name']}"
        logger.warning("agent %s: its A2A card was not taken (%s): %s", where, reason, message)
        await runtime.kube.post_event(ref, "Warning", INVALID_CARD_EVENT, f"{reason}: {message}")


class SteadyBackoffs:
    """Re-iterable and endless: 0.5, 1, 1, 2, then 2 s forever."""

    def __iter__(self) -> Iterator[float]:
        yield from (0.5, 1.0, 1.0)
        yield from itertools.repeat(2.0)


def _spec_error(body: dict[str, Any]) -> str | None:
    try:
        AgentSpec.model_validate(body.get("spec") or {})
    except ValueError as exc:
        return str(exc).replace("\n", "; ")
    return None
