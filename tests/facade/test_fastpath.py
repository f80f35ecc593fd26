"""The fast discovery reads answer exactly as the routes do.

``facade/fastpath.py`` answers the hot GETs itself and hands anything unusual to the
FastAPI routes, including a request with a parameter it does not know, which the routes
ignore. So each read below is asked twice, once as it is (the fast path) and once with an
extra unknown parameter (the routes), and both answers must be the same: status, body,
content type and the headers a client acts on. Real API server, Redis, operator, RBAC.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from accounts import READER_RULES, Accounts
from agent_registry.localcluster.launcher import FacadeProcess, OperatorProcess
from agent_registry.localcluster.process import wait_for
from cards import a2a_card
from facade_harness import assert_error, unchanged_for
from operator_harness import Agents

UNKNOWN = "123e4567-e89b-12d3-a456-426614174000"


@pytest.fixture
def secured(make_facade: Callable[..., FacadeProcess]) -> FacadeProcess:
    return make_facade(auth=True, auth_cache_seconds=0)


def both(http: httpx.Client, path: str, params: list[tuple[str, str]] | None = None) -> tuple[httpx.Response, ...]:
    fast = http.get(path, params=params or [])
    routed = http.get(path, params=[*(params or []), ("unknown-parameter", "1")])
    return fast, routed


def assert_same(fast: httpx.Response, routed: httpx.Response) -> None:
    assert fast.status_code == routed.status_code, (fast.text, routed.text)
    assert fast.json() == routed.json()
    for header in ("content-type", "www-authenticate", "retry-after", "etag"):
        assert fast.headers.get(header) == routed.headers.get(header), header


def test_every_fast_read_answers_as_the_routes_do(
    operator: OperatorProcess, secured: FacadeProcess, agents: Agents, accounts: Accounts, namespace: str
) -> None:
    for name, caps in (("a", ["scale", "tune"]), ("b", ["tune"]), ("c", ["tune"])):
        agents.create(name, type="cost", capabilities=caps, metadata={"zone": "eu-1"} if name == "a" else {})
        agents.heartbeat(name)
    agents.create("p", type="performance", capabilities=["tune"])
    agents.heartbeat("p", status="degraded")
    agents.store_card("a", a2a_card("a", skills=("translate", "summarize")))
    agents.store_card("b", a2a_card("b", skills=("translate",)))
    accounts.grant("reader", READER_RULES)
    with secured.client(token=accounts.token("reader")) as http:
        wait_for("the index", lambda: http.get("/agents").json().get("count") == 4)
        degraded = {"status": "degraded"}
        wait_for("p degraded", lambda: http.get("/agents", params=degraded).json()["count"] == 1)
        wait_for("the skills", lambda: http.get("/agents", params={"skill": "translate"}).json()["count"] == 2)
        wait_for("the index to settle", lambda: unchanged_for(http, "/agents", 0.5))
        a = next(x for x in http.get("/agents").json()["agents"] if x["name"] == "a")
        reads: list[tuple[str, list[tuple[str, str]]]] = [
            ("/agents", []),
            ("/agents", [("type", "cost")]),
            ("/agents", [("type", "cost"), ("capability", "tune"), ("capability", "scale")]),
            ("/agents", [("status", "degraded")]),
            ("/agents", [("namespace", namespace), ("type", "nothing")]),
            ("/agents", [("skill", "translate")]),
            ("/agents", [("skill", "translate"), ("skill", "summarize"), ("capability", "scale")]),
            ("/agents", [("type", "cost"), ("skill", "nobody-has-it")]),
            ("/agents/healthy", []),
            ("/agents/healthy", [("capability", "tune")]),
            ("/agents/healthy", [("capability", "tune"), ("skill", "translate")]),
            ("/agents/type/cost", []),
            ("/agents/type/performance", [("namespace", namespace)]),
            ("/agents/type/nobody", []),
            ("/agents/route", [("type", "cost"), ("capability", "scale")]),  # one candidate: the same pick
            ("/agents/route", [("type", "cost"), ("capability", "nothing")]),  # 404 with the question
            ("/agents/route", [("type", "resource")]),
            (f"/agents/{a['id']}", []),
            (f"/agents/{a['id'].upper()}", []),
            (f"/agents/{UNKNOWN}", []),
        ]
        for path, params in reads:
            fast, routed = both(http, path, params)
            assert_same(fast, routed)
        fast, _ = both(http, f"/agents/{a['id']}")
        assert fast.json()["metadata"] == {"zone": "eu-1"}
        listed = http.get("/agents", params={"type": "cost"}).json()
        assert [x["name"] for x in listed["agents"]] == ["a", "b", "c"] and listed["count"] == 3
        both_skills = http.get("/agents", params=[("skill", "translate"), ("skill", "summarize")]).json()
        assert [x["name"] for x in both_skills["agents"]] == ["a"]
        assert both_skills["agents"][0]["skills"] == ["translate", "summarize"]
        assert http.get("/agents/route", params={"type": "cost", "capability": "scale"}).json()["name"] == "a"

    # Refusals, the same way: no token, a caller RBAC does not allow, an unknown id to that caller.
    with secured.client() as anonymous:
        for path in ("/agents", "/agents/route?type=cost", f"/agents/{UNKNOWN}"):
            fast, routed = both(anonymous, path)
            assert_same(fast, routed)
            assert_error(fast, 401, "missing bearer token")
    with secured.client(token=accounts.token("nobody")) as nobody:
        for path in ("/agents", "/agents/healthy", f"/agents/{a['id']}", f"/agents/{UNKNOWN}"):
            fast, routed = both(nobody, path)
            assert_same(fast, routed)
            assert fast.status_code == 403


def test_what_the_fast_path_does_not_take_gets_the_routes_errors(
    operator: OperatorProcess, secured: FacadeProcess, accounts: Accounts
) -> None:
    accounts.grant("reader", READER_RULES)
    with secured.client(token=accounts.token("reader")) as http:
        assert_error(http.get("/agents", params={"status": "asleep"}), 400, "status")
        assert_error(http.get("/agents", params={"type": "x" * 64}), 400, "type")
        assert_error(http.get("/agents", params={"namespace": "Not_A_Label"}), 400, "namespace")
        assert_error(http.get("/agents/route"), 400, "type")
        assert_error(http.get("/agents/not-a-uuid"), 400, "not a UUID")


def test_a_list_carries_an_etag_and_answers_304_until_it_changes(
    operator: OperatorProcess, secured: FacadeProcess, agents: Agents, accounts: Accounts
) -> None:
    agents.create("a", type="cost", capabilities=["tune"])
    agents.heartbeat("a")
    accounts.grant("reader", READER_RULES)
    with secured.client(token=accounts.token("reader")) as http:
        wait_for("the index", lambda: http.get("/agents").json().get("count") == 1)
        for path, params in (("/agents", {"type": "cost"}), ("/agents/healthy", {}), ("/agents/type/cost", {})):
            first = http.get(path, params=params)
            tag = first.headers["etag"]
            for extra in ({}, {"unknown-parameter": "1"}):  # the fast path and the routes alike
                again = http.get(path, params={**params, **extra}, headers={"If-None-Match": tag})
                assert again.status_code == 304, again.text
                assert again.content == b"" and again.headers["etag"] == tag
                listed = http.get(path, params={**params, **extra}, headers={"If-None-Match": '"other", W/' + tag})
                assert listed.status_code == 304
                stale = http.get(path, params={**params, **extra}, headers={"If-None-Match": '"other"'})
                assert stale.status_code == 200 and stale.json() == first.json()
        tag = http.get("/agents").headers["etag"]
        agents.heartbeat("a", status="degraded")
        wait_for("the change", lambda: http.get("/agents", headers={"If-None-Match": tag}).status_code == 200)
        changed = http.get("/agents", headers={"If-None-Match": tag})
        assert changed.json()["agents"][0]["status"] == "degraded"
        assert changed.headers["etag"] != tag
