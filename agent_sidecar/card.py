"""The agent's A2A card: fetched from the agent, checked, and recorded on its Agent when it changed.

With ``AGENT_CARD_URL`` set, the sidecar GETs the card once the agent answers its health
probe (a card asked for before the agent listens would only fail), then again at most
every ``AGENT_CARD_REFRESH_SECONDS``, never on every heartbeat. Each fetch after the first
is conditional: the ETag the agent gave goes back as ``If-None-Match``, and a ``304`` costs
nothing. A 200 is validated (``agent_registry.schema.card``); the Agent is written only
when the card's content hash differs from the stored one, so an agent that serves the
same bytes, or the same card re-encoded, causes no write at all.

A card that cannot be fetched or does not validate leaves the stored card as it was and is
written as ``status.agentCardProblem`` (a reason and a message naming the field, e.g.
``skills[0].tags: Field required``), which the operator shows as ``CardValid=False`` with
an ``InvalidAgentCard`` Event. After a failure the next try comes sooner: after a
heartbeat interval, doubling up to the refresh period. None of this ever holds up a
heartbeat: the caller runs it after the heartbeat, and no error here reaches the heartbeat
loop.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
from typing import Any

from pydantic import ValidationError

from agent_registry.schema import constants as c
from agent_registry.schema.card import SIZE_RULE, StoredCard, card_errors
from agent_sidecar.probe import agent_connection, failure_detail

# Far more than a card may be once reduced (32 KiB), for cards padded with whitespace or
# fields the registry drops; a body beyond it is refused without being parsed.
MAX_FETCHED_BYTES = 256 * 1024
FETCH_FAILED = "FetchFailed"
INVALID_JSON = "InvalidJSON"
INVALID_CARD = "InvalidCard"
TOO_LARGE = "TooLarge"


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why a card was not taken: a condition reason and a message naming the field."""

    reason: str
    message: str

    def status_field(self) -> dict[str, Any]:
        message = self.message
        if len(message) > c.MAX_MESSAGE_LENGTH:
            message = message[: c.MAX_MESSAGE_LENGTH - 3] + "..."
        return {"agentCardProblem": {"reason": self.reason, "message": message}}


@dataclasses.dataclass(frozen=True)
class Fetched:
    """One fetch's outcome: a card, ``unchanged`` (304), or a problem."""

    card: StoredCard | None = None
    etag: str | None = None
    unchanged: bool = False
    problem: Problem | None = None


def fetch_card(url: str, timeout: float, etag: str | None = None) -> Fetched:
    """GET the card at ``url``, conditionally when ``etag`` is known; never raises."""
    connection, target = agent_connection(url, timeout)
    headers = {"User-Agent": "agent-sidecar-card", "Accept": "application/json"}
    if etag:
        headers["If-None-Match"] = etag
    try:
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        body = response.read(MAX_FETCHED_BYTES + 1)
    except (OSError, http.client.HTTPException) as error:
        return Fetched(problem=Problem(FETCH_FAILED, f"GET {url} got no answer ({failure_detail(error)})"))
    finally:
        connection.close()
    if response.status == 304 and etag:
        return Fetched(etag=etag, unchanged=True)
    if not 200 <= response.status < 300:
        return Fetched(problem=Problem(FETCH_FAILED, f"GET {url} answered HTTP {response.status} {response.reason}"))
    if len(body) > MAX_FETCHED_BYTES:
        return Fetched(problem=Problem(TOO_LARGE, f"the card is more than {MAX_FETCHED_BYTES} bytes"))
    return read_card(body, response.getheader("ETag"))


def read_card(body: bytes, etag: str | None = None) -> Fetched:
    """A fetched body as a card, or the problem with it."""
    try:
        document = json.loads(body)
    except ValueError as error:
        return Fetched(problem=Problem(INVALID_JSON, f"the card is not JSON: {error}"))
    if not isinstance(document, dict):
        return Fetched(problem=Problem(INVALID_CARD, "the card must be a JSON object"))
    try:
        card = StoredCard.validated(document)
    except ValidationError as error:
        lines = card_errors(error)
        reason = TOO_LARGE if any(line.startswith(SIZE_RULE) for line in lines) else INVALID_CARD
        return Fetched(problem=Problem(reason, "; ".join(lines)))
    return Fetched(card=card, etag=etag)


class CardWatch:
    """What the sidecar knows of the card: the agent's (its ETag), the Agent's (the stored
    hash and problem), and when to look again. Pure bookkeeping; the runner does the I/O."""

    def __init__(self, url: str, refresh_seconds: float, retry_seconds: float) -> None:
        self.url = url
        self.refresh_seconds = refresh_seconds
        self.retry_seconds = retry_seconds
        self.etag: str | None = None
        self.stored_hash: str | None = None
        self.stored_problem: Problem | None = None
        self._next_check = 0.0
        self._failures = 0

    def due(self, now: float) -> bool:
        return now >= self._next_check

    def knows_agent(self, agent: dict[str, Any] | None) -> None:
        """The Agent as read or written: what it stores now. A new or recreated Agent stores
        nothing, so the next beat looks at once."""
        status = (agent or {}).get("status") or {}
        stored_hash = status.get("agentCardHash")
        self.stored_hash = stored_hash if isinstance(stored_hash, str) else None
        problem = status.get("agentCardProblem")
        if isinstance(problem, dict) and problem.get("reason"):
            self.stored_problem = Problem(str(problem["reason"]), str(problem.get("message") or ""))
        else:
            self.stored_problem = None
        if self.stored_hash is None:
            self.etag = None  # the Agent has no card: a 304 would leave it without one
            self._next_check = 0.0

    def patch_for(self, fetched: Fetched) -> dict[str, Any] | None:
        """The status fields to write for a fetch, or None when the Agent already says it."""
        if fetched.problem is not None:
            if fetched.problem == self.stored_problem:
                return None
            return fetched.problem.status_field()
        if fetched.card is not None and fetched.card.hash != self.stored_hash:
            return fetched.card.status_fields()
        if self.stored_problem is not None:
            return {"agentCardProblem": None}  # the same card as stored, fine again
        return None

    def wrote(self, fetched: Fetched) -> None:
        """The patch for ``fetched`` landed (or there was none to write)."""
        if fetched.problem is not None:
            self.stored_problem = fetched.problem
            return
        self.stored_problem = None
        if fetched.card is not None:
            self.stored_hash = fetched.card.hash

    def checked(self, fetched: Fetched, now: float) -> None:
        """Schedule the next look: the refresh period after a card, sooner after a problem."""
        if fetched.problem is None:
            self._failures = 0
            self.etag = fetched.etag
            self._next_check = now + self.refresh_seconds
            return
        self._failures += 1
        self.etag = None
        self._next_check = now + min(self.refresh_seconds, self.retry_seconds * 2 ** (self._failures - 1))

    def retry_soon(self, now: float) -> None:
        """The Agent could not be written: try again at the next beat's earliest."""
        self._next_check = now
