"""The generated Agent CRD, served by a real kube-apiserver + etcd."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from agent_cases import BAD_SPECS, GOOD_SPECS, VALID_SPEC, BadSpec, names_field
from agent_registry import kubeapi
from agent_registry.kubeapi import paths
from agent_registry.kubeapi.sync import SyncApi
from agent_registry.schema import constants as c
from agent_registry.schema.agent import AgentSpec, error_paths
from agent_registry.schema.crd import CRD_FILENAME, render_crd
from repo import CRD_DIR, REPO_ROOT


def test_crd_file_matches_the_models() -> None:
    on_disk = (CRD_DIR / CRD_FILENAME).read_text()
    assert on_disk == render_crd(), "crds/ drifted from the pydantic models: run `make crds`"


def agent(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": name}, "spec": spec}


def create(api: SyncApi, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return api.create(paths.agents(namespace), body)


def rejection(excinfo: pytest.ExceptionInfo[kubeapi.Invalid]) -> str:
    """The API server's message for a 422, which names every field it refused."""
    assert excinfo.value.status == 422, excinfo.value
    return excinfo.value.message


def test_crd_is_established_and_structural(controlplane: Any) -> None:
    out = controlplane.kubectl("get", "crd", c.CRD_NAME, "-o", "json").stdout
    conditions = {cond["type"]: cond["status"] for cond in json.loads(out)["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions.get("NonStructuralSchema") is None


def test_valid_agent_is_accepted_with_defaults(api: SyncApi, namespace: str) -> None:
    created = create(api, namespace, agent("minimal", GOOD_SPECS["minimal"]))
    spec = created["spec"]
    assert spec["capabilities"] == []
    assert spec["version"] == c.DEFAULT_AGENT_VERSION
    assert spec["metadata"] == {}
    assert spec["heartbeat"] == {"intervalSeconds": 30, "unreachableAfterSeconds": 45, "gcAfterSeconds": 300}
    # The server's defaults are the models' defaults.
    assert spec == AgentSpec.model_validate(GOOD_SPECS["minimal"]).model_dump(by_alias=True)


@pytest.mark.parametrize("name", list(GOOD_SPECS))
def test_good_specs_accepted_by_model_and_server(api: SyncApi, namespace: str, name: str) -> None:
    AgentSpec.model_validate(GOOD_SPECS[name])
    created = create(api, namespace, agent(name.replace(" ", "-"), GOOD_SPECS[name]))
    assert created["spec"]["type"] == GOOD_SPECS[name]["type"]


@pytest.mark.parametrize("case", BAD_SPECS, ids=lambda case: case.name)
def test_bad_spec_rejected_by_model_and_server_naming_the_field(api: SyncApi, namespace: str, case: BadSpec) -> None:
    with pytest.raises(ValidationError) as model_error:
        AgentSpec.model_validate(case.spec)
    model_paths = error_paths(model_error.value)
    assert any(names_field(line, case.field) for line in model_paths), model_paths

    if not case.server_rejects:
        create(api, namespace, agent("model-only", case.spec))
        return
    with pytest.raises(kubeapi.Invalid) as server_error:
        create(api, namespace, agent("bad", case.spec))
    message = rejection(server_error)
    assert names_field(message, case.field), message
    # Nothing was stored.
    assert api.list(paths.agents(namespace)) == []


def test_changing_type_is_rejected(api: SyncApi, namespace: str) -> None:
    create(api, namespace, agent("fixed-type", VALID_SPEC))
    with pytest.raises(kubeapi.Invalid) as excinfo:
        api.merge_patch(paths.agents(namespace, "fixed-type"), {"spec": {"type": "performance"}})
    message = rejection(excinfo)
    assert "spec.type" in message and "type is immutable" in message
    # Other spec fields stay mutable.
    patched = api.merge_patch(paths.agents(namespace, "fixed-type"), {"spec": {"port": 9100}})
    assert patched["spec"]["port"] == 9100 and patched["spec"]["type"] == "cost"


def test_status_subresource_isolates_spec_and_status(api: SyncApi, namespace: str) -> None:
    create(api, namespace, agent("isolated", VALID_SPEC))
    status = {"status": {"phase": "Healthy", "reportedStatus": "healthy", "heartbeatSequence": 1}}
    # A status write through the main resource is ignored...
    isolated = paths.agents(namespace, "isolated")
    api.merge_patch(isolated, status)
    obj = api.get(isolated) or {}
    assert "status" not in obj
    # ...a status patch sets status and leaves spec alone, even if it carries a spec...
    api.merge_patch(paths.agents(namespace, "isolated", "status"), {**status, "spec": {"port": 1}})
    obj = api.get(isolated) or {}
    assert obj["status"]["phase"] == "Healthy" and obj["spec"]["port"] == VALID_SPEC["port"]
    # ...and a spec update leaves status alone.
    api.merge_patch(isolated, {"spec": {"port": 2}})
    obj = api.get(isolated) or {}
    assert obj["spec"]["port"] == 2 and obj["status"]["heartbeatSequence"] == 1


def test_bad_status_is_rejected_naming_the_field(api: SyncApi, namespace: str) -> None:
    create(api, namespace, agent("bad-status", VALID_SPEC))
    with pytest.raises(kubeapi.Invalid) as excinfo:
        api.merge_patch(paths.agents(namespace, "bad-status", "status"), {"status": {"reportedStatus": "sleepy"}})
    assert "status.reportedStatus" in rejection(excinfo)


def test_kubectl_prints_the_columns(controlplane: Any, namespace: str) -> None:
    sample = yaml.safe_load((REPO_ROOT / "manifests" / "samples" / "registry_v1_agent.yaml").read_text())
    controlplane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(sample))
    controlplane.kubectl(
        "patch",
        "agent",
        "cost-agent-sample",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(
            {
                "status": {
                    "phase": "Healthy",
                    "lastHeartbeatTime": "2026-11-28T10:00:00Z",
                    "heartbeatSource": "sidecar/cost-pod",
                    "conditions": [
                        {
                            "type": "Reachable",
                            "status": "True",
                            "reason": "HeartbeatReceived",
                            "message": "heartbeats are arriving",
                            "lastTransitionTime": "2026-11-28T09:00:00Z",
                        }
                    ],
                }
            }
        ),
    )
    plain = controlplane.kubectl("get", "agents", "-n", namespace).stdout.splitlines()
    assert plain[0].split() == ["NAME", "TYPE", "PHASE", "ENDPOINT", "LAST-REPORT", "AGE"]
    assert plain[1].split()[:4] == ["cost-agent-sample", "cost", "Healthy", "cost-agent.agents.svc.cluster.local"]

    wide = controlplane.kubectl("get", "ag", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == [
        "NAME",
        "TYPE",
        "PHASE",
        "ENDPOINT",
        "PORT",
        "CAPABILITIES",
        "VERSION",
        "SKILLS",
        "AGENT-ID",
        "LAST-REPORT",
        "REACHABLE-SINCE",
        "SOURCE",
        "AGE",
    ]
    row = wide[1]
    assert "8001" in row and "spot_migration" in row and "1.4.2" in row and "sidecar/cost-pod" in row
    # Reachable for longer than the last report is old: two different ages.
    columns = row.split()
    assert columns[-4] != columns[-3]

    by_category = controlplane.kubectl("get", "optiinfra", "-n", namespace).stdout
    assert "cost-agent-sample" in by_category
