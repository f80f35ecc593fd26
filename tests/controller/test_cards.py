"""How the operator judges an agent's card: the card it indexes, and the CardValid condition (pure, no cluster)."""

from __future__ import annotations

from agent_registry.controller.cards import CARD_VALID, INVALID_STORED_CARD, judge_card, with_condition
from agent_registry.schema.card import StoredCard
from cards import a2a_card

NOW, LATER = "2026-12-01T10:00:00Z", "2026-12-01T10:05:00Z"


def test_a_stored_card_is_indexed_and_valid() -> None:
    stored = StoredCard.validated(a2a_card())
    verdict = judge_card(stored.status_fields(), None)
    assert verdict.card == stored
    assert verdict.condition == ("True", "CardAccepted", f"A2A card {stored.hash[:12]} with 2 skills")


def test_an_unchanged_card_is_not_validated_again() -> None:
    stored = StoredCard.validated(a2a_card())
    # A card the operator judged before: the same content reuses that judgement.
    assert judge_card(stored.status_fields(), stored).card is stored
    other = StoredCard.validated(a2a_card(skills=("rightsizing",)))
    assert judge_card(other.status_fields(), stored).card == other


def test_a_problem_the_sidecar_reports_is_the_condition_and_the_last_good_card_stays_served() -> None:
    stored = StoredCard.validated(a2a_card())
    status = {
        **stored.status_fields(),
        "agentCardProblem": {"reason": "InvalidCard", "message": "skills[0].tags: Field required"},
    }
    verdict = judge_card(status, None)
    assert verdict.condition == ("False", "InvalidCard", "skills[0].tags: Field required")
    assert verdict.card == stored


def test_a_stored_card_that_breaks_the_rules_is_not_served() -> None:
    broken = a2a_card()
    del broken["skills"][0]["tags"]
    verdict = judge_card({"agentCard": broken}, None)
    assert verdict.card is None
    assert verdict.condition is not None
    status, reason, message = verdict.condition
    assert (status, reason) == ("False", INVALID_STORED_CARD)
    assert "agentCard.skills[0].tags: Field required" in message


def test_no_card_and_no_problem_is_no_condition() -> None:
    assert judge_card({}, None).condition is None
    assert judge_card({"agentCard": None, "agentCardProblem": None}, None).card is None


def test_the_condition_is_written_only_when_it_changes_and_keeps_the_others() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "Healthy", "message": "", "lastTransitionTime": NOW}
    added = with_condition([ready], CARD_VALID, ("False", "InvalidJSON", "the card is not JSON"), NOW)
    assert added is not None
    assert added[0] == ready
    assert added[1] == {
        "type": CARD_VALID,
        "status": "False",
        "reason": "InvalidJSON",
        "message": "the card is not JSON",
        "lastTransitionTime": NOW,
    }
    assert with_condition(added, CARD_VALID, ("False", "InvalidJSON", "the card is not JSON"), LATER) is None
    # Another problem, still False: the transition time stays.
    moved = with_condition(added, CARD_VALID, ("False", "TooLarge", "too big"), LATER)
    assert moved is not None and moved[1]["lastTransitionTime"] == NOW
    fixed = with_condition(moved, CARD_VALID, ("True", "CardAccepted", "ok"), LATER)
    assert fixed is not None and fixed[1]["lastTransitionTime"] == LATER
    assert with_condition(fixed, CARD_VALID, None, LATER) == [ready]
    assert with_condition([ready], CARD_VALID, None, LATER) is None
