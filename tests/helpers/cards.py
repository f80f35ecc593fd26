"""A2A agent cards for tests: a valid one to start from, and the bad ones every writer must refuse."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from agent_registry.schema.card import MAX_CARD_BYTES


def a2a_card(name: str = "cost-agent", skills: tuple[str, ...] = ("rightsizing", "spot_migration")) -> dict[str, Any]:
    """A valid A2A 1.0 AgentCard with one skill per id."""
    return {
        "name": name,
        "description": f"{name} finds savings",
        "version": "1.4.2",
        "supportedInterfaces": [
            {"url": "https://cost.example.com/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
        ],
        "provider": {"organization": "Example Corp", "url": "https://example.com"},
        "capabilities": {"streaming": True, "pushNotifications": False},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["application/json"],
        "securitySchemes": {"bearer": {"httpAuthSecurityScheme": {"scheme": "Bearer"}}},
        "skills": [
            {"id": skill, "name": skill.replace("_", " "), "description": f"does {skill}", "tags": ["cost", skill]}
            for skill in skills
        ],
    }


@dataclasses.dataclass(frozen=True)
class BadCard:
    name: str
    body: Any
    """The card as sent: a JSON value, or ``bytes`` as they are on the wire."""
    reason: str
    """The ``CardValid`` reason the sidecar's problem gives."""
    field: str
    """What the message must name."""


def _without_tags() -> dict[str, Any]:
    card = a2a_card()
    del card["skills"][0]["tags"]
    return card


def _streaming_as_text() -> dict[str, Any]:
    card = a2a_card()
    card["capabilities"]["streaming"] = "yes"
    return card


def _too_large() -> dict[str, Any]:
    card = a2a_card(skills=tuple(f"skill-{n}" for n in range(40)))
    for skill in card["skills"]:
        skill["description"] = "x" * (MAX_CARD_BYTES // 40)
    return card


def _relative_url() -> dict[str, Any]:
    card = copy.deepcopy(a2a_card())
    card["supportedInterfaces"][0]["url"] = "/a2a"
    return card


BAD_CARDS = [
    BadCard("not JSON", b"{not json", "InvalidJSON", "not JSON"),
    BadCard("not an object", ["a", "list"], "InvalidCard", "JSON object"),
    BadCard("missing skills[0].tags", _without_tags(), "InvalidCard", "skills[0].tags: Field required"),
    BadCard(
        "wrong type", _streaming_as_text(), "InvalidCard", "capabilities.streaming: Input should be a valid boolean"
    ),
    BadCard("too large", _too_large(), "TooLarge", f"at most {MAX_CARD_BYTES} bytes"),
    BadCard("relative URL", _relative_url(), "InvalidCard", "supportedInterfaces[0].url: must be an absolute URL"),
]
