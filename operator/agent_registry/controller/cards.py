"""The agent's A2A card as the operator sees it: the card the index serves, and the
``CardValid`` condition. Pure decisions, so tests compare values without a cluster.

Conditions have one writer, the operator: they are one list in the status, and a
merge-patch replaces a list whole, so a second writer would erase the first's entries (and
the API server's merge of list-map entries is only for server-side apply, which the
operator's other writes do not use). So the sidecar writes what it found -- the card, or
``status.agentCardProblem`` when the card could not be fetched or did not validate -- and
the operator turns that into ``CardValid`` and an ``InvalidAgentCard`` Event, with the
rights it already has.

The operator validates a stored card again before it indexes it, once per content: the
writers validated it, but the CRD cannot (``schema/agent.py``), so a card written by hand
must not become what the registry serves without passing the same rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from agent_registry.schema import constants as c
from agent_registry.schema.card import StoredCard, canonical_json, card_errors, content_hash

CARD_VALID = "CardValid"
INVALID_CARD_EVENT = "InvalidAgentCard"
INVALID_STORED_CARD = "InvalidStoredCard"

Wanted = tuple[str, str, str]
"""A condition's status, reason and message."""


@dataclasses.dataclass(frozen=True)
class CardVerdict:
    card: StoredCard | None
    """The card to index and serve, or None (none stored, or the stored one breaks the rules)."""
    condition: Wanted | None
    """``CardValid`` as it should be; None when the agent has no card and reports no problem with one."""


def judge_card(status: Mapping[str, Any], known: StoredCard | None) -> CardVerdict:
    """What ``status`` says about the agent's card; ``known`` is the card judged last time,
    which an unchanged card reuses instead of being validated again."""
    raw = status.get("agentCard")
    card: StoredCard | None = None
    invalid: str | None = None
    if isinstance(raw, dict) and raw:
        try:
            unchanged = known is not None and content_hash(canonical_json(raw)) == known.hash
        except (TypeError, ValueError):
            unchanged = False  # not even JSON the canonical form takes (NaN): validation says why
        if unchanged:
            card = known
        else:
            try:
                card = StoredCard.validated(raw)
            except ValidationError as exc:
                invalid = "; ".join(f"agentCard.{line}" for line in card_errors(exc))
    elif raw is not None and raw != {}:
        invalid = "agentCard: must be a JSON object"
    problem = status.get("agentCardProblem")
    if isinstance(problem, dict) and problem.get("reason"):
        condition: Wanted | None = ("False", str(problem["reason"]), str(problem.get("message") or ""))
    elif invalid is not None:
        condition = ("False", INVALID_STORED_CARD, _bounded(f"the stored card breaks the card's rules: {invalid}"))
    elif card is not None:
        condition = ("True", "CardAccepted", f"A2A card {card.hash[:12]} with {len(card.skills)} skills")
    else:
        condition = None
    return CardVerdict(card, condition)


def with_condition(
    existing: list[dict[str, Any]], cond_type: str, wanted: Wanted | None, now: str
) -> list[dict[str, Any]] | None:
    """``existing`` with ``cond_type`` set to ``wanted`` (or removed, for None); None when it
    already is so. ``lastTransitionTime`` moves only when the status flips."""
    current = next((cond for cond in existing if cond.get("type") == cond_type), None)
    if wanted is None:
        if current is None:
            return None
        return [dict(cond) for cond in existing if cond.get("type") != cond_type]
    status, reason, message = wanted
    if current is not None and (current.get("status"), current.get("reason"), current.get("message")) == wanted:
        return None
    transition = current.get("lastTransitionTime") if current and current.get("status") == status else None
    condition = {
        "type": cond_type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition or now,
    }
    others = [dict(cond) for cond in existing if cond.get("type") != cond_type]
    return [*others, condition]


def _bounded(message: str) -> str:
    limit = c.MAX_MESSAGE_LENGTH
    return message if len(message) <= limit else message[: limit - 3] + "..."
