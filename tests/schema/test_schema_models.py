"""The pydantic models on their own: defaults, rules and error paths (no cluster)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from agent_cases import BAD_SPECS, GOOD_SPECS, VALID_SPEC, BadSpec, names_field
from agent_registry.schema import constants as c
from agent_registry.schema.agent import AgentSpec, AgentStatus, Phase, error_paths, validate_spec_update
from agent_registry.schema.rest import (
    HeartbeatRequest,
    RegistrationRequest,
    agent_view_from_resource,
)


def test_defaults_are_filled_in() -> None:
    spec = AgentSpec.model_validate({"type": "cost", "host": "h", "port": 80})
    assert spec.capabilities == []
    assert spec.version == c.DEFAULT_AGENT_VERSION
    assert spec.metadata == {}
    assert spec.heartbeat.interval_seconds == 30
    assert spec.heartbeat.unreachable_after_seconds == 45
    assert spec.heartbeat.gc_after_seconds == 300


def test_wire_names_are_camel_case() -> None:
    dumped = AgentSpec.model_validate(VALID_SPEC).model_dump(by_alias=True)
    assert set(dumped["heartbeat"]) == {"intervalSeconds", "unreachableAfterSeconds", "gcAfterSeconds"}


@pytest.mark.parametrize("name", list(GOOD_SPECS))
def test_good_specs_are_accepted(name: str) -> None:
    AgentSpec.model_validate(GOOD_SPECS[name])


@pytest.mark.parametrize("case", BAD_SPECS, ids=lambda case: case.name)
def test_bad_specs_name_the_field(case: BadSpec) -> None:
    with pytest.raises(ValidationError) as excinfo:
        AgentSpec.model_validate(case.spec)
    paths = error_paths(excinfo.value)
    assert any(names_field(line, case.field) for line in paths), paths


def test_type_is_immutable() -> None:
    old = AgentSpec.model_validate(VALID_SPEC)
    validate_spec_update(old, old.model_copy(update={"port": 9}))
    with pytest.raises(ValueError, match=r"spec\.type: type is immutable"):
        validate_spec_update(old, old.model_copy(update={"type": "performance"}))


def test_status_accepts_what_the_components_write() -> None:
    status = AgentStatus.model_validate(
        {
            "phase": "Degraded",
            "agentId": "0b0e6d5e-6c1f-4a37-9a41-3f1f0c5e2a10",
            "registeredAt": "2026-11-28T10:00:00Z",
            "lastHeartbeatTime": "2026-11-28T10:00:30Z",
            "heartbeatSequence": 3,
            "reportedStatus": "degraded",
            "reportedMetadata": {"load": 0.9},
            "heartbeatSource": "sidecar/cost-agent-0",
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "Degraded", "lastTransitionTime": "2026-11-28T10:00:30Z"}
            ],
            "observedGeneration": 1,
        }
    )
    assert status.phase is Phase.DEGRADED
    with pytest.raises(ValidationError):
        AgentStatus.model_validate({"agentId": "not-a-uuid"})
    with pytest.raises(ValidationError):
        AgentStatus.model_validate({"phase": "Lost"})


def test_registration_request_matches_the_spec_rules() -> None:
    body = {"name": "cost-agent-1", "type": "cost", "host": "10.0.0.5", "port": 8001, "capabilities": ["a"]}
    spec = RegistrationRequest.model_validate(body).to_spec()
    assert spec.port == 8001 and spec.version == "1.0.0"
    for bad in ({**body, "name": "Cost Agent"}, {**body, "port": 0}, {**body, "type": "COST"}):
        with pytest.raises(ValidationError):
            RegistrationRequest.model_validate(bad)
    with pytest.raises(ValidationError):
        HeartbeatRequest.model_validate({"status": "sleepy"})


def test_rest_view_of_a_resource_merges_metadata_and_lowercases_phase() -> None:
    resource = {
        "metadata": {"name": "cost-agent-1", "labels": {c.AGENT_ID_LABEL: "0b0e6d5e-6c1f-4a37-9a41-3f1f0c5e2a10"}},
        "spec": {**VALID_SPEC, "metadata": {"region": "eu", "tier": "a"}},
        "status": {"phase": "Unreachable", "reportedMetadata": {"tier": "b"}},
    }
    view = agent_view_from_resource(resource, last_seen=datetime(2026, 1, 1, tzinfo=UTC))
    data = view.to_json()
    assert data["id"] == "0b0e6d5e-6c1f-4a37-9a41-3f1f0c5e2a10"
    assert data["status"] == "unreachable"
    assert data["metadata"] == {"region": "eu", "tier": "b"}
    empty = agent_view_from_resource({**resource, "spec": {**VALID_SPEC, "metadata": {}}, "status": {}}).to_json()
    assert "metadata" not in empty
    assert empty["status"] == "healthy"
