"""The key layout: the one place that names Redis keys.

Everything but two pointer keys lives in a *generation*, so a full resync can build a
complete new index beside the live one and switch to it in one step::

    <p> = <prefix>:v3                 format version: a new layout gets a fresh keyspace
    <p>:current                       string  id of the live generation (the pointer)
    <p>:pending                       set     ids of generations a resync is building
    <p>:rr:<scope>:<type>:<caps>      string  a routing question's round-robin counter (expires)
    <p>:changes                       stream  change feed watchers read (``changes``), capped, expiring with the index
    <p>:g:<gen>:meta                  hash    marker: agents (record count), state, created
    <p>:g:<gen>:rec                   hash    agent id -> IndexedAgent JSON
    <p>:g:<gen>:names                 hash    "<namespace>/<name>" -> agent id
    <p>:g:<gen>:mem                   hash    agent id -> its name field and set names, one a line
    <p>:g:<gen>:keys                  set     every set key of the generation, for refresh()
    <p>:g:<gen>:touched               set     ids changed live while the generation was pending
    <p>:g:<gen>:picks                 hash    agent id -> routes picked it since its last record (load estimate)
    <p>:g:<gen>:cards                 hash    agent id -> its A2A card, canonical JSON (only agents with one)
    <p>:g:<gen>:s:<scope>:all         set     agent ids in the scope
    <p>:g:<gen>:s:<scope>:type:<t>    set
    <p>:g:<gen>:s:<scope>:cap:<c>     set
    <p>:g:<gen>:s:<scope>:skill:<k>   set     its card has skill id k
    <p>:g:<gen>:s:<scope>:status:<s>  set     REST status: healthy|degraded|unhealthy|unreachable
    <p>:g:<gen>:s:<scope>:capok:<c>   set     has capability c and does not report it unhealthy
    <p>:g:<gen>:s:<scope>:capdeg:<c>  set     reports capability c degraded
    <p>:g:<gen>:s:<scope>:loaded      set     reports its load
    <p>:g:<gen>:s:<scope>:full        set     reports as many tasks in flight as it accepts, or more

``<scope>`` is a namespace, or ``*`` for all namespaces: each agent is in both, so a
cluster-wide query is one SINTER like a namespaced one. No namespace can be named ``*``,
and types, capabilities and namespaces never contain ``:`` (``IndexedAgent`` checks), so
names cannot collide. ``mem`` remembers an agent's memberships so an upsert can leave the
sets it no longer belongs to without parsing the old record in Lua.

A query with ``status=healthy`` and capabilities intersects ``capok`` sets instead of
``cap`` ones, so an agent that reports a capability unhealthy drops out of it with no
filtering after the intersection (the list answer and the route read the same sets).
Format v3 added ``capok``, ``capdeg``, ``loaded``, ``full``, ``picks``, ``skill`` and
``cards``: a v2 index lacks them, so an upgraded facade must not read one (it reads the API
server until the upgraded operator has built v3).

Cards live in a hash of their own, not in the records: a list answer reads every matching
record, and a card (up to 32 KiB) is needed only by the card routes. A skill id has no
whitespace and comes last in its set's name, so it cannot reach into another set's name
(``schema.card``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from agent_registry.index.record import IndexedAgent

DEFAULT_PREFIX: Final = "agent-registry"
FORMAT_VERSION: Final = "v3"
ALL_NAMESPACES: Final = "*"
REST_STATUSES: Final = ("healthy", "degraded", "unhealthy", "unreachable")

# Per-generation key suffixes; the Lua scripts get them from here too.
META: Final = "meta"
RECORDS: Final = "rec"
NAMES: Final = "names"
MEMBERSHIPS: Final = "mem"
KEY_REGISTRY: Final = "keys"
TOUCHED: Final = "touched"
PICKS: Final = "picks"
CARDS: Final = "cards"
FIXED_KEYS: Final = (META, RECORDS, NAMES, MEMBERSHIPS, KEY_REGISTRY, TOUCHED, PICKS, CARDS)


@dataclass(frozen=True)
class KeyLayout:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or any(ch.isspace() for ch in self.prefix):
            raise ValueError(f"key prefix {self.prefix!r} must be non-empty without whitespace")

    @property
    def root(self) -> str:
        return f"{self.prefix}:{FORMAT_VERSION}"

    @property
    def current(self) -> str:
        return f"{self.root}:current"

    @property
    def pending(self) -> str:
        return f"{self.root}:pending"

    @property
    def changes(self) -> str:
        """The change feed (``changes``): outside the generations, so a resync does not cut it."""
        return f"{self.root}:changes"

    @property
    def generations(self) -> str:
        """What every generation key starts with; the scripts append ``<gen>:``."""
        return f"{self.root}:g:"

    @property
    def generations_pattern(self) -> str:
        """A SCAN pattern for all generation keys (the prefix may contain glob characters)."""
        return re.sub(r"([\\*?\[\]])", r"\\\1", self.generations) + "*"

    def route_counter(self, namespace: str, agent_type: str, capabilities: Sequence[str]) -> str:
        """The round-robin counter of one routing question (capabilities in any order)."""
        return f"{self.root}:rr:{namespace}:{agent_type}:{','.join(sorted(set(capabilities)))}"

    def generation(self, gen: str) -> str:
        return f"{self.generations}{gen}:"

    def key(self, gen: str, suffix: str) -> str:
        return self.generation(gen) + suffix


def name_field(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def all_set(scope: str) -> str:
    return f"s:{scope}:all"


def type_set(scope: str, agent_type: str) -> str:
    return f"s:{scope}:type:{agent_type}"


def capability_set(scope: str, capability: str) -> str:
    return f"s:{scope}:cap:{capability}"


def skill_set(scope: str, skill: str) -> str:
    return f"s:{scope}:skill:{skill}"


def status_set(scope: str, status: str) -> str:
    return f"s:{scope}:status:{status}"


def usable_capability_set(scope: str, capability: str) -> str:
    return f"s:{scope}:capok:{capability}"


def degraded_capability_set(scope: str, capability: str) -> str:
    return f"s:{scope}:capdeg:{capability}"


def load_reporting_set(scope: str) -> str:
    return f"s:{scope}:loaded"


def full_set(scope: str) -> str:
    return f"s:{scope}:full"


def _scope(namespace: str | None) -> str:
    return ALL_NAMESPACES if namespace is None else namespace


def memberships(record: IndexedAgent) -> str:
    """The ``mem`` entry: the record's name field, then every set it belongs to, one a line."""
    view = record.agent
    lines = [name_field(record.namespace, view.name)]
    for scope in (record.namespace, ALL_NAMESPACES):
        lines.append(all_set(scope))
        lines.append(type_set(scope, view.type))
        lines.append(status_set(scope, view.status))
        for capability in view.capabilities:
            lines.append(capability_set(scope, capability))
            health = view.capability_status(capability)
            if health != "unhealthy":
                lines.append(usable_capability_set(scope, capability))
            if health == "degraded":
                lines.append(degraded_capability_set(scope, capability))
        lines.extend(skill_set(scope, skill) for skill in view.skills or ())
        if record.load is not None:
            lines.append(load_reporting_set(scope))
            if record.load.full:
                lines.append(full_set(scope))
    return "\n".join(lines)


def query_sets(
    namespace: str | None,
    agent_type: str | None,
    capabilities: Sequence[str],
    status: str | None,
    skills: Sequence[str] = (),
) -> list[str]:
    """The sets whose intersection answers a query (never empty: no filter means the scope's ``all``).

    Asking for healthy agents with a capability asks for agents that do not report that
    capability unhealthy. Every skill asked for must be on the agent's card."""
    scope = _scope(namespace)
    sets = []
    if agent_type is not None:
        sets.append(type_set(scope, agent_type))
    if status is not None:
        sets.append(status_set(scope, status))
    per_capability = usable_capability_set if status == "healthy" else capability_set
    sets.extend(per_capability(scope, capability) for capability in dict.fromkeys(capabilities))
    sets.extend(skill_set(scope, skill) for skill in dict.fromkeys(skills))
    return sets or [all_set(scope)]


@dataclass(frozen=True)
class RouteSets:
    """The sets a route pick reads besides its candidates: who reports load, who is full,
    who reports one of the wanted capabilities degraded."""

    load_reporting: str
    full: str
    degraded: tuple[str, ...]


def route_sets(namespace: str | None, capabilities: Sequence[str]) -> RouteSets:
    scope = _scope(namespace)
    return RouteSets(
        load_reporting_set(scope),
        full_set(scope),
        tuple(degraded_capability_set(scope, capability) for capability in dict.fromkeys(capabilities)),
    )
