"""The A2A (1.0) AgentCard: an agent's description of itself, as the registry stores and serves it.

An agent serves its card at ``/.well-known/agent-card.json``; the sidecar fetches it, or a
REST registration carries it. Either way it passes through ``AgentCard`` before it is
stored (``status.agentCard``), so:

* the shape is the A2A shape (required fields present, every field of its JSON type: the
  model is strict, so ``"streaming": "yes"`` is an error, not ``True``);
* only the card's own fields are kept: unknown fields are dropped at every level except
  inside the maps A2A leaves open (``securitySchemes``, extension ``params``, signature
  ``header``), so nothing else the agent serves ends up in the registry;
* it is bounded: at most ``MAX_CARD_BYTES`` of canonical JSON and ``MAX_SKILLS`` skills,
  each skill id usable as part of an index key (no whitespace, at most
  ``MAX_SKILL_ID_LENGTH`` characters). Two skills may share an id (A2A does not forbid
  it); the agent is found by that id once.

The card's *content hash* is the SHA-256 of its canonical JSON (keys sorted, no
whitespace, UTF-8): the same card gives the same hash whoever stored it, so the hash is the
card's ETag and tells a writer whether a fetched card differs from the stored one. The
JWS ``signatures`` are stored as they came; the registry does not verify them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from pydantic.alias_generators import to_camel

MAX_CARD_BYTES = 32 * 1024
MAX_SKILLS = 64
MAX_SKILL_ID_LENGTH = 128
MAX_TEXT_LENGTH = 4096
MAX_URL_LENGTH = 2048
# Whitespace, spelled out: ``\s`` means three things to the three engines that read these
# patterns (ASCII only to the API server's RE2; U+0085 too to pydantic-core's Rust regex;
# U+FEFF too to JSON Schema's ECMAScript, which clients and fuzzers read the OpenAPI
# document with), and a pattern must mean the same to all of them.
_WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# No whitespace: skill ids become parts of Redis key names and lines of the index's
# membership entries.
SKILL_ID_PATTERN = f"^[^{_WHITESPACE}]+$"
# Absolute: a card names where its agent is reached, and a relative URL means nothing in a registry.
URL_PATTERN = f"^[A-Za-z][A-Za-z0-9+.-]*://[^{_WHITESPACE}]+$"

SIZE_RULE = f"the card must serialize to at most {MAX_CARD_BYTES} bytes of canonical JSON"
_OBJECT_ERRORS = frozenset({"model_type", "model_attributes_type", "dict_type"})
# What a pattern means, for error messages: pydantic's own quotes the regular expression.
_PATTERN_RULES = {
    SKILL_ID_PATTERN: f"must be 1 to {MAX_SKILL_ID_LENGTH} characters without whitespace",
    URL_PATTERN: "must be an absolute URL such as https://agent.example.com/a2a",
}


class _CardPart(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        # The card's own fields only: whatever else an agent puts in it stays out.
        extra="ignore",
        strict=True,
        frozen=True,
    )


Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_LENGTH)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_LENGTH)]
Url = Annotated[str, StringConstraints(max_length=MAX_URL_LENGTH, pattern=URL_PATTERN)]
MediaType = Annotated[str, StringConstraints(min_length=1, max_length=255)]
SkillId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_SKILL_ID_LENGTH, pattern=SKILL_ID_PATTERN),
    Field(description=f"An A2A skill id: 1 to {MAX_SKILL_ID_LENGTH} characters, no whitespace."),
]
OpenObject = dict[str, Any]
"""A map A2A leaves open (a security scheme, extension parameters): kept as it is."""


class AgentInterface(_CardPart):
    """Where and how the agent is reached; the first of ``supportedInterfaces`` is preferred."""

    url: Url
    protocol_binding: Name
    """``JSONRPC``, ``GRPC``, ``HTTP+JSON``, or another binding's name."""
    protocol_version: Name
    tenant: Text | None = None


class AgentProvider(_CardPart):
    organization: Name
    url: Url


class AgentExtension(_CardPart):
    uri: Url
    description: Text | None = None
    required: bool | None = None
    params: OpenObject | None = None


class AgentCapabilities(_CardPart):
    streaming: bool | None = None
    push_notifications: bool | None = None
    extended_agent_card: bool | None = None
    extensions: list[AgentExtension] | None = None


class AgentSkill(_CardPart):
    id: SkillId
    name: Name
    description: Text
    tags: list[Name]
    examples: list[Text] | None = None
    input_modes: list[MediaType] | None = None
    output_modes: list[MediaType] | None = None
    security_requirements: list[OpenObject] | None = None


class AgentCardSignature(_CardPart):
    """A JWS over the card's canonical JSON (RFC 7515 JSON serialization): stored, not verified."""

    protected: Name
    signature: Name
    header: OpenObject | None = None


class AgentCard(_CardPart):
    """An A2A AgentCard (protocol 1.0), bounded and reduced to its own fields."""

    name: Name
    description: Text
    version: Name
    supported_interfaces: Annotated[list[AgentInterface], Field(min_length=1, max_length=16)]
    default_input_modes: list[MediaType]
    default_output_modes: list[MediaType]
    skills: Annotated[list[AgentSkill], Field(max_length=MAX_SKILLS)]
    capabilities: AgentCapabilities
    provider: AgentProvider | None = None
    icon_url: Url | None = None
    documentation_url: Url | None = None
    security_schemes: dict[str, OpenObject] | None = None
    security_requirements: list[OpenObject] | None = None
    signatures: list[AgentCardSignature] | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        try:
            size = len(self.canonical())
        except UnicodeEncodeError as exc:
            # A lone surrogate (JSON can spell one, "\ud800") has no UTF-8 form, hence no hash.
            raise ValueError(f"the card's text must be valid Unicode: {exc.reason} at {exc.start}") from None
        if size > MAX_CARD_BYTES:
            raise ValueError(f"{SIZE_RULE} (it is {size})")
        return self

    def to_json(self) -> dict[str, Any]:
        """The card as stored and served: wire names, and no field the agent did not give."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def canonical(self) -> bytes:
        return canonical_json(self.to_json())

    def content_hash(self) -> str:
        return content_hash(self.canonical())

    @property
    def skill_ids(self) -> list[str]:
        """Each id once, in the card's order: what the agent is found by (``?skill=``)."""
        return list(dict.fromkeys(skill.id for skill in self.skills))


def canonical_json(document: Any) -> bytes:
    """Keys sorted, no whitespace, UTF-8: one spelling per card, so one hash."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def content_hash(canonical: bytes) -> str:
    """The card's hash (lowercase hex SHA-256), stored as ``status.agentCardHash`` and served as its ETag."""
    return hashlib.sha256(canonical).hexdigest()


def card_errors(exc: ValidationError) -> list[str]:
    """``skills[0].tags: Field required`` lines, one per problem, fields by their wire names."""
    lines = []
    for error in exc.errors(include_url=False):
        path = ""
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = error_rule(error)
        lines.append(f"{path}: {message}" if path else message)
    return lines


def error_rule(error: Mapping[str, Any]) -> str:
    """The rule a pydantic error on a card breaks, in words (a pattern is named by what it means)."""
    if error.get("type") in _OBJECT_ERRORS:
        return "must be a JSON object"  # pydantic's words name a Python class the card's author never saw
    if error.get("type") == "string_pattern_mismatch":
        rule = _PATTERN_RULES.get(str((error.get("ctx") or {}).get("pattern")))
        if rule is not None:
            return rule
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


@dataclasses.dataclass(frozen=True)
class StoredCard:
    """A card that passed ``AgentCard``, as the registry keeps it: canonical JSON, hash, skill ids."""

    canonical: bytes
    hash: str
    skills: tuple[str, ...]

    @classmethod
    def of(cls, card: AgentCard) -> StoredCard:
        canonical = card.canonical()
        return cls(canonical, content_hash(canonical), tuple(card.skill_ids))

    @classmethod
    def validated(cls, document: Any) -> StoredCard:
        """The card in ``document`` (decoded JSON) after validation; raises ``ValidationError``."""
        return cls.of(AgentCard.model_validate(document))

    def status_fields(self) -> dict[str, Any]:
        """What the Agent's status holds of it (``AgentStatus``'s wire names); the problem cleared."""
        return {
            "agentCard": json.loads(self.canonical),
            "agentCardHash": self.hash,
            "agentCardSkills": list(self.skills),
            "agentCardProblem": None,
        }
