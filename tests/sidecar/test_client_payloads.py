"""The client library's heartbeat and route requests, built and checked without a registry:
the bodies must be ones the facade's own schema accepts, and bad input a ValueError that
names the field before anything is sent."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent_registry.localcluster.process import free_port
from agent_registry.schema.agent import CapabilityReport, Load, ReportedStatus
from agent_registry.schema.rest import HeartbeatRequest, RegistrationRequest
from agent_sidecar import AgentRegistration, RegistryClient
from agent_sidecar.aio_client import AsyncAgentRegistration
from agent_sidecar.client import BadQueryError, RegistryConnection, RegistryError
from cards import a2a_card

CAPABILITIES = ["spot_migration", "rightsizing"]


@pytest.fixture
def registration() -> Iterator[AgentRegistration]:
    client = AgentRegistration("cost-1", "cost", "10.0.0.7", 8001, CAPABILITIES)
    yield client
    client.close()


def test_the_heartbeat_body_carries_load_and_capabilities(registration: AgentRegistration) -> None:
    body = registration._heartbeat_body(
        "degraded",
        {"queue": 3},
        (3, 10),
        {
            "spot_migration": "healthy",
            "rightsizing": ("unhealthy", "pricing feed down"),
        },
    )
    assert body == {
        "status": "degraded",
        "metadata": {"queue": 3},
        "capabilities": {
            "spot_migration": {"status": "healthy"},
            "rightsizing": {"status": "unhealthy", "reason": "pricing feed down"},
        },
        "load": {"in_flight": 3, "max": 10},
    }
    # The facade reads it with this model: what the client sends, it accepts.
    parsed = HeartbeatRequest.model_validate(body)
    assert parsed.load == Load(in_flight=3, max=10)
    assert parsed.capabilities is not None
    assert parsed.capabilities["rightsizing"].reason == "pricing feed down"


def test_the_schemas_own_models_go_in_as_they_are(registration: AgentRegistration) -> None:
    report = CapabilityReport(status=ReportedStatus.DEGRADED, reason="slow model")
    body = registration._heartbeat_body("healthy", None, Load(in_flight=11, max=10), {"rightsizing": report})
    assert body == {
        "status": "healthy",
        "capabilities": {"rightsizing": {"status": "degraded", "reason": "slow model"}},
        "load": {"in_flight": 11, "max": 10},  # over max is full, not wrong
    }


def test_without_a_report_the_body_is_the_original_one(registration: AgentRegistration) -> None:
    assert registration._heartbeat_body("healthy", None) == {"status": "healthy"}
    assert registration._heartbeat_body("healthy", None, None, {}) == {"status": "healthy"}


@pytest.mark.parametrize(
    ("load", "capabilities", "message"),
    [
        ((1, 0), None, "load.max: Input should be greater than or equal to 1 (got 0)"),
        ((-1, 4), None, "load.in_flight: Input should be greater than or equal to 0 (got -1)"),
        (("3", 10), None, "load.in_flight: Input should be a valid integer (got '3')"),
        ((True, 10), None, "load.in_flight: Input should be a valid integer (got True)"),
        ((3,), None, "load: must be a Load or an (in_flight, max) tuple"),
        ({"in_flight": 3, "max": 10}, None, "load: must be a Load or an (in_flight, max) tuple"),
        (
            None,
            {"gpu": "healthy"},
            "capabilities.gpu: not one of this agent's capabilities (spot_migration, rightsizing)",
        ),
        (None, {"rightsizing": "broken"}, "capabilities.rightsizing.status: Input should be 'healthy', 'degraded' or"),
        (
            None,
            {"rightsizing": ("degraded", "x" * 257)},
            "capabilities.rightsizing.reason: String should have at most 256",
        ),
        (None, {"rightsizing": ("degraded", 7)}, "capabilities.rightsizing.reason: Input should be a valid string"),
        (None, {"rightsizing": 3}, "capabilities.rightsizing: must be a status, a (status, reason) tuple or a"),
        (None, ["rightsizing"], "capabilities: must map capability names to a status"),
    ],
)
def test_a_bad_report_is_a_value_error_naming_the_field(
    registration: AgentRegistration, load: Any, capabilities: Any, message: str
) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        registration._heartbeat_body("healthy", None, load, capabilities)


async def test_the_asyncio_client_checks_the_same_way() -> None:
    client = AsyncAgentRegistration("cost-1", "cost", "h", 1, CAPABILITIES)
    client.agent_id = "0b0e6d5e-6c1f-4a37-9a41-3f1f0c5e2a10"
    try:
        with pytest.raises(ValueError, match=r"^load\.max: "):
            await client.send_heartbeat(load=(1, 0))
        with pytest.raises(ValueError, match=r"^capabilities\.gpu: "):
            await client.send_heartbeat(capabilities={"gpu": "degraded"})
    finally:
        await client.aclose()


def test_the_heartbeat_loop_asks_the_providers() -> None:
    state: dict[str, Any] = {"load": (2, 8), "capabilities": {"rightsizing": ("degraded", "warming up")}}
    client = AgentRegistration(
        "cost-1",
        "cost",
        "h",
        1,
        CAPABILITIES,
        status_provider=lambda: "healthy",
        load_provider=lambda: state["load"],
        capability_provider=lambda: state["capabilities"],
    )
    try:
        assert client._current_heartbeat() == {
            "status": "healthy",
            "capabilities": {"rightsizing": {"status": "degraded", "reason": "warming up"}},
            "load": {"in_flight": 2, "max": 8},
        }
        state.update(load=None, capabilities=None)
        assert client._current_heartbeat() == {"status": "healthy"}
    finally:
        client.close()


def test_failing_providers_never_stop_the_heartbeat(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Any:
        raise RuntimeError("metrics backend down")

    client = AgentRegistration("cost-1", "cost", "h", 1, CAPABILITIES, load_provider=broken, capability_provider=broken)
    caplog.set_level(logging.ERROR, logger="agent_sidecar.client")
    try:
        # No load rather than a wrong one; every capability unhealthy rather than trusted.
        unhealthy = {"status": "unhealthy", "reason": "the capability provider failed: RuntimeError"}
        assert client._current_heartbeat() == {
            "status": "healthy",
            "capabilities": dict.fromkeys(CAPABILITIES, unhealthy),
        }
        # An answer the schema refuses counts as a failure too.
        client.load_provider = lambda: (5, 0)
        client.capability_provider = lambda: {"gpu": "healthy"}
        refused = client._current_heartbeat()
        assert "load" not in refused
        reason = "the capability provider's report is invalid: capabilities.gpu: not one of this agent's capabilities"
        assert {report["reason"] for report in refused["capabilities"].values()} == {
            f"{reason} (spot_migration, rightsizing)"
        }
        messages = [record.getMessage() for record in caplog.records]
        assert "the load provider of cost-1 failed; reporting no load" in messages
        assert "the capability provider of cost-1 failed; reporting every capability unhealthy" in messages
        assert any(
            message.startswith("the capability provider of cost-1 answered a bad report") for message in messages
        )
    finally:
        client.close()


def test_route_parameters() -> None:
    connection = RegistryConnection("http://registry/", namespace="team-a")
    params = connection._route_params("cost", ["rightsizing", "spot_migration"], "tenant-7", ">=1.4,<2", None)
    assert params.multi_items() == [
        ("type", "cost"),
        ("capability", "rightsizing"),
        ("capability", "spot_migration"),
        ("key", "tenant-7"),
        ("version", ">=1.4,<2"),
        ("namespace", "team-a"),
    ]
    # One capability as a plain string is that capability; a namespace given wins.
    lone = connection._route_params("cost", "rightsizing", None, None, "team-b")
    assert lone.multi_items() == [("type", "cost"), ("capability", "rightsizing"), ("namespace", "team-b")]
    assert RegistryConnection()._route_params("cost", (), None, None, None).multi_items() == [("type", "cost")]


def test_route_answers() -> None:
    agent = {"id": "0b0e6d5e-6c1f-4a37-9a41-3f1f0c5e2a10", "name": "cost-1"}
    assert RegistryConnection._route_answer(httpx.Response(200, json=agent)) == agent
    assert RegistryConnection._route_answer(httpx.Response(404, json={"error": "no healthy agent"})) is None
    with pytest.raises(BadQueryError, match="version: not a version constraint") as bad:
        RegistryConnection._route_answer(httpx.Response(400, json={"error": "version: not a version constraint"}))
    assert isinstance(bad.value, ValueError) and bad.value.status == 400
    with pytest.raises(RegistryError, match="HTTP 503 API server unreachable") as failed:
        RegistryConnection._route_answer(httpx.Response(503, json={"error": "API server unreachable"}))
    assert failed.value.status == 503
    with pytest.raises(RegistryError, match="unreadable answer"):
        RegistryConnection._route_answer(httpx.Response(200, text="<html>"))


def test_route_without_a_registry_is_a_registry_error() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    with RegistryClient(nowhere, timeout=1) as registry, pytest.raises(RegistryError) as raised:
        registry.route("cost")
    assert raised.value.status is None


def test_a_registration_may_carry_an_a2a_card_checked_before_it_is_sent() -> None:
    card = a2a_card()
    client = AgentRegistration("cost-1", "cost", "10.0.0.7", 8001, CAPABILITIES, agent_card=card)
    body = client._registration_body()
    client.close()
    # The facade reads it with this model: what the client sends, it accepts.
    parsed = RegistrationRequest.model_validate(body)
    assert parsed.agent_card is not None and parsed.agent_card.skill_ids == ["rightsizing", "spot_migration"]
    plain = AgentRegistration("cost-2", "cost", "10.0.0.7", 8001, CAPABILITIES)
    assert "agent_card" not in plain._registration_body()  # the original body, unchanged
    plain.close()
    bad = a2a_card()
    del bad["skills"][0]["tags"]
    with pytest.raises(ValueError, match=r"agent_card\.skills\[0\]\.tags"):
        AgentRegistration("cost-3", "cost", "10.0.0.7", 8001, CAPABILITIES, agent_card=bad)
    with pytest.raises(ValueError, match=r"agent_card\.skills\[0\]\.tags"):
        AsyncAgentRegistration("cost-4", "cost", "10.0.0.7", 8001, CAPABILITIES, agent_card=bad)
