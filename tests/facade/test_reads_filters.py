"""Which agents a list query's filters keep (``reads.matches``), as pure logic (no cluster)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from agent_registry.facade.reads import matches_filters as matches
from agent_registry.schema.rest import AgentView

VIEW = AgentView(
    id="123e4567-e89b-12d3-a456-426614174000",
    name="cost-1",
    type="cost",
    host="10.0.0.7",
    port=8001,
    capabilities=["spot_migration", "rightsizing"],
    status="healthy",
    version="1.2.3",
    registered_at=None,
    last_seen=None,
)


@pytest.mark.parametrize(
    ("agent_type", "capabilities", "status", "kept"),
    [
        (None, [], None, True),
        ("cost", [], None, True),
        ("performance", [], None, False),
        (None, [], "healthy", True),
        (None, [], "degraded", False),
        (None, ["rightsizing"], None, True),
        (None, ["rightsizing", "spot_migration"], None, True),  # all of them, in any order
        (None, ["rightsizing", "rightsizing"], None, True),
        (None, ["rightsizing", "gpu"], None, False),  # one missing is enough to drop it
        ("cost", ["spot_migration"], "healthy", True),
        ("cost", ["spot_migration"], "unhealthy", False),
    ],
)
def test_every_given_filter_must_hold(
    agent_type: str | None, capabilities: Sequence[str], status: str | None, kept: bool
) -> None:
    assert matches(VIEW, agent_type, capabilities, status) is kept


def test_an_agent_without_capabilities_matches_only_queries_that_ask_for_none() -> None:
    bare = VIEW.model_copy(update={"capabilities": []})
    assert matches(bare, "cost", [], None)
    assert not matches(bare, "cost", ["rightsizing"], None)
