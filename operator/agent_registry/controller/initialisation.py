"""The first initialisation of an Agent: its id in a label and in status, its type label,
its phase and conditions, and a ``Registered`` Event. Pure decisions.

Two writers apply them: the watch-event handler (through kopf's patch), for agents it sees
while it leads, and the sweeper (through the API client), for agents a standby saw before
it became leader. Both decide here, so both write the same thing.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Mapping
from typing import Any

from agent_registry.controller.conditions import build_conditions
from agent_registry.controller.tracker import TrackedAgent
from agent_registry.schema import constants as c
from agent_registry.schema.agent import UUID_PATTERN, Phase

_UUID = re.compile(UUID_PATTERN)


@dataclasses.dataclass(frozen=True)
class Initialisation:
    """What to write on an Agent that does not yet carry its id in both places."""

    agent_id: str
    labels: dict[str, str]
    status: dict[str, Any]
    announce: bool
    """Post the ``Registered`` Event: once per agent, by the write that gives it its
    ``registeredAt``."""

    @property
    def event_message(self) -> str:
        return f"Agent registered with id {self.agent_id}, phase {self.status['phase']}."


def agent_id_for(agent: TrackedAgent, status: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """The Agent's id: the one in status, else one the facade chose (the label), else the one
    this process already gave it, else a new one.

    An id, once given, never changes: a stale event (one that predates our own patch)
    must not mint a second one, or label and status would flip between two ids.
    """
    return str(status.get("agentId") or adopted_id(labels) or agent.agent_id or uuid.uuid4())


def adopted_id(labels: Mapping[str, str]) -> str | None:
    """An id chosen by the REST facade at registration, carried in the label."""
    label = str(labels.get(c.AGENT_ID_LABEL, ""))
    return label if _UUID.match(label) else None


def needs_initialisation(status: Mapping[str, Any], labels: Mapping[str, str], agent_id: str) -> bool:
    """Whether status and label do not both carry ``agent_id`` yet."""
    return not status.get("agentId") or labels.get(c.AGENT_ID_LABEL) != agent_id


def phase_status(agent: TrackedAgent, phase: Phase, now: str) -> dict[str, Any]:
    """The status fields of a phase the operator writes on a watch event: the phase, its
    conditions (keeping each lastTransitionTime that did not flip) and the generation seen."""
    return {
        "phase": phase.value,
        "conditions": build_conditions(phase, now, agent.conditions, agent.generation),
        "observedGeneration": agent.generation,
    }


def decide_initialisation(agent: TrackedAgent, agent_id: str, phase: Phase, now: str) -> Initialisation:
    """Labels and status that initialise ``agent`` with ``agent_id`` in ``phase``.

    ``registeredAt`` is written, and ``Registered`` announced, only when the object has no
    ``registeredAt`` yet (the facade writes one at registration; an operator restart or a
    new leader must not move it) and this process has not announced the agent already (a
    stale event that predates our own patch lacks it too).
    """
    status = {"agentId": agent_id, **phase_status(agent, phase, now)}
    announce = not agent.registered_at and not agent.registered_announced
    if announce:
        status["registeredAt"] = now
    return Initialisation(
        agent_id=agent_id,
        labels={c.AGENT_ID_LABEL: agent_id, c.AGENT_TYPE_LABEL: agent.agent_type},
        status=status,
        announce=announce,
    )
