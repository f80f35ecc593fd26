"""The A2A card model on its own: what it keeps, what it refuses and how it names the field (no cluster)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agent_registry.schema.card import MAX_SKILLS, AgentCard, StoredCard, card_errors
from cards import BAD_CARDS, BadCard, a2a_card


def test_a_valid_card_keeps_its_own_fields_and_drops_the_rest() -> None:
    sent = a2a_card()
    sent["internalToken"] = "s3cret"  # something else of the agent's that must not leak
    sent["skills"][0]["owner"] = "team-a"
    sent["capabilities"]["gpu"] = True
    # Inside the maps A2A leaves open, everything is the card's own.
    sent["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["bearerFormat"] = "JWT"

    stored = AgentCard.model_validate(sent).to_json()

    assert "internalToken" not in stored
    assert "owner" not in stored["skills"][0]
    assert stored["capabilities"] == {"streaming": True, "pushNotifications": False}
    assert stored["securitySchemes"] == {
        "bearer": {"httpAuthSecurityScheme": {"scheme": "Bearer", "bearerFormat": "JWT"}}
    }
    assert "iconUrl" not in stored  # not given, not invented
    assert stored["skills"][1] == {
        "id": "spot_migration",
        "name": "spot migration",
        "description": "does spot_migration",
        "tags": ["cost", "spot_migration"],
    }


def test_signatures_are_stored_as_they_came() -> None:
    sent = a2a_card()
    sent["signatures"] = [{"protected": "eyJhbGciOiJFUzI1NiJ9", "signature": "c2lnbmF0dXJl", "header": {"kid": "k1"}}]
    assert AgentCard.model_validate(sent).to_json()["signatures"] == sent["signatures"]


def test_the_hash_is_the_same_for_the_same_card_however_it_is_spelled() -> None:
    card = a2a_card()
    spelled_otherwise = json.loads(json.dumps(card, indent=4, sort_keys=False))
    spelled_otherwise["unknown"] = 1
    reordered = dict(reversed(list(spelled_otherwise.items())))
    first, second = StoredCard.validated(card), StoredCard.validated(reordered)
    assert first.hash == second.hash and first.canonical == second.canonical
    assert len(first.hash) == 64
    changed = a2a_card(skills=("rightsizing",))
    assert StoredCard.validated(changed).hash != first.hash


def test_skill_ids_are_what_the_agent_is_found_by_each_once() -> None:
    card = a2a_card(skills=("translate", "summarize"))
    card["skills"].append({**card["skills"][0], "name": "translate again"})
    stored = StoredCard.validated(card)
    assert stored.skills == ("translate", "summarize")
    assert stored.status_fields()["agentCardSkills"] == ["translate", "summarize"]


@pytest.mark.parametrize("case", [case for case in BAD_CARDS if not isinstance(case.body, bytes)], ids=lambda c: c.name)
def test_bad_cards_are_refused_naming_the_field(case: BadCard) -> None:
    with pytest.raises(ValidationError) as excinfo:
        AgentCard.model_validate(case.body)
    lines = card_errors(excinfo.value)
    assert any(case.field in line for line in lines), lines


def test_more_skills_than_the_bound_are_refused() -> None:
    card = a2a_card(skills=tuple(f"s{n}" for n in range(MAX_SKILLS + 1)))
    with pytest.raises(ValidationError) as excinfo:
        AgentCard.model_validate(card)
    assert any(line.startswith("skills: List should have at most 64 items") for line in card_errors(excinfo.value))


def test_a_skill_id_that_cannot_be_an_index_key_is_refused() -> None:
    card = a2a_card(skills=("two words",))
    with pytest.raises(ValidationError) as excinfo:
        AgentCard.model_validate(card)
    assert card_errors(excinfo.value) == ["skills[0].id: must be 1 to 128 characters without whitespace"]


def test_required_fields_are_named_when_missing() -> None:
    with pytest.raises(ValidationError) as excinfo:
        AgentCard.model_validate({"name": "x"})
    missing = {line.split(":")[0] for line in card_errors(excinfo.value)}
    assert missing == {
        "description",
        "version",
        "supportedInterfaces",
        "defaultInputModes",
        "defaultOutputModes",
        "skills",
        "capabilities",
    }


def test_text_that_is_not_unicode_is_refused_not_crashed_on() -> None:
    # JSON can spell a lone surrogate ("\ud800"); it has no UTF-8 form, so no canonical form or hash.
    card = a2a_card()
    card["description"] = "lone \ud800 surrogate"
    with pytest.raises(ValidationError) as excinfo:
        AgentCard.model_validate(card)
    assert card_errors(excinfo.value)[0].startswith("description: ")
    card = a2a_card()
    card["securitySchemes"]["bearer"]["note"] = "lone \ud800 surrogate"  # an open map: no field type checks it
    with pytest.raises(ValidationError) as excinfo:
        AgentCard.model_validate(card)
    assert "valid Unicode" in card_errors(excinfo.value)[0]
