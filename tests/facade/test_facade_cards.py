"""A2A agent cards through the REST API, on the real stack: registration with a card, the
card route with its ETag, the catalogue of healthy agents' cards, discovery by skill, and
kubectl's Skills column. Real API server, Redis, operator and facade."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from accounts import READER_RULES, Accounts
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import FacadeProcess, OperatorProcess
from agent_registry.localcluster.process import wait_for
from agent_registry.localcluster.redis_server import LocalRedis
from agent_registry.schema.card import StoredCard
from cards import BAD_CARDS, BadCard, a2a_card
from facade_harness import assert_error, indexed, registration
from operator_harness import Agents


def register(http: httpx.Client, name: str, **fields: Any) -> str:
    response = http.post("/agents/register", json=registration(name, **fields))
    assert response.status_code == 201, response.text
    return str(response.json()["agent_id"])


def names(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [agent["name"] for agent in response.json()["agents"]]


def catalogue(http: httpx.Client, **params: Any) -> list[tuple[str, str]]:
    """The catalogue's (agent name, card name) pairs."""
    response = http.get("/agents/cards", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["cards"])
    return [(entry["name"], entry["card"]["name"]) for entry in body["cards"]]


def condition(agents: Agents, name: str, cond_type: str) -> dict[str, Any] | None:
    conditions = ((agents.get(name) or {}).get("status") or {}).get("conditions") or []
    return next((cond for cond in conditions if cond.get("type") == cond_type), None)


def test_a_registered_card_is_stored_reduced_and_served_with_its_hash_as_etag(
    operator: OperatorProcess,
    http: httpx.Client,
    make_facade: Callable[..., FacadeProcess],
    agents: Agents,
    redis_url: str,
    namespace: str,
) -> None:
    sent = a2a_card("cost-agent", skills=("rightsizing", "spot_migration"))
    sent["internalEndpoint"] = "http://10.0.0.7:9999/admin"  # not the card's: must not be stored
    agent_id = register(http, "cost-agent", agent_card=sent)
    expected = StoredCard.validated(sent)

    stored = agents.get("cost-agent")
    assert stored is not None
    assert stored["status"]["agentCard"] == expected.status_fields()["agentCard"]
    assert "internalEndpoint" not in stored["status"]["agentCard"]
    assert stored["status"]["agentCardHash"] == expected.hash
    assert stored["status"]["agentCardSkills"] == ["rightsizing", "spot_migration"]

    # Read back at once (this facade's own write), then from the index by a facade that wrote nothing.
    first = http.get(f"/agents/{agent_id}/agent-card.json")
    assert first.status_code == 200, first.text
    assert first.headers["etag"] == f'"{expected.hash}"'
    assert first.headers["content-type"] == "application/json"
    assert first.content == expected.canonical
    wait_for(
        "the card indexed",
        lambda: (record := indexed(redis_url, namespace, agent_id)) is not None and record.card_hash == expected.hash,
    )
    wait_for(
        "CardValid=True",
        lambda: (condition(agents, "cost-agent", "CardValid") or {}).get("status") == "True",
    )
    with make_facade().client() as fresh:
        for client in (http, fresh):
            again = client.get(f"/agents/{agent_id}/agent-card.json", headers={"If-None-Match": first.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
            assert again.headers["etag"] == first.headers["etag"]
            other = client.get(f"/agents/{agent_id}/agent-card.json", headers={"If-None-Match": '"stale"'})
            assert other.status_code == 200 and other.content == expected.canonical
        assert fresh.get(f"/agents/{agent_id}").json()["skills"] == ["rightsizing", "spot_migration"]

    # A registration without a card says the agent has none now.
    register(http, "cost-agent")
    gone = http.get(f"/agents/{agent_id}/agent-card.json")
    assert_error(gone, 404, f"agent {agent_id} has no agent card")
    assert "agentCard" not in (agents.get("cost-agent") or {})["status"]
    wait_for("CardValid gone", lambda: condition(agents, "cost-agent", "CardValid") is None)


@pytest.mark.parametrize("case", [case for case in BAD_CARDS if not isinstance(case.body, bytes)], ids=lambda c: c.name)
def test_a_bad_card_is_refused_naming_the_field_and_nothing_is_created(
    http: httpx.Client, agents: Agents, case: BadCard
) -> None:
    response = http.post("/agents/register", json=registration("bad-card", agent_card=case.body))
    assert_error(response, 400, "agent_card", case.field)
    assert agents.get("bad-card") is None


def test_agents_are_found_by_skill_and_the_catalogue_lists_the_healthy_ones_cards(
    operator: OperatorProcess,
    http: httpx.Client,
    make_facade: Callable[..., FacadeProcess],
    agents: Agents,
    redis_server: LocalRedis,
) -> None:
    ids = {
        "translator": register(
            http, "translator", type="application", capabilities=["nlp"], agent_card=a2a_card("t", ("translate",))
        ),
        "polyglot": register(
            http,
            "polyglot",
            type="application",
            capabilities=["nlp", "ocr"],
            agent_card=a2a_card("p", ("translate", "summarize")),
        ),
        "sick": register(http, "sick", type="application", agent_card=a2a_card("s", ("translate",))),
        "plain": register(http, "plain", type="application", capabilities=["nlp"]),
    }
    beat = http.post(f"/agents/{ids['sick']}/heartbeat", json={"status": "unhealthy"})
    assert beat.status_code == 200, beat.text
    wait_for("sick is Unhealthy", lambda: agents.phase("sick") == "Unhealthy")

    fresh = make_facade()
    with fresh.client() as other:
        # `other` wrote nothing: it answers from the index alone; `http` lays its writes over it.
        wait_for("the index", lambda: names(other.get("/agents", params={"skill": "translate"})) == [
            "polyglot", "sick", "translator",
        ])  # fmt: skip
        for client in (http, other):
            assert names(client.get("/agents", params={"skill": "translate"})) == ["polyglot", "sick", "translator"]
            both = [("skill", "translate"), ("skill", "summarize")]
            assert names(client.get("/agents", params=both)) == ["polyglot"]
            assert names(client.get("/agents", params={"skill": "translate", "capability": "ocr"})) == ["polyglot"]
            assert names(client.get("/agents/healthy", params={"skill": "translate"})) == ["polyglot", "translator"]
            assert names(client.get("/agents", params={"skill": "nobody"})) == []
            # The capability filters work as before, cards or not.
            assert names(client.get("/agents", params={"capability": "nlp"})) == ["plain", "polyglot", "translator"]

            assert catalogue(client) == [("polyglot", "p"), ("translator", "t")]  # healthy, with a card
            assert catalogue(client, skill="summarize") == [("polyglot", "p")]
            assert catalogue(client, capability="ocr") == [("polyglot", "p")]
            assert catalogue(client, type="cost") == []
            listed = client.get("/agents/cards")
            entry = next(item for item in listed.json()["cards"] if item["name"] == "translator")
            assert entry["agent_id"] == ids["translator"]
            assert entry["card"] == StoredCard.validated(a2a_card("t", ("translate",))).status_fields()["agentCard"]
            tag = listed.headers["etag"]
            assert client.get("/agents/cards", headers={"If-None-Match": tag}).status_code == 304

        # Without Redis, the API server answers the same.
        redis_server.stop()
        try:
            assert names(other.get("/agents", params={"skill": "translate"})) == ["polyglot", "sick", "translator"]
            assert catalogue(other, skill="translate") == [("polyglot", "p"), ("translator", "t")]
            card = other.get(f"/agents/{ids['translator']}/agent-card.json")
            assert card.status_code == 200 and card.json()["name"] == "t"
        finally:
            redis_server.start()


def test_the_card_routes_need_what_the_reads_need(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess], accounts: Accounts
) -> None:
    secured = make_facade(auth=True, auth_cache_seconds=0)
    accounts.grant("writer", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])
    accounts.grant("reader", READER_RULES)
    with secured.client(token=accounts.token("writer")) as writer:
        agent_id = register(writer, "carded", agent_card=a2a_card())
    card_path = f"/agents/{agent_id}/agent-card.json"
    with secured.client() as anonymous:
        for path in (card_path, "/agents/cards"):
            assert_error(anonymous.get(path), 401, "missing bearer token")
    with secured.client(token=accounts.token("nobody")) as nobody:
        for path in (card_path, "/agents/cards"):
            assert nobody.get(path).status_code == 403
    with secured.client(token=accounts.token("reader")) as reader:
        assert reader.get(card_path).status_code == 200
        wait_for("the catalogue", lambda: catalogue(reader) == [("carded", "cost-agent")])


def test_kubectl_wide_shows_the_skills(
    http: httpx.Client, controlplane: LocalControlPlane, namespace: str, agents: Agents
) -> None:
    card = copy.deepcopy(a2a_card(skills=("rightsizing", "spot_migration")))
    register(http, "with-card", agent_card=card)
    register(http, "without-card")
    table = controlplane.kubectl("get", "agents", "-n", namespace, "-o", "wide").stdout.splitlines()
    header = table[0].split()
    assert "SKILLS" in header
    rows = {line.split()[0]: line for line in table[1:]}
    # The capabilities column shows ["spot_migration","rightsizing"]: this order is the skills'.
    assert '["rightsizing","spot_migration"]' in rows["with-card"]
    assert '["rightsizing","spot_migration"]' not in rows["without-card"]
