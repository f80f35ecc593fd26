"""Status conditions for a phase. Pure functions, so tests compare dicts without a cluster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent_registry.schema.agent import Phase

READY = "Ready"
REACHABLE = "Reachable"

_REASONS: dict[Phase, tuple[str, str]] = {
    Phase.HEALTHY: ("Healthy", "the agent reports healthy"),
    Phase.DEGRADED: ("Degraded", "the agent reports degraded"),
    Phase.UNHEALTHY: ("Unhealthy", "the agent reports unhealthy"),
    Phase.UNREACHABLE: ("Unreachable", "no heartbeat within unreachableAfterSeconds"),
}


def build_conditions(
    phase: Phase,
    now: str,
    existing: Sequence[Mapping[str, Any]] | None,
    generation: int | None = None,
    detail: str | None = None,
) -> list[dict[str, Any]]:
    """The Ready and Reachable conditions for ``phase``.

    ``lastTransitionTime`` moves only when a condition's status flips, per the
    Kubernetes API conventions; other conditions someone else wrote are kept.
    """
    reason, message = _REASONS[phase]
    if detail:
        message = f"{message}: {detail}"
    wanted = {
        READY: ("True" if phase == Phase.HEALTHY else "False", reason, message),
        REACHABLE: (
            "False" if phase == Phase.UNREACHABLE else "True",
            "HeartbeatMissed" if phase == Phase.UNREACHABLE else "HeartbeatReceived",
            message if phase == Phase.UNREACHABLE else "heartbeats are arriving",
        ),
    }
    old = {cond.get("type"): cond for cond in existing or []}
    result: list[dict[str, Any]] = []
    for cond_type, (status, cond_reason, cond_message) in wanted.items():
        previous = old.get(cond_type)
        transition = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
        condition: dict[str, Any] = {
            "type": cond_type,
            "status": status,
            "reason": cond_reason,
            "message": cond_message,
            "lastTransitionTime": transition or now,
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        result.append(condition)
    result.extend(dict(cond) for cond_type, cond in old.items() if cond_type not in wanted)
    return result
