"""``AgentRegistration`` against the real facade, API server, Redis and operator: the original
interface exactly as existing agents call it, plus the token, the context manager, the
asyncio variant, a heartbeat thread that survives outages and re-registers after a 404,
heartbeats that report load and capability health, and ``route``."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from accounts import Accounts
from agent_registry.localcluster.launcher import FacadeProcess, OperatorProcess
from agent_registry.localcluster.process import free_port, wait_for
from agent_registry.schema import constants as c
from agent_sidecar import AgentRegistration, RegistryClient
from agent_sidecar.aio_client import AsyncAgentRegistration, AsyncRegistryClient
from agent_sidecar.client import BadQueryError, RegistrationError
from facade_harness import FAST_TIMINGS
from operator_harness import Agents


@pytest.fixture
def fast_facade(make_facade: Callable[..., FacadeProcess]) -> FacadeProcess:
    """Tells agents to heartbeat every second."""
    return make_facade(timings=FAST_TIMINGS)


def heartbeats_arrive(agents: Agents, name: str, count: int = 2, timeout: float = 20) -> None:
    """Wait until ``count`` more heartbeats have landed (Lease renewals, or status patches)."""
    agents.wait_beats(name, count, timeout)


def agent_id_of(agents: Agents, name: str) -> str | None:
    obj = agents.get(name)
    return None if obj is None else (obj.get("status") or {}).get("agentId")


def load_on_lease(agents: Agents, name: str) -> str | None:
    return (((agents.lease(name) or {}).get("metadata") or {}).get("annotations") or {}).get(c.LOAD_ANNOTATION)


def shown_capability_health(facade: FacadeProcess, agent_id: str | None) -> Any:
    """``capability_health`` of the REST ``Agent``, None when it is left out (all healthy)."""
    with facade.client() as http:
        response = http.get(f"/agents/{agent_id}")
    assert response.status_code == 200, response.text
    return response.json().get("capability_health")


def test_the_original_interface(operator: OperatorProcess, fast_facade: FacadeProcess, agents: Agents) -> None:
    # Exactly as existing agents construct and call it.
    registration = AgentRegistration(
        "cost-agent-1",
        "cost",
        "10.0.0.7",
        8001,
        ["spot_migration", "rightsizing"],
        orchestrator_url=fast_facade.url,
        version="2.0.0",
        metadata={"region": "eu-west-1"},
    )
    try:
        assert registration.register() is True
        assert registration.agent_id is not None
        uuid.UUID(registration.agent_id)
        assert registration.heartbeat_interval == 1
        obj = agents.get("cost-agent-1")
        assert obj is not None
        assert obj["spec"]["capabilities"] == ["spot_migration", "rightsizing"]
        assert obj["spec"]["version"] == "2.0.0"
        assert obj["spec"]["metadata"] == {"region": "eu-west-1"}

        registration.start_heartbeat()
        heartbeats_arrive(agents, "cost-agent-1", count=3)
        wait_for("Healthy", lambda: agents.phase("cost-agent-1") == "Healthy")
        assert (agents.get("cost-agent-1") or {})["status"]["heartbeatSource"] == "rest"

        registration.stop_heartbeat_loop()
        assert registration.running is False
        assert registration.unregister() is True
        assert agents.get("cost-agent-1") is None
        assert registration.agent_id is None
    finally:
        registration.close()


def test_defaults_match_the_original() -> None:
    registration = AgentRegistration("a", "cost", "h", 1, [])
    try:
        assert registration.orchestrator_url == "http://localhost:8080"
        assert registration.version == "1.0.0"
        assert registration.metadata is None
        assert registration.agent_id is None
        assert registration.heartbeat_interval == 30
    finally:
        registration.close()


def test_register_reports_failure_without_raising(fast_facade: FacadeProcess, agents: Agents) -> None:
    nowhere = AgentRegistration("a", "cost", "h", 1, [], orchestrator_url=f"http://127.0.0.1:{free_port()}")
    invalid = AgentRegistration("Not_A_Name", "cost", "h", 1, [], orchestrator_url=fast_facade.url)
    try:
        assert nowhere.register() is False
        assert invalid.register() is False
        assert invalid.agent_id is None
        assert nowhere.unregister() is False  # never registered
    finally:
        nowhere.close()
        invalid.close()
    assert agents.list() == []


def test_a_404_mid_run_registers_again(operator: OperatorProcess, fast_facade: FacadeProcess, agents: Agents) -> None:
    registration = AgentRegistration("perf-1", "performance", "10.0.0.8", 8002, ["latency"], fast_facade.url)
    try:
        assert registration.register()
        first_id = registration.agent_id
        registration.start_heartbeat()
        heartbeats_arrive(agents, "perf-1")

        agents.delete("perf-1")  # as if garbage-collected while the agent could not heartbeat

        wait_for("a new Agent", lambda: (i := agent_id_of(agents, "perf-1")) is not None and i != first_id)
        wait_for("the client to know its new id", lambda: registration.agent_id == agent_id_of(agents, "perf-1"))
        assert registration.agent_id != first_id
        heartbeats_arrive(agents, "perf-1")
    finally:
        registration.unregister()
        registration.close()
    assert agents.get("perf-1") is None


def test_heartbeats_survive_a_registry_outage(
    make_facade: Callable[..., FacadeProcess], agents: Agents, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_facade(timings=FAST_TIMINGS)
    registration = AgentRegistration("cost-1", "cost", "h", 1, [], first.url)
    try:
        assert registration.register()
        registration.start_heartbeat()
        heartbeats_arrive(agents, "cost-1")

        caplog.set_level(logging.WARNING, logger="agent_sidecar.client")
        assert first.stop() == 0
        wait_for("a failed heartbeat", lambda: any("heartbeat of cost-1 failed" in r.message for r in caplog.records))
        make_facade(port=first.port, timings=FAST_TIMINGS)  # the same address, like a restarted Service
        heartbeats_arrive(agents, "cost-1", count=1, timeout=30)
        assert registration.running
    finally:
        registration.unregister()
        registration.close()


def test_context_manager(fast_facade: FacadeProcess, agents: Agents) -> None:
    with AgentRegistration("cost-1", "cost", "h", 1, ["x"], fast_facade.url) as registration:
        assert registration.agent_id == agent_id_of(agents, "cost-1")
        heartbeats_arrive(agents, "cost-1")
    assert agents.get("cost-1") is None
    with (
        pytest.raises(RegistrationError),
        AgentRegistration("Bad_Name", "cost", "h", 1, [], fast_facade.url),
    ):
        pass


def test_status_provider_reports_health(operator: OperatorProcess, fast_facade: FacadeProcess, agents: Agents) -> None:
    state = {"status": "healthy"}
    with AgentRegistration("cost-1", "cost", "h", 1, [], fast_facade.url, status_provider=lambda: state["status"]):
        wait_for("Healthy", lambda: agents.phase("cost-1") == "Healthy")
        state["status"] = "degraded"
        wait_for("Degraded", lambda: agents.phase("cost-1") == "Degraded")


def test_bearer_token_and_token_file(
    make_facade: Callable[..., FacadeProcess],
    accounts: Accounts,
    agents: Agents,
    tmp_path: Path,
) -> None:
    rules = [
        {"apiGroups": [c.GROUP], "resources": ["agents"], "verbs": ["get", "create", "update", "delete"]},
        {"apiGroups": [c.GROUP], "resources": ["agents/status"], "verbs": ["patch"]},
    ]
    accounts.grant("agent", rules, role="agent")
    token = accounts.token("agent")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    facade = make_facade(auth=True, timings=FAST_TIMINGS)

    anonymous = AgentRegistration("cost-0", "cost", "h", 1, [], facade.url)
    try:
        assert anonymous.register() is False
    finally:
        anonymous.close()
    with AgentRegistration("cost-1", "cost", "h", 1, [], facade.url, token=token):
        heartbeats_arrive(agents, "cost-1")
    with AgentRegistration("cost-2", "cost", "h", 1, [], facade.url, token_file=token_file):
        heartbeats_arrive(agents, "cost-2")
    assert agents.list() == []


async def test_the_asyncio_variant(operator: OperatorProcess, fast_facade: FacadeProcess, agents: Agents) -> None:
    async def wait(what: str, probe: Callable[[], Any], timeout: float = 20) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await asyncio.to_thread(probe):
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.2)

    async with AsyncAgentRegistration("async-1", "cost", "h", 1, ["x"], fast_facade.url) as registration:
        first_id = registration.agent_id
        start = agents.beat_marker("async-1")
        await wait("heartbeats", lambda: agents.beat_marker("async-1") != start)
        await wait("Healthy", lambda: agents.phase("async-1") == "Healthy")
        assert await registration.send_heartbeat("degraded", {"queue": 3}) is True

        agents.delete("async-1")
        await wait("a new Agent", lambda: agent_id_of(agents, "async-1") not in (None, first_id))
        await wait("the new id", lambda: registration.agent_id == agent_id_of(agents, "async-1"))
    assert agents.get("async-1") is None


# -- load and capability health ----------------------------------------------------------------

PRICING_DOWN = {"rightsizing": {"status": "unhealthy", "reason": "pricing feed down"}}


def test_heartbeats_report_load_and_capability_health(
    operator: OperatorProcess, fast_facade: FacadeProcess, agents: Agents
) -> None:
    registration = AgentRegistration("cost-1", "cost", "h", 1, ["spot_migration", "rightsizing"], fast_facade.url)
    try:
        assert registration.register()
        assert registration.send_heartbeat(
            load=(3, 10), capabilities={"rightsizing": ("unhealthy", "pricing feed down")}
        )
        assert shown_capability_health(fast_facade, registration.agent_id) == PRICING_DOWN
        stored = agents.get("cost-1")
        assert stored is not None
        assert stored["status"]["capabilityHealth"] == [
            {"name": "rightsizing", "status": "unhealthy", "reason": "pricing feed down"}
        ]
        assert load_on_lease(agents, "cost-1") == "3/10"

        # The same report with another load renews the Lease only.
        assert registration.send_heartbeat(
            load=(4, 10), capabilities={"rightsizing": ("unhealthy", "pricing feed down")}
        )
        assert load_on_lease(agents, "cost-1") == "4/10"
        unchanged = agents.get("cost-1")
        assert unchanged is not None
        assert unchanged["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]

        # Every heartbeat is a full report: one that names nothing says all healthy, no load.
        assert registration.send_heartbeat()
        assert shown_capability_health(fast_facade, registration.agent_id) is None
        assert (agents.get("cost-1") or {})["status"]["capabilityHealth"] == []
        # The facade renews the Lease of a heartbeat that wrote the status only when it
        # carries a load; the next one, a plain renewal, takes the old load away.
        assert registration.send_heartbeat()
        assert load_on_lease(agents, "cost-1") is None

        # A report the schema refuses raises before anything is sent.
        before = agents.beat_marker("cost-1")
        with pytest.raises(ValueError, match=r"^load\.max: "):
            registration.send_heartbeat(load=(1, 0))
        with pytest.raises(ValueError, match=r"^capabilities\.gpu: not one of this agent's capabilities"):
            registration.send_heartbeat(capabilities={"gpu": "degraded"})
        assert agents.beat_marker("cost-1") == before
    finally:
        registration.unregister()
        registration.close()


def test_the_heartbeat_thread_reports_what_the_providers_say(
    operator: OperatorProcess, fast_facade: FacadeProcess, agents: Agents
) -> None:
    state: dict[str, Any] = {"load": (1, 4), "capabilities": {"rightsizing": ("unhealthy", "pricing feed down")}}
    with AgentRegistration(
        "cost-1",
        "cost",
        "h",
        1,
        ["spot_migration", "rightsizing"],
        fast_facade.url,
        load_provider=lambda: state["load"],
        capability_provider=lambda: state["capabilities"],
    ) as registration:
        wait_for(
            "the capability report", lambda: shown_capability_health(fast_facade, registration.agent_id) == PRICING_DOWN
        )
        wait_for("the load on the Lease", lambda: load_on_lease(agents, "cost-1") == "1/4")
        state.update(load=(4, 4), capabilities={"rightsizing": "healthy"})
        wait_for("the load to change", lambda: load_on_lease(agents, "cost-1") == "4/4")
        wait_for("the recovery", lambda: shown_capability_health(fast_facade, registration.agent_id) is None)


async def test_the_asyncio_variant_reports_load_and_capability_health(
    operator: OperatorProcess, fast_facade: FacadeProcess, agents: Agents
) -> None:
    # Registered without the heartbeat task: its own beats (all healthy, no load) would race
    # the one this test sends, and each heartbeat is a full report.
    registration = AsyncAgentRegistration("async-1", "cost", "h", 1, ["rightsizing"], fast_facade.url)
    try:
        assert await registration.register()
        sent = await registration.send_heartbeat(
            load=(2, 5), capabilities={"rightsizing": ("unhealthy", "pricing feed down")}
        )
        assert sent is True
        assert await asyncio.to_thread(shown_capability_health, fast_facade, registration.agent_id) == PRICING_DOWN
        assert await asyncio.to_thread(load_on_lease, agents, "async-1") == "2/5"
    finally:
        await registration.unregister()
        await registration.aclose()


# -- route -------------------------------------------------------------------------------------


async def test_route_asks_the_registry_for_an_agent(operator: OperatorProcess, fast_facade: FacadeProcess) -> None:
    old = AgentRegistration("cost-old", "cost", "10.0.0.1", 8001, ["rightsizing"], fast_facade.url, version="1.2.0")
    new = AgentRegistration(
        "cost-new", "cost", "10.0.0.2", 8001, ["rightsizing", "spot_migration"], fast_facade.url, version="2.0.0"
    )
    registry = RegistryClient(fast_facade.url)
    try:
        assert old.register() and new.register()

        def route(*args: Any, **kwargs: Any) -> str | None:
            agent = registry.route(*args, **kwargs)
            return None if agent is None else str(agent["name"])

        wait_for("both routable", lambda: {route("cost") for _ in range(6)} == {"cost-old", "cost-new"})
        assert route("cost", ["rightsizing", "spot_migration"]) == "cost-new"
        assert route("cost", "spot_migration") == "cost-new"
        assert route("cost", version=">=1,<2") == "cost-old"
        assert route("cost", version="^2") == "cost-new"
        sticky = {route("cost", key="tenant-7") for _ in range(5)}
        assert len(sticky) == 1
        assert route("cost", ["translate"]) is None
        assert route("performance") is None
        with pytest.raises(BadQueryError, match="version") as refused:
            registry.route("cost", version="newest")
        assert isinstance(refused.value, ValueError)

        # The same call from an agent's own client, and from asyncio.
        agent = old.route("cost", ["spot_migration"])
        assert agent is not None and agent["name"] == "cost-new"
        assert agent["id"] == new.agent_id
        async with AsyncRegistryClient(fast_facade.url) as aio_registry:
            found = await aio_registry.route("cost", version="<2")
            assert found is not None and found["name"] == "cost-old"
            assert await aio_registry.route("cost", ["translate"]) is None
            with pytest.raises(BadQueryError):
                await aio_registry.route("cost", version="newest")
    finally:
        registry.close()
        for registration in (old, new):
            registration.unregister()
            registration.close()
