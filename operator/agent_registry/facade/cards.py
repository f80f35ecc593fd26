"""Serving agents' A2A cards: one agent's (``GET /agents/{id}/agent-card.json``) and the
catalogue of healthy agents' (``GET /agents/cards``), so an A2A client finds its peers
through the registry.

A card comes from the index's card hash, where the operator put it after validating it;
from this process's own recent write while the index is older (a card just registered is
served at once, as every read here reads its writes); and from the API server when the
index is unavailable, validated here the way the operator would, so every path serves only
cards that pass ``schema.card``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agent_registry.facade import metrics
from agent_registry.facade.errors import unavailable
from agent_registry.facade.reads import Located, Reads, matches_filters, written_view
from agent_registry.facade.recent import RecentWrite, is_older
from agent_registry.index import IndexedAgent, IndexUnavailable
from agent_registry.index.reader import Carded, IndexReader, wire_json
from agent_registry.kubeapi import Unavailable
from agent_registry.schema.card import StoredCard, content_hash

logger = logging.getLogger(__name__)

HEALTHY = "healthy"


@dataclass(frozen=True, slots=True)
class _Entry:
    agent_id: str
    name: str
    card: bytes

    def wire(self) -> bytes:
        # The card is canonical JSON already: joined in as it is, never parsed for an answer.
        head = wire_json({"agent_id": self.agent_id, "name": self.name})
        return head[:-1] + b',"card":' + self.card + b"}"


def card_of(resource: dict[str, Any] | None) -> StoredCard | None:
    """The card stored on an Agent object, if it passes the card's rules (None otherwise)."""
    raw = ((resource or {}).get("status") or {}).get("agentCard")
    if not raw:
        return None
    try:
        return StoredCard.validated(raw)
    except ValidationError as exc:
        meta = (resource or {}).get("metadata") or {}
        logger.warning("not serving the card of %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)
        return None


def written_card(write: RecentWrite) -> StoredCard | None:
    """The card of an object this process just wrote, validated once per write."""
    if not write.card_known:
        write.card = card_of(write.resource)
        write.card_known = True
    card: StoredCard | None = write.card
    return card


class CardReads:
    def __init__(self, reads: Reads) -> None:
        self.reads = reads

    async def card(self, located: Located) -> StoredCard | None:
        """The card of an agent found by id (None: it has none)."""
        reads = self.reads
        write = reads.recent.get(located.agent_id)
        if write is not None and (write.namespace != located.namespace or write.deleted):
            write = None
        try:
            found = await reads.index.call(_card_getter(located.agent_id))
        except IndexUnavailable:
            pass
        else:
            if found is not None and found[0].namespace == located.namespace:
                record, card = found
                if write is None or not is_older(record.resource_version, write.resource_version):
                    metrics.READS.labels(source="index").inc()
                    return _indexed(record, card)
        if write is not None:
            metrics.READS.labels(source="recent").inc()
            return written_card(write)
        # Too new for the index, or the index is down: the API server has the object.
        try:
            resource = await reads.kube.get_agent(located.namespace, located.name)
        except Unavailable as exc:
            metrics.KUBE_ERRORS.inc()
            raise unavailable(
                f"neither the index (Redis: {reads.index.last_error}) nor the Kubernetes API server ({exc}) "
                "is available"
            ) from exc
        metrics.READS.labels(source="api").inc()
        return card_of(resource)

    async def catalogue_json(
        self, namespace: str, agent_type: str | None, capabilities: Sequence[str], skills: Sequence[str]
    ) -> bytes:
        """``{"cards": [{agent_id, name, card}], "count": n}``: the healthy agents that match
        every filter and have a card, by name."""
        reads = self.reads
        entries: list[_Entry] | None = None
        try:
            carded = await reads.index.call(
                lambda reader: reader.query_cards(namespace, agent_type, capabilities, HEALTHY, skills)
            )
        except IndexUnavailable:
            pass
        else:
            metrics.READS.labels(source="index").inc()
            entries = await self._with_writes(namespace, carded, agent_type, capabilities, skills)
        if entries is None:  # no index, or it went away half-way
            entries = await self._from_api(namespace, agent_type, capabilities, skills)
        ordered = sorted(entries, key=lambda entry: (entry.name, entry.agent_id))
        wires = b",".join(entry.wire() for entry in ordered)
        return b'{"cards":[' + wires + b'],"count":' + str(len(ordered)).encode() + b"}"

    async def _with_writes(
        self,
        namespace: str,
        carded: list[Carded],
        agent_type: str | None,
        capabilities: Sequence[str],
        skills: Sequence[str],
    ) -> list[_Entry] | None:
        """The index's answer with this process's recent writes laid over it, as ``Reads`` lays
        them over a list; None when the index stops answering meanwhile."""
        entries = {item.listed.id: _Entry(item.listed.id, item.listed.name, item.card.encode()) for item in carded}
        versions = {item.listed.id: item.listed.resource_version for item in carded}
        unsure: list[tuple[_Entry, str]] = []
        for write in self.reads.recent.in_namespace(namespace):
            if write.deleted:
                entries.pop(write.agent_id, None)
                continue
            if write.agent_id in versions and not is_older(versions[write.agent_id], write.resource_version):
                continue  # the index has caught up
            view, card = written_view(write), written_card(write)
            matching = (
                view is not None
                and card is not None
                and matches_filters(view, agent_type, capabilities, HEALTHY, skills)
            )
            entry = _Entry(write.agent_id, write.name, card.canonical) if matching and card is not None else None
            if write.agent_id in versions:
                if entry is not None:
                    entries[write.agent_id] = entry
                else:
                    entries.pop(write.agent_id, None)
            elif entry is not None:
                # The index may lack it, or hold a newer version that does not match.
                unsure.append((entry, write.resource_version))
        for entry, written_version in unsure:
            try:
                found = await self.reads.index.call(_card_getter(entry.agent_id))
            except IndexUnavailable:
                return None
            lacks = found is None or found[0].namespace != namespace
            if lacks or (found is not None and is_older(found[0].resource_version, written_version)):
                entries[entry.agent_id] = entry
        return list(entries.values())

    async def _from_api(
        self, namespace: str, agent_type: str | None, capabilities: Sequence[str], skills: Sequence[str]
    ) -> list[_Entry]:
        entries = []
        for listed in await self.reads.every_agent_or_503(namespace):
            view = listed.view
            if listed.card is None or not matches_filters(view, agent_type, capabilities, HEALTHY, skills):
                continue
            card = card_of({"status": {"agentCard": listed.card}, "metadata": {"name": view.name}})
            if card is not None:
                entries.append(_Entry(view.id, view.name, card.canonical))
        return entries


def _indexed(record: IndexedAgent, card: str | None) -> StoredCard | None:
    if card is None:
        return None
    canonical = card.encode()
    return StoredCard(canonical, record.card_hash or content_hash(canonical), tuple(record.agent.skills or ()))


def _card_getter(agent_id: str) -> Any:
    async def get(reader: IndexReader) -> tuple[IndexedAgent, str | None] | None:
        return await reader.card(agent_id)

    return get
