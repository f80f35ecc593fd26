"""The benchmark's fleet helpers against a real API server."""

from __future__ import annotations

import sys

import pytest

from agent_registry.localcluster.controlplane import LocalControlPlane
from repo import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))

from bench.fleet import Fleet, Timing, create_agents
from bench.load import session

pytestmark = pytest.mark.k8s


async def test_an_agent_the_api_server_refuses_stops_the_fleet_at_once(
    controlplane: LocalControlPlane, namespace: str
) -> None:
    """A timing the CRD refuses (unreachable-after must exceed the interval) used to be
    retried in silence for every agent, which looked like a hang at 10,000 agents."""
    api = session(controlplane.server, token=None, ssl_context=controlplane.admin_ssl_context(), connections=4)
    try:
        fleet = Fleet(50, namespace, Timing(interval=30, unreachable_after=30))
        with pytest.raises(RuntimeError, match=r"refused agent agent-\d+: .*Invalid"):
            await create_agents(api, fleet, concurrency=1)
        assert fleet.uids == [""] * 50
    finally:
        await api.close()
