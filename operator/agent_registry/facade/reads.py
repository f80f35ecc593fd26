"""Answering reads: from the Redis index, else the API server, with this process's own writes on top.

Redis is a cache. When it is down, slow, or holds no index (the operator has not built it
yet, or it was flushed), every read is answered from the API server with the same
filters, so answers stay correct, only slower. When the API server is down too, there is
nothing left to answer from, and reads get 503.

The fallback LIST is shared: queries of a namespace that arrive while one is in flight
wait for it instead of starting their own. Without that, an overloaded facade (whose
Redis calls time out because its own event loop lags) turned every query into a LIST of
every agent, and at 3,000 agents grew to 3.6 GB within minutes (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from pydantic import ValidationError

from agent_registry.facade import metrics, versions
from agent_registry.facade.errors import bad_request, not_found, unavailable
from agent_registry.facade.kube import Kube
from agent_registry.facade.recent import RecentWrite, RecentWrites, is_older
from agent_registry.facade.routing import RoundRobin, preferred, rendezvous
from agent_registry.facade.versions import VersionConstraint
from agent_registry.index import IndexedAgent, IndexLost, IndexReader, IndexUnavailable
from agent_registry.index.reader import SEED_LIMIT, Listed, Listing, list_body, wire_json
from agent_registry.kubeapi import Unavailable
from agent_registry.schema.agent import AgentStatus, Phase
from agent_registry.schema.rest import AgentView, agent_view_from_resource

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Match:
    """An agent in a list answer: as the index serialised it, or a view (of this process's
    write, or from the API server)."""

    id: str
    name: str
    listed: Listed | None = None
    view: AgentView | None = None

    @classmethod
    def of_view(cls, view: AgentView) -> Match:
        return cls(view.id, view.name, view=view)

    @classmethod
    def of_listed(cls, listed: Listed) -> Match:
        return cls(listed.id, listed.name, listed=listed)

    def wire(self) -> bytes:
        if self.listed is not None:
            return self.listed.wire
        assert self.view is not None
        return wire_json(self.view.to_json())

    @property
    def version(self) -> str:
        return self.listed.version if self.listed is not None else self.agent().version

    def agent(self) -> AgentView:
        """The REST ``Agent`` (parsed again from the index's record when that is what this holds)."""
        if self.view is not None:
            return self.view
        assert self.listed is not None
        return self.listed.record.agent


@dataclass(frozen=True)
class Located:
    """An agent found by id, with what writes to it need."""

    agent_id: str
    namespace: str
    name: str
    uid: str
    view: AgentView
    interval_seconds: int | None = None
    """``spec.heartbeat``'s timing, when known: a heartbeat that only renews the Lease answers with it."""
    unreachable_after_seconds: int | None = None
    wire: bytes | None = None
    """``view`` serialised, when the index had it so (an answer by id sends it as it is)."""


def view_of(resource: dict[str, Any]) -> AgentView | None:
    """The REST view of an object from the API server, as the operator is about to index it,
    or None for one the registry cannot show (an invalid spec, or no id yet: the operator
    does not index those either).

    The stored phase lags the agent's report by one operator round trip: an object read
    just after a heartbeat and after an operator write of the phase before it (a
    registration's initialisation landing after the first heartbeat) holds the new report
    and the old phase. The operator indexes the phase the report maps to unless it judged
    the agent Unreachable, so the view does the same; otherwise a client could read a
    status older than the one it just wrote.
    """
    return _view(resource, reported_wins=False)


def written_view(write: RecentWrite) -> AgentView | None:
    """The view of an object this process just wrote.

    After a heartbeat the stored phase is still the one before it, Unreachable included;
    the operator will set the phase the agent reported (the agent just proved it is
    reachable), so show that rather than make the client wait for the operator to read
    its own write back.
    """
    if not write.view_known:
        write.view = None if write.resource is None else _view(write.resource, reported_wins=True)
        write.view_known = True
    view: AgentView | None = write.view
    return view


def _view(resource: dict[str, Any], *, reported_wins: bool) -> AgentView | None:
    try:
        view = agent_view_from_resource(resource)
        status = AgentStatus.model_validate(resource.get("status") or {})
    except (ValidationError, ValueError):
        return None
    if not view.id:
        return None
    judged_unreachable = status.phase == Phase.UNREACHABLE and not reported_wins
    if status.reported_status is not None and not judged_unreachable:
        view = view.model_copy(update={"status": status.reported_status.value})
    return view


def matches_filters(
    view: AgentView,
    agent_type: str | None,
    capabilities: Sequence[str],
    status: str | None,
    skills: Sequence[str] = (),
) -> bool:
    """The index's query rule (``index.keys.query_sets``): asking for healthy agents with a
    capability leaves out those that report it unhealthy; every skill must be on the card."""
    return (
        (agent_type is None or view.type == agent_type)
        and (status is None or view.status == status)
        and set(capabilities) <= set(view.capabilities)
        and set(skills) <= set(view.skills or ())
        and (status != "healthy" or all(view.capability_status(cap) != "unhealthy" for cap in capabilities))
    )


class IndexAccess:
    """The index behind a small circuit breaker: after a failure, Redis is skipped for
    ``retry_seconds`` so that an outage does not add a timeout to every read."""

    def __init__(self, reader: IndexReader | None, retry_seconds: float) -> None:
        self.reader = reader
        self.retry_seconds = retry_seconds
        self._skip_until = 0.0
        self.last_error: str | None = None if reader else "no index configured"

    async def call(self, read: Callable[[IndexReader], Awaitable[T]]) -> T:
        if self.reader is None:
            raise IndexUnavailable("no index configured")
        if time.monotonic() < self._skip_until:
            raise IndexUnavailable(f"skipped after a recent failure: {self.last_error}")
        try:
            result = await read(self.reader)
        except IndexUnavailable as exc:
            metrics.INDEX_ERRORS.inc()
            if self.last_error is None:
                logger.warning("the Redis index is unavailable (%s); reads fall back to the API server", exc)
            self.last_error = str(exc)
            # A lost index (Redis up, index not built yet) is cheap to ask about again; an
            # unreachable Redis is not.
            if not isinstance(exc, IndexLost):
                self._skip_until = time.monotonic() + self.retry_seconds
            raise
        if self.last_error is not None:
            logger.info("the Redis index answers again")
            self.last_error = None
        return result


@dataclass(frozen=True, slots=True)
class Viewed:
    """An agent as the API server's LIST gave it: its view, and its stored card as it is (None: none)."""

    view: AgentView
    card: Any


@dataclass
class _Listing:
    started: float
    task: asyncio.Future[list[Viewed]]


class Reads:
    def __init__(
        self,
        kube: Kube,
        index: IndexAccess,
        recent: RecentWrites,
        round_robin: RoundRobin,
        draws: random.Random | None = None,
    ) -> None:
        self.kube = kube
        self.index = index
        self.recent = recent
        self.round_robin = round_robin
        self.random = draws or random.Random()
        self._listings: dict[str, _Listing] = {}

    async def locate(self, namespace: str, agent_id: str) -> Located | None:
        """The agent with this id in this namespace, or None.

        A heartbeat that only renewed the agent's Lease wrote nothing the index or a stored
        write shows; its time is remembered apart, so ``last_seen`` reads back at once."""
        found = await self._locate(namespace, agent_id)
        renewed = self.recent.renewed_at(agent_id)
        if found is not None and renewed is not None and (found.view.last_seen or renewed) <= renewed:
            found = replace(found, view=found.view.model_copy(update={"last_seen": renewed}), wire=None)
        return found

    async def _locate(self, namespace: str, agent_id: str) -> Located | None:
        write = self.recent.get(agent_id)
        if write is not None and write.namespace != namespace:
            write = None
        if write is not None and write.deleted:
            return None
        record: IndexedAgent | None = None
        wire: bytes | None = None
        index_answered = False
        try:
            found = await self.index.call(lambda reader: reader.get_with_wire(agent_id))
            index_answered = True
        except IndexUnavailable:
            pass
        else:
            if found is not None:
                record, wire = found
        if record is not None and record.namespace != namespace:
            record = None
        if write is not None and record is None:
            # Not indexed yet, or deleted by someone else since: the API server tells which.
            try:
                resource = await self.kube.get_agent(namespace, write.name)
            except Unavailable:
                metrics.KUBE_ERRORS.inc()
            else:
                metrics.READS.labels(source="api").inc()
                unchanged = resource is not None and _version(resource) == write.resource_version
                # Unchanged since this process wrote it: show the write as the operator will see it.
                return _located(agent_id, write.resource if unchanged else resource, write if unchanged else None)
        if write is not None and (record is None or is_older(record.resource_version, write.resource_version)):
            view = written_view(write)
            if view is not None:
                metrics.READS.labels(source="recent").inc()
                uid = str((write.resource or {}).get("metadata", {}).get("uid", ""))
                return Located(agent_id, namespace, write.name, uid, view, *_timing(write.resource))
        if record is not None:
            metrics.READS.labels(source="index").inc()
            return Located(
                agent_id,
                namespace,
                record.name,
                record.uid,
                record.agent,
                record.interval_seconds,
                record.unreachable_after_seconds,
                wire,
            )
        # The index lacks it: too new for the index, or the index is down. The API server knows.
        try:
            resource = await self.kube.find_by_id(namespace, agent_id)
        except Unavailable as exc:
            metrics.KUBE_ERRORS.inc()
            if index_answered:
                return None
            raise unavailable(
                f"neither the index (Redis: {self.index.last_error}) nor the Kubernetes API server ({exc}) is available"
            ) from exc
        metrics.READS.labels(source="api").inc()
        return _located(agent_id, resource)

    async def query_json(
        self,
        namespace: str,
        agent_type: str | None = None,
        capabilities: Sequence[str] = (),
        status: str | None = None,
        skills: Sequence[str] = (),
    ) -> bytes:
        """The list answer's body (``{"agents": [...], "count": n}``) for the same query.

        An agent the index answered for is joined in as its stored wire form, serialised
        once per version of its record: a list of 1,000 agents costs no model work. An
        index answer this process has no writes to lay over is one body for every caller
        that shared the read."""
        answer = await self._answer(namespace, agent_type, capabilities, status, skills)
        if isinstance(answer, Listing):
            return answer.body()
        return list_body([match.wire() for match in answer])

    async def route(
        self,
        namespace: str,
        agent_type: str,
        capabilities: Sequence[str],
        key: str | None = None,
        version: VersionConstraint | None = None,
    ) -> Match | None:
        """One healthy agent of the type with every capability usable; None when none is.

        The index picks (``index.scripts.ROUTE``: free over full, healthy capabilities over
        degraded, then the sticky key, the load, or round robin). Usually it also finds the
        candidates, in one read whatever their number. When this process wrote to the
        namespace lately, or the version is constrained, the candidates are listed and
        filtered here (so that its writes count) and the index picks among them. Without the
        index, the pick follows the same rule without load (``routing``)."""
        seed = self.random.randrange(1, SEED_LIMIT)
        if version is None and next(self.recent.in_namespace(namespace), None) is None:
            try:
                picked = await self.index.call(
                    lambda reader: reader.route(namespace, agent_type, capabilities, seed=seed, key=key)
                )
            except IndexUnavailable:
                pass
            else:
                metrics.READS.labels(source="index").inc()
                if picked is None:
                    return None
                if picked.listed is not None:
                    return Match.of_listed(picked.listed)
        candidates = _matches_of(await self._answer(namespace, agent_type, capabilities, "healthy"))
        if version is not None:
            candidates = [match for match in candidates if version.allows(match.version)]
        if not candidates:
            return None
        by_id = {match.id: match for match in candidates}
        try:
            picked = await self.index.call(
                lambda reader: reader.route(namespace, agent_type, capabilities, seed=seed, key=key, among=list(by_id))
            )
        except IndexUnavailable:
            return self._pick_here(namespace, agent_type, capabilities, key, candidates)
        return None if picked is None else by_id.get(picked.id)

    def _pick_here(
        self, namespace: str, agent_type: str, capabilities: Sequence[str], key: str | None, candidates: list[Match]
    ) -> Match | None:
        wanted = sorted(set(capabilities))
        group = preferred(
            candidates, lambda match: any(match.agent().capability_status(cap) == "degraded" for cap in wanted)
        )
        if key is not None:
            return rendezvous(key, group, lambda match: match.id)
        return self.round_robin.pick((namespace, agent_type, tuple(wanted)), group)

    async def route_json(
        self,
        namespace: str,
        agent_type: str,
        capabilities: Sequence[str],
        key: str | None = None,
        version: str | None = None,
    ) -> bytes:
        """The route answer's body: the picked agent; 404 with the question when none
        matches, 400 for a version constraint that is none."""
        wanted_version: VersionConstraint | None = None
        if version is not None:
            try:
                wanted_version = versions.constraint(version)
            except ValueError as exc:
                raise bad_request(f"version: {exc}") from exc
        picked = await self.route(namespace, agent_type, capabilities, key, wanted_version)
        if picked is None:
            wanted = sorted(set(capabilities))
            with_caps = f" with capabilities {', '.join(wanted)}" if wanted else ""
            with_version = f" at version {version}" if version is not None else ""
            raise not_found(f"no healthy agent of type {agent_type!r}{with_caps}{with_version}")
        return picked.wire()

    async def _answer(
        self,
        namespace: str,
        agent_type: str | None,
        capabilities: Sequence[str],
        status: str | None,
        skills: Sequence[str] = (),
    ) -> Listing | list[Match]:
        """The index's answer as it is, or the matches with this process's recent writes laid over it."""
        try:
            listing = await self.index.call(
                lambda reader: reader.query_listed(namespace, agent_type, capabilities, status, skills)
            )
        except IndexUnavailable:
            return await self._query_api(namespace, agent_type, capabilities, status, skills)
        metrics.READS.labels(source="index").inc()
        writes = list(self.recent.in_namespace(namespace))
        if not writes:
            return listing
        matches: dict[str, Match] = {entry.id: Match.of_listed(entry) for entry in listing.entries}
        versions = {entry.id: entry.resource_version for entry in listing.entries}
        unsure: list[tuple[RecentWrite, AgentView]] = []
        for write in writes:
            if write.deleted:
                matches.pop(write.agent_id, None)
                continue
            if write.agent_id in versions and not is_older(versions[write.agent_id], write.resource_version):
                continue  # the index has caught up
            view = written_view(write)
            matching = view is not None and matches_filters(view, agent_type, capabilities, status, skills)
            if write.agent_id in versions:
                # The index holds an older version: the write decides whether it matches.
                if view is not None and matching:
                    matches[write.agent_id] = Match.of_view(view)
                else:
                    matches.pop(write.agent_id, None)
            elif view is not None and matching:
                # Absent from the answer: the index may lack the agent, or hold a newer
                # version that does not match (it went Unreachable since). Only its record says.
                unsure.append((write, view))
        for write, view in unsure:
            try:
                record = await self.index.call(_getter(write.agent_id))
            except IndexUnavailable:
                return await self._query_api(namespace, agent_type, capabilities, status, skills)
            index_lacks_it = record is None or record.namespace != namespace
            if index_lacks_it or (record is not None and is_older(record.resource_version, write.resource_version)):
                matches[write.agent_id] = Match.of_view(view)
        return _sorted(matches.values())

    async def _query_api(
        self,
        namespace: str,
        agent_type: str | None,
        capabilities: Sequence[str],
        status: str | None,
        skills: Sequence[str] = (),
    ) -> list[Match]:
        # Filter here rather than by the type label: the operator sets that label, and an
        # agent it has not seen yet must not be missing from the answer.
        listed = await self.every_agent_or_503(namespace)
        return _sorted(
            Match.of_view(entry.view)
            for entry in listed
            if matches_filters(entry.view, agent_type, capabilities, status, skills)
        )

    async def every_agent_or_503(self, namespace: str) -> list[Viewed]:
        """Every agent of the namespace from the API server (shared LIST); 503 when it is unavailable too."""
        try:
            listed = await self._every_agent(namespace)
        except Unavailable as exc:
            metrics.KUBE_ERRORS.inc()
            raise unavailable(
                f"neither the index (Redis: {self.index.last_error}) nor the Kubernetes API server ({exc}) is available"
            ) from exc
        metrics.READS.labels(source="api").inc()
        return listed

    async def _every_agent(self, namespace: str) -> list[Viewed]:
        """Every agent of the namespace from the API server, one LIST shared by concurrent callers.

        A LIST that started before this process's latest write may not show it, so a caller
        joins only a LIST that started after it (read-your-writes holds in the fallback too).
        The LIST runs as its own task: a caller that hangs up does not cancel it for the others.
        """
        listing = self._listings.get(namespace)
        if listing is None or listing.started < self.recent.last_write:
            listing = _Listing(time.monotonic(), asyncio.ensure_future(self._list_views(namespace)))
            self._listings[namespace] = listing
            listing.task.add_done_callback(lambda done: self._listed(namespace, done))
        return await asyncio.shield(listing.task)

    async def _list_views(self, namespace: str) -> list[Viewed]:
        metrics.FALLBACK_LISTS.inc()
        resources = await self.kube.list_agents(namespace)
        listed = []
        for resource in resources:
            view = view_of(resource)
            if view is not None:
                listed.append(Viewed(view, (resource.get("status") or {}).get("agentCard")))
        return listed

    def _listed(self, namespace: str, task: asyncio.Future[list[Viewed]]) -> None:
        listing = self._listings.get(namespace)
        if listing is not None and listing.task is task:
            del self._listings[namespace]
        if not task.cancelled():
            task.exception()  # retrieved, so an outcome nobody awaited is not logged as lost


def _located(agent_id: str, resource: dict[str, Any] | None, write: RecentWrite | None = None) -> Located | None:
    """The agent in an object from the API server, if the object is that agent."""
    if resource is None:
        return None
    view = written_view(write) if write is not None else view_of(resource)
    if view is None or view.id != agent_id:
        return None
    meta = resource.get("metadata") or {}
    return Located(
        agent_id,
        str(meta.get("namespace", "")),
        str(meta.get("name", "")),
        str(meta.get("uid", "")),
        view,
        *_timing(resource),
    )


def _timing(resource: dict[str, Any] | None) -> tuple[int | None, int | None]:
    heartbeat = ((resource or {}).get("spec") or {}).get("heartbeat") or {}
    interval, unreachable = heartbeat.get("intervalSeconds"), heartbeat.get("unreachableAfterSeconds")
    return (
        interval if isinstance(interval, int) else None,
        unreachable if isinstance(unreachable, int) else None,
    )


def _version(resource: dict[str, Any]) -> str:
    return str((resource.get("metadata") or {}).get("resourceVersion", ""))


def _getter(agent_id: str) -> Callable[[IndexReader], Awaitable[IndexedAgent | None]]:
    return lambda reader: reader.get(agent_id)


def _sorted(matches: Iterable[Match]) -> list[Match]:
    return sorted(matches, key=lambda match: (match.name, match.id))


def _matches_of(answer: Listing | list[Match]) -> list[Match]:
    return [Match.of_listed(entry) for entry in answer.entries] if isinstance(answer, Listing) else answer
