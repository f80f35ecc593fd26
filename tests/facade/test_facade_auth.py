"""Authentication (TokenReview) and authorisation (SubjectAccessReview against RBAC on `agents`),
with real service accounts, tokens, Roles and RoleBindings on the real API server."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from accounts import READER_RULES, WRITER_RULES, Accounts, user
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import FacadeProcess
from agent_registry.localcluster.process import wait_for
from agent_registry.schema import constants as c
from facade_harness import assert_error, registration
from operator_harness import Agents


@pytest.fixture
def secured(make_facade: Callable[..., FacadeProcess]) -> FacadeProcess:
    # Decisions are not cached, so each check below sees RBAC as it is now.
    return make_facade(auth=True, auth_cache_seconds=0)


UNKNOWN = "123e4567-e89b-12d3-a456-426614174000"


def test_no_or_bad_token_is_401(secured: FacadeProcess, agents: Agents) -> None:
    with secured.client() as anonymous:
        for method, path, body in [
            ("POST", "/agents/register", registration("a")),
            ("GET", "/agents", None),
            ("GET", f"/agents/{UNKNOWN}", None),
            ("POST", f"/agents/{UNKNOWN}/heartbeat", {"status": "healthy"}),
            ("POST", f"/agents/{UNKNOWN}/unregister", None),
            ("GET", "/agents/route?type=cost", None),
        ]:
            response = anonymous.request(method, path, json=body)
            assert_error(response, 401, "missing bearer token")
            assert response.headers["www-authenticate"].startswith("Bearer")
        # Authentication comes first: an anonymous caller learns nothing about its body.
        assert_error(anonymous.post("/agents/register", json={"name": "Bad_Name"}), 401)
    with secured.client(token="not-a-real-token") as forged:
        assert_error(forged.get("/agents"), 401, "not valid")
    with secured.client() as basic:
        assert_error(basic.get("/agents", headers={"Authorization": "Basic dXNlcjpwdw=="}), 401, "Bearer <token>")
    assert agents.list() == []


def test_probes_and_docs_need_no_token(secured: FacadeProcess) -> None:
    with secured.client() as anonymous:
        for path in ("/health", "/ready", "/openapi.json", "/docs"):
            assert anonymous.get(path).status_code == 200, path


def test_metrics_are_on_their_own_port_not_the_api_port(secured: FacadeProcess) -> None:
    # Who may scrape them is a matter of who can reach that port (the chart gives it a
    # ClusterIP Service of its own); the API port, which every client reaches, has none.
    assert "agent_registry_facade_requests_total" in secured.metrics()
    with secured.client() as anonymous:
        assert anonymous.get("/metrics").status_code == 404
    assert "/metrics" not in httpx.get(f"{secured.url}/openapi.json", timeout=10, trust_env=False).json()["paths"]


def test_metrics_on_the_api_port_need_the_right_to_list_agents(
    make_facade: Callable[..., FacadeProcess], accounts: Accounts, namespace: str
) -> None:
    facade = make_facade(auth=True, auth_cache_seconds=0, metrics_port=0)
    accounts.grant("reader", READER_RULES)
    with facade.client() as anonymous:
        assert_error(anonymous.get("/metrics"), 401, "missing bearer token")
    with facade.client(token=accounts.token("nobody")) as nobody:
        assert_error(nobody.get("/metrics"), 403, "may not list agents", namespace)
    with facade.client(token=accounts.token("reader")) as reader:
        response = reader.get("/metrics")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        assert 'agent_registry_facade_auth_total{result="denied"}' in response.text


def test_a_service_account_without_rbac_is_403(secured: FacadeProcess, accounts: Accounts, namespace: str) -> None:
    token = accounts.token("nobody")
    with secured.client(token=token) as http:
        assert_error(
            http.post("/agents/register", json=registration("a")),
            403,
            user(namespace, "nobody"),
            "may not create agents",
            namespace,
        )
        assert_error(http.get("/agents"), 403, "may not list agents")
        assert_error(http.get("/agents/healthy"), 403, "may not list agents")


def test_with_rbac_the_whole_lifecycle_works(
    secured: FacadeProcess, accounts: Accounts, agents: Agents, namespace: str
) -> None:
    accounts.grant("cost-agent", WRITER_RULES)
    with secured.client(token=accounts.token("cost-agent")) as http:
        response = http.post("/agents/register", json=registration("cost-1"))
        assert response.status_code == 201, response.text
        agent_id = response.json()["agent_id"]
        assert http.post("/agents/register", json=registration("cost-1", port=9)).json()["agent_id"] == agent_id
        assert http.post(f"/agents/{agent_id}/heartbeat", json={"status": "degraded"}).status_code == 200
        assert http.get(f"/agents/{agent_id}").json()["status"] == "degraded"
        assert http.get("/agents").json()["count"] == 1
        assert http.post(f"/agents/{agent_id}/unregister").status_code == 200
    assert agents.get("cost-1") is None


def test_a_read_only_role_reads_but_cannot_write(
    secured: FacadeProcess, accounts: Accounts, agents: Agents, namespace: str
) -> None:
    accounts.grant("writer", WRITER_RULES)
    accounts.grant("reader", READER_RULES)
    with secured.client(token=accounts.token("writer")) as writer:
        agent_id = writer.post("/agents/register", json=registration("cost-1")).json()["agent_id"]
    with secured.client(token=accounts.token("reader")) as reader:
        assert reader.get("/agents").json()["count"] == 1
        assert reader.get(f"/agents/{agent_id}").json()["name"] == "cost-1"
        assert_error(reader.post("/agents/register", json=registration("cost-2")), 403, "may not create agents")
        assert_error(
            reader.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy"}),
            403,
            f"may not patch agents/status in namespace {namespace!r} (agent id {agent_id})",
        )
        assert_error(reader.post(f"/agents/{agent_id}/unregister"), 403, "may not delete agents")
    assert [o["metadata"]["name"] for o in agents.list()] == ["cost-1"]


def test_rbac_resource_names_limit_which_agent_a_token_may_heartbeat(
    secured: FacadeProcess, accounts: Accounts
) -> None:
    accounts.grant("writer", WRITER_RULES)
    with secured.client(token=accounts.token("writer")) as writer:
        ids = {"b": writer.post("/agents/register", json=registration("b")).json()["agent_id"]}
    accounts.grant(
        "agent-a",
        [
            {"apiGroups": [c.GROUP], "resources": ["agents"], "verbs": ["create"], "resourceNames": ["a"]},
            {"apiGroups": [c.GROUP], "resources": ["agents/status"], "verbs": ["patch"], "resourceNames": ["a"]},
        ],
    )
    with secured.client(token=accounts.token("agent-a")) as agent_a:
        # The facade asks RBAC about the name it registers, so resourceNames limit creation too.
        ids["a"] = agent_a.post("/agents/register", json=registration("a")).json()["agent_id"]
        assert agent_a.post(f"/agents/{ids['a']}/heartbeat", json={"status": "healthy"}).status_code == 200
        refused = agent_a.post(f"/agents/{ids['b']}/heartbeat", json={"status": "healthy"})
        assert_error(refused, 403, "may not patch agents/status", ids["b"])
        assert "'b'" not in refused.text  # nor does it learn the name of an agent it may not touch


def same_answer(first: httpx.Response, first_id: str, second: httpx.Response, second_id: str) -> None:
    """Two answers tell the caller nothing apart: the same status and body, but for the id it sent."""
    assert first.status_code == second.status_code, (first.text, second.text)
    assert first.text.replace(first_id, "<id>") == second.text.replace(second_id, "<id>")


# Each id route with the RBAC verb it needs.
ID_ROUTES = [
    ("GET", "/agents/{}", None),
    ("POST", "/agents/{}/heartbeat", {"status": "healthy"}),
    ("POST", "/agents/{}/unregister", None),
]


def test_a_caller_without_rbac_cannot_tell_which_ids_exist(
    secured: FacadeProcess, accounts: Accounts, agents: Agents
) -> None:
    accounts.grant("writer", WRITER_RULES)
    with secured.client(token=accounts.token("writer")) as writer:
        existing = writer.post("/agents/register", json=registration("cost-1")).json()["agent_id"]
    with secured.client(token=accounts.token("nobody")) as nobody:
        for method, path, body in ID_ROUTES:
            known = nobody.request(method, path.format(existing), json=body)
            unknown = nobody.request(method, path.format(UNKNOWN), json=body)
            assert_error(known, 403)
            same_answer(known, existing, unknown, UNKNOWN)
            assert "cost-1" not in known.text
    assert [o["metadata"]["name"] for o in agents.list()] == ["cost-1"]


def test_a_reader_tells_unknown_ids_only_where_it_may_act(secured: FacadeProcess, accounts: Accounts) -> None:
    accounts.grant("writer", WRITER_RULES)
    accounts.grant("reader", READER_RULES)
    with secured.client(token=accounts.token("writer")) as writer:
        existing = writer.post("/agents/register", json=registration("cost-1")).json()["agent_id"]
        # Namespace-wide rights: an unknown id is simply not found, on every route.
        for method, path, body in ID_ROUTES:
            assert_error(writer.request(method, path.format(UNKNOWN), json=body), 404, "Agent not found")
    with secured.client(token=accounts.token("reader")) as reader:
        assert_error(reader.get(f"/agents/{UNKNOWN}"), 404, "Agent not found")
        # It may read every agent, but heartbeat and delete none: those routes answer alike.
        for method, path, body in ID_ROUTES[1:]:
            known = reader.request(method, path.format(existing), json=body)
            assert_error(known, 403)
            same_answer(known, existing, reader.request(method, path.format(UNKNOWN), json=body), UNKNOWN)


def test_a_role_with_resource_names_learns_nothing_about_other_ids(secured: FacadeProcess, accounts: Accounts) -> None:
    accounts.grant("writer", WRITER_RULES)
    with secured.client(token=accounts.token("writer")) as writer:
        ids = {"b": writer.post("/agents/register", json=registration("b")).json()["agent_id"]}
    accounts.grant(
        "agent-a",
        [
            {
                "apiGroups": [c.GROUP],
                "resources": ["agents"],
                "verbs": ["create", "get", "delete"],
                "resourceNames": ["a"],
            },
            {"apiGroups": [c.GROUP], "resources": ["agents/status"], "verbs": ["patch"], "resourceNames": ["a"]},
        ],
    )
    with secured.client(token=accounts.token("agent-a")) as agent_a:
        ids["a"] = agent_a.post("/agents/register", json=registration("a")).json()["agent_id"]
        assert agent_a.get(f"/agents/{ids['a']}").json()["name"] == "a"
        assert agent_a.post(f"/agents/{ids['a']}/heartbeat", json={"status": "healthy"}).status_code == 200
        for method, path, body in ID_ROUTES:
            other = agent_a.request(method, path.format(ids["b"]), json=body)
            assert_error(other, 403)
            same_answer(other, ids["b"], agent_a.request(method, path.format(UNKNOWN), json=body), UNKNOWN)
        assert agent_a.post(f"/agents/{ids['a']}/unregister").status_code == 200
        # Its own agent, gone, is no different from any id it was never granted.
        gone = agent_a.get(f"/agents/{ids['a']}")
        same_answer(gone, ids["a"], agent_a.get(f"/agents/{UNKNOWN}"), UNKNOWN)


def test_a_role_in_one_namespace_does_not_reach_another(
    controlplane: LocalControlPlane, secured: FacadeProcess, accounts: Accounts, namespace: str
) -> None:
    other = controlplane.create_namespace(f"{namespace[:50]}-other")
    try:
        accounts.grant("writer", WRITER_RULES)
        with secured.client(token=accounts.token("writer")) as http:
            assert http.get("/agents").status_code == 200
            assert_error(http.get("/agents", params={"namespace": other}), 403, f"in namespace {other!r}")
            assert_error(http.post("/agents/register", json=registration("a"), params={"namespace": other}), 403, other)
    finally:
        controlplane.delete_namespace(other)


def test_granting_a_role_takes_effect_without_waiting_for_a_cache(secured: FacadeProcess, accounts: Accounts) -> None:
    token = accounts.token("late")
    with secured.client(token=token) as http:
        assert http.get("/agents").status_code == 403
        accounts.grant("late", READER_RULES)
        # The API server's RBAC informer needs a moment; the facade caches no denial.
        wait_for("the new Role to apply", lambda: http.get("/agents").status_code == 200, timeout=10)


def test_decisions_are_cached_for_repeated_calls(make_facade: Callable[..., FacadeProcess], accounts: Accounts) -> None:
    facade = make_facade(auth=True, auth_cache_seconds=60)
    accounts.grant("writer", WRITER_RULES)
    with facade.client(token=accounts.token("writer")) as http:
        agent_id = http.post("/agents/register", json=registration("a")).json()["agent_id"]
        for _ in range(5):
            assert http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy"}).status_code == 200
        metrics = facade.metrics()
    # One token review and a handful of access reviews, not two per request.
    allowed = next(
        line for line in metrics.splitlines() if line.startswith('agent_registry_facade_auth_total{result="allowed"}')
    )
    assert float(allowed.rsplit(" ", 1)[1]) <= 3, allowed
