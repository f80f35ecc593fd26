"""A heartbeat that lands between the decision to delete and the delete wins.

The operator runs in this process, so the test can hand the sweeper its ``before_delete``
seam (through kopf's memo) and write a real heartbeat at exactly that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import kopf
import pytest

from agent_registry.controller.handlers import operator_memo
from agent_registry.controller.settings import OperatorSettings
from agent_registry.controller.sweeper import BeforeDelete
from agent_registry.controller.tracker import TrackedAgent
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.process import wait_for
from operator_harness import Agents

FAST = {"heartbeat": {"intervalSeconds": 1, "unreachableAfterSeconds": 2, "gcAfterSeconds": 2}}


@contextlib.contextmanager
def operator_in_thread(settings: OperatorSettings, before_delete: BeforeDelete) -> Iterator[None]:
    """kopf embedded in a thread with its own event loop, as kopf documents it: the memo is
    the one way into the handlers that the ``kopf run`` command line (KopfRunner) lacks."""
    ready, stop = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        operator = kopf.operator(
            standalone=True,
            namespaces=settings.namespaces,
            memo=operator_memo(settings, before_delete),
            ready_flag=ready,
            stop_flag=stop,
        )
        try:
            asyncio.run(operator)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, name="operator")
    thread.start()
    try:
        if not ready.wait(60):
            raise AssertionError(f"the operator did not start: {failures}")
        yield
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "the operator did not stop"
    assert not failures, failures


@pytest.mark.parametrize("by_lease", [False, True], ids=["status-heartbeat", "lease-renewal"])
def test_heartbeat_racing_the_delete_keeps_the_agent(
    controlplane: LocalControlPlane,
    namespace: str,
    redis_url: str,
    agents: Agents,
    monkeypatch: pytest.MonkeyPatch,
    by_lease: bool,
) -> None:
    """A status heartbeat changes the Agent's resourceVersion, a renewal the Lease's: either
    makes the precondition of the collecting delete fail."""
    monkeypatch.setenv("KUBECONFIG", str(controlplane.kubeconfig))  # both kopf and the operator's client
    settings = OperatorSettings(
        namespaces=[namespace],
        redis_url=redis_url,
        redis_key_prefix=f"test-{namespace}",
        metrics_port=0,
        leader_election=False,
        sweep_interval_seconds=0.5,
    )
    raced: list[str] = []

    async def heartbeat_now(agent: TrackedAgent) -> None:
        if not raced:  # only the first attempt races; later ones may delete
            (agents.renew if by_lease else agents.heartbeat)(agent.name)
            raced.append(agent.name)

    with operator_in_thread(settings, heartbeat_now):
        agents.create("racer", **FAST)
        wait_for("Healthy", lambda: agents.phase("racer") == "Healthy")
        if by_lease:
            agents.renew("racer")
            wait_for("the Lease seen", lambda: agents.lease("racer") is not None)
        wait_for("the delete raced by a heartbeat", lambda: raced, timeout=20)
        wait_for("RemovalCancelled event", lambda: "RemovalCancelled" in agents.reasons("racer"))
        assert agents.get("racer") is not None, "the heartbeat lost the race"
        wait_for("recovered by the racing heartbeat", lambda: agents.phase("racer") == "Healthy")
        # Left silent again, it is collected on a later sweep.
        wait_for("deleted once truly silent", lambda: agents.get("racer") is None, timeout=30)
