"""A table of bad input: each gets a 4xx JSON error that names the problem, and no Agent
object is created or changed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from agent_registry.localcluster.launcher import FacadeProcess
from facade_harness import registration
from operator_harness import Agents

UNKNOWN = "123e4567-e89b-12d3-a456-426614174000"
VICTIM = "{victim}"  # replaced by the id of an agent registered before the table runs


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    status: int
    mentions: tuple[str, ...]
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


def reg(**fields: Any) -> dict[str, Any]:
    return {**registration("new-agent"), **fields}


def big_metadata(entries: int = 1, value_bytes: int = 10) -> dict[str, str]:
    return {f"k{i}": "x" * value_bytes for i in range(entries)}


REGISTER = "/agents/register"
HEARTBEAT = f"/agents/{VICTIM}/heartbeat"

CASES = [
    # register: missing fields
    *(
        Case(f"register without {f}", "POST", REGISTER, 400, (f, "required"), json=without(reg(), f))
        for f in ("name", "type", "host", "port")
    ),
    # register: wrong types
    Case("port as a string", "POST", REGISTER, 400, ("port", "integer"), json=reg(port="8080")),
    Case("port as a float", "POST", REGISTER, 400, ("port",), json=reg(port=80.5)),
    Case("port 0", "POST", REGISTER, 400, ("port", "greater than"), json=reg(port=0)),
    Case("port 70000", "POST", REGISTER, 400, ("port", "less than"), json=reg(port=70000)),
    Case("name as a number", "POST", REGISTER, 400, ("name", "string"), json=reg(name=123)),
    Case("capabilities as a string", "POST", REGISTER, 400, ("capabilities", "list"), json=reg(capabilities="x")),
    Case("capability as a number", "POST", REGISTER, 400, ("capabilities[0]",), json=reg(capabilities=[1])),
    Case("version as a number", "POST", REGISTER, 400, ("version", "string"), json=reg(version=2)),
    Case("metadata as a list", "POST", REGISTER, 400, ("metadata", "dictionary"), json=reg(metadata=[1])),
    # register: invalid values
    Case(
        "name not a k8s name",
        "POST",
        REGISTER,
        400,
        ("name", "Bad_Name", "Kubernetes object name"),
        json=reg(name="Bad_Name"),
    ),
    Case("name empty", "POST", REGISTER, 400, ("name",), json=reg(name="")),
    Case("name too long", "POST", REGISTER, 400, ("name", "253"), json=reg(name="a" * 254)),
    Case("type not a DNS label", "POST", REGISTER, 400, ("type", "Cost!"), json=reg(type="Cost!")),
    Case("host with a space", "POST", REGISTER, 400, ("host",), json=reg(host="bad host")),
    Case(
        "capability with a space",
        "POST",
        REGISTER,
        400,
        ("capabilities[0]", "Bad Cap"),
        json=reg(capabilities=["Bad Cap"]),
    ),
    Case(
        "duplicate capabilities",
        "POST",
        REGISTER,
        400,
        ("capabilities", "duplicate"),
        json=reg(capabilities=["a", "a"]),
    ),
    Case(
        "too many capabilities",
        "POST",
        REGISTER,
        400,
        ("capabilities", "64"),
        json=reg(capabilities=[f"c{i}" for i in range(65)]),
    ),
    Case("version too long", "POST", REGISTER, 400, ("version", "64"), json=reg(version="1" * 65)),
    Case(
        "metadata with 65 entries",
        "POST",
        REGISTER,
        400,
        ("metadata", "64 entries"),
        json=reg(metadata=big_metadata(65)),
    ),
    Case(
        "metadata over 16 KiB",
        "POST",
        REGISTER,
        400,
        ("metadata", "16384 bytes"),
        json=reg(metadata=big_metadata(2, 9000)),
    ),
    # register: not a JSON object
    Case(
        "invalid JSON",
        "POST",
        REGISTER,
        400,
        ("not valid JSON",),
        content=b'{"name": ',
        headers={"Content-Type": "application/json"},
    ),
    Case(
        "empty body",
        "POST",
        REGISTER,
        400,
        ("body is required",),
        content=b"",
        headers={"Content-Type": "application/json"},
    ),
    Case("a JSON list", "POST", REGISTER, 400, ("JSON object",), json=[reg()]),
    Case("JSON null", "POST", REGISTER, 400, ("body",), content=b"null", headers={"Content-Type": "application/json"}),
    Case(
        "a form instead of JSON",
        "POST",
        REGISTER,
        400,
        ("JSON",),
        content=b"name=x&type=cost",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    Case(
        "oversized body", "POST", REGISTER, 413, ("larger than 65536 bytes",), json=reg(metadata=big_metadata(8, 9000))
    ),
    # heartbeat
    Case(
        "heartbeat with a bad status",
        "POST",
        HEARTBEAT,
        400,
        ("status", "'healthy', 'degraded' or 'unhealthy'"),
        json={"status": "fine"},
    ),
    Case("heartbeat without status", "POST", HEARTBEAT, 400, ("status", "required"), json={}),
    Case("heartbeat status as a number", "POST", HEARTBEAT, 400, ("status",), json={"status": 1}),
    Case(
        "heartbeat metadata as a string",
        "POST",
        HEARTBEAT,
        400,
        ("metadata",),
        json={"status": "healthy", "metadata": "x"},
    ),
    Case(
        "heartbeat metadata with 65 entries",
        "POST",
        HEARTBEAT,
        400,
        ("metadata", "64 entries"),
        json={"status": "healthy", "metadata": big_metadata(65)},
    ),
    Case(
        "heartbeat with invalid JSON",
        "POST",
        HEARTBEAT,
        400,
        ("not valid JSON",),
        content=b"{",
        headers={"Content-Type": "application/json"},
    ),
    Case(
        "heartbeat without a body",
        "POST",
        HEARTBEAT,
        400,
        ("body is required",),
        content=b"",
        headers={"Content-Type": "application/json"},
    ),
    Case(
        "heartbeat oversized",
        "POST",
        HEARTBEAT,
        413,
        ("larger than",),
        json={"status": "healthy", "metadata": big_metadata(8, 9000)},
    ),
    Case(
        "heartbeat for a non-UUID id",
        "POST",
        "/agents/not-a-uuid/heartbeat",
        400,
        ("not-a-uuid", "not a UUID"),
        json={"status": "healthy"},
    ),
    Case(
        "heartbeat for an unknown id",
        "POST",
        f"/agents/{UNKNOWN}/heartbeat",
        404,
        ("Agent not found",),
        json={"status": "healthy"},
    ),
    # unregister and reads
    Case("unregister a non-UUID id", "POST", "/agents/1234/unregister", 400, ("not a UUID",)),
    Case("unregister an unknown id", "POST", f"/agents/{UNKNOWN}/unregister", 404, ("Agent not found",)),
    Case("get a non-UUID id", "GET", "/agents/not-a-uuid", 400, ("not a UUID",)),
    Case("get an unknown id", "GET", f"/agents/{UNKNOWN}", 404, ("Agent not found",)),
    Case("list with a bad status", "GET", "/agents", 400, ("status", "bogus"), params={"status": "bogus"}),
    Case("list with a bad namespace", "GET", "/agents", 400, ("namespace",), params={"namespace": "Bad_NS"}),
    Case("list with an overlong capability", "GET", "/agents", 400, ("capability",), params={"capability": "c" * 70}),
    Case("route without a type", "GET", "/agents/route", 400, ("type", "required")),
    # routing
    Case("unknown route", "GET", "/nope", 404, ("no route", "/nope")),
    Case("wrong method", "DELETE", "/agents", 405, ("DELETE", "not allowed")),
    Case("register with GET", "PUT", REGISTER, 405, ("PUT", "not allowed")),
]


def snapshot(agents: Agents) -> dict[str, tuple[str, str]]:
    return {
        o["metadata"]["name"]: (o["metadata"]["resourceVersion"], json.dumps(o.get("status"), sort_keys=True))
        for o in agents.list()
    }


def test_bad_input_gets_a_named_4xx_and_changes_nothing(
    facade: FacadeProcess, http: httpx.Client, agents: Agents, subtests: Any
) -> None:
    victim = http.post("/agents/register", json=registration("victim")).json()["agent_id"]
    before = snapshot(agents)
    for case in CASES:
        with subtests.test(msg=case.id):
            response = http.request(
                case.method,
                case.path.replace(VICTIM, victim),
                json=case.json,
                content=case.content,
                headers=case.headers,
                params=case.params,
            )
            assert response.status_code == case.status, response.text
            assert response.headers["content-type"] == "application/json"
            body = response.json()
            assert set(body) == {"error"} and isinstance(body["error"], str), body
            for mention in case.mentions:
                assert mention.lower() in body["error"].lower(), (mention, body["error"])
    assert snapshot(agents) == before


def test_a_streamed_body_is_cut_off_at_the_limit(facade: FacadeProcess, http: httpx.Client, agents: Agents) -> None:
    def chunks() -> Iterator[bytes]:
        # No Content-Length: the limit must hold while the body streams in.
        yield b'{"name": "streamed", "type": "cost", "host": "h", "port": 1, "metadata": {"k": "'
        for _ in range(40):
            yield b"x" * 4096
        yield b'"}}'

    response = http.post("/agents/register", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]
    assert agents.list() == []


def test_metadata_bound_holds_after_heartbeat_merges(facade: FacadeProcess, http: httpx.Client, agents: Agents) -> None:
    """Each heartbeat is within bounds, but merged they exceed the entry count: the API server's
    maxProperties refuses the patch, and the facade says so as a 400 naming the field."""
    agent_id = http.post("/agents/register", json=registration("a")).json()["agent_id"]
    assert http.post(
        f"/agents/{agent_id}/heartbeat", json={"status": "healthy", "metadata": big_metadata(40)}
    ).is_success
    more = {f"m{i}": "y" for i in range(40)}
    response = http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy", "metadata": more})
    assert response.status_code == 400
    assert "reportedMetadata" in response.json()["error"]
    obj = agents.get("a")
    assert obj is not None and len(obj["status"]["reportedMetadata"]) == 40


@pytest.mark.parametrize("content_type", [None, "text/plain"])
def test_json_without_a_json_content_type(facade: FacadeProcess, http: httpx.Client, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = http.post("/agents/register", content=json.dumps(registration("curl-agent")), headers=headers)
    if content_type is None:
        assert response.status_code == 201, response.text  # read as JSON, as curl -d users expect
    else:
        assert response.status_code == 400
        assert "Content-Type: application/json" in response.json()["error"]
