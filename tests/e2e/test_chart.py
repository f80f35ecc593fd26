"""The chart, the generated manifests and the image recipe, checked without running pods.

CI's chart checks: `helm lint --strict`, and `helm template` of each `ci/*-values.yaml` piped
to `kubectl apply --dry-run=server` against the local control plane. Then what the rendered
objects must say (least-privilege RBAC, secure pods, settings the processes understand), the
schema's refusals, and drift of everything generated from one source.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_registry.controller.settings import OperatorSettings
from agent_registry.localcluster.build import Binaries
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_sidecar.config import SidecarSettings, env_name

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHART = REPO / "helm" / "agent-registry"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
EXTRA_CRDS = HERE / "data" / "crds"
CRD_SOURCE = REPO / "crds" / "agents.registry.optiinfra.io.yaml"


def helm(binaries: Binaries, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(binaries.helm), *args], capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def render(binaries: Binaries, *args: str, namespace: str = "registry") -> list[dict[str, Any]]:
    out = helm(binaries, "template", "reg", str(CHART), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }


# -- helm lint and server-side dry runs ------------------------------------------------------


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_helm_lint_strict(binaries: Binaries, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", "registry"]
    if values:
        args += ["-f", str(values)]
    assert "0 chart(s) failed" in helm(binaries, *args).stdout


@pytest.fixture(scope="module")
def dry_run_ready(controlplane: LocalControlPlane) -> LocalControlPlane:
    """The namespaces the ci values name, and a ServiceMonitor CRD, on the shared control plane."""
    controlplane.apply_crds(EXTRA_CRDS)
    for values in CI_VALUES:
        config = yaml.safe_load(values.read_text()) or {}
        names = set(config.get("watchNamespaces", [])) | {
            b["namespace"] for b in config.get("sidecar", {}).get("rbac", {}).get("bindings", [])
        }
        for name in names:
            if controlplane.kubectl("get", "namespace", name, check=False).returncode != 0:
                controlplane.create_namespace(name)
    return controlplane


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_ci_values_pass_server_side_dry_run(
    binaries: Binaries, dry_run_ready: LocalControlPlane, namespace: str, values: Path
) -> None:
    manifest = helm(
        binaries, "template", f"ci-{values.stem}", str(CHART), "--namespace", namespace, "-f", str(values)
    ).stdout
    applied = dry_run_ready.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert applied.returncode == 0, f"{values.name} rejected by the API server:\n{applied.stderr}"
    kinds = {line.split("/")[0] for line in applied.stdout.split() if "/" in line}
    assert "deployment.apps" in kinds


# -- the schema refuses bad values at install time -------------------------------------------

BAD_VALUES = [
    (["--set", "operator.replicas=-1"], "/operator/replicas"),
    (["--set", "facade.port=70000"], "/facade/port"),
    (["--set", "facade.metricsPort=70000"], "/facade/metricsPort"),
    (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    (["--set", "watchNamespaces={Team_A}"], "/watchNamespaces/0"),
    (["--set", "operator.selfPreservation.share=1.5"], "/operator/selfPreservation/share"),
    (["--set", "operator.sweepIntervalSeconds=0"], "/operator/sweepIntervalSeconds"),
    (["--set", "operator.logLevel=verbose"], "/operator/logLevel"),
    (["--set", "podSecurityContext.runAsNonRoot=false"], "/podSecurityContext/runAsNonRoot"),
    (["--set", "containerSecurityContext.privileged=true"], "/containerSecurityContext/privileged"),
    (["--set", "redis.external.url=http://redis:6379"], "/redis/external/url"),
    (["--set", "facade.service.type=ExternalName"], "/facade/service/type"),
    (["--set", "image.digest=latest"], "/image/digest"),
    (["--set", "operator.bogus=1"], "bogus"),
    (["--set", "ownerRestriction.validationActions={Block}"], "/ownerRestriction/validationActions/0"),
    (["--set", "ownerRestriction.validationActions={Deny,Warn}"], "/ownerRestriction/validationActions"),
    # Rules across fields, checked by the templates.
    (["--set", "operator.leaderElection.enabled=false"], "needs operator.leaderElection.enabled"),
    (["--set", "operator.leaderElection.renewSeconds=20"], "leaseDurationSeconds must exceed renewSeconds"),
    (["--set", "redis.bundled.enabled=false"], "redis.external.url or redis.external.existingSecret is required"),
    (["--set", "operator.shutdownTimeoutSeconds=30"], "must be below operator.terminationGracePeriodSeconds"),
    (["--set", "facade.shutdownTimeoutSeconds=30"], "must be below facade.terminationGracePeriodSeconds"),
    (["--set", "facade.heartbeat.unreachableAfterSeconds=30"], "must exceed facade.heartbeat.intervalSeconds"),
    (["--set", "facade.metricsPort=8080"], "facade.metricsPort must differ from facade.port"),
    (["--set", "watchNamespaces={a,b}", "--set", "facade.defaultNamespace=c"], "must be one of watchNamespaces"),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES, ids=[" ".join(a[1::2]) for a, _ in BAD_VALUES])
def test_bad_values_are_refused(binaries: Binaries, args: list[str], message: str) -> None:
    result = helm(binaries, "template", "reg", str(CHART), *args, check=False)
    assert result.returncode != 0, f"{args} was accepted"
    assert message in result.stderr, result.stderr


# -- what the default install says -----------------------------------------------------------


@pytest.fixture(scope="module")
def defaults(binaries: Binaries) -> list[dict[str, Any]]:
    return render(binaries)


def test_operator_runs_two_replicas_with_leader_election(defaults: list[dict[str, Any]]) -> None:
    deployment = one(defaults, "Deployment", "reg-agent-registry-operator")
    assert deployment["spec"]["replicas"] == 2
    operator = container(deployment, "operator")
    assert operator["command"] == ["agent-registry-operator"]
    env = env_of(operator)
    assert env["AGENT_REGISTRY_LEADER_ELECTION"] == "true"
    assert env["AGENT_REGISTRY_LEASE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["AGENT_REGISTRY_IDENTITY"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["AGENT_REGISTRY_REDIS_URL"] == "redis://reg-agent-registry-redis.registry.svc:6379/0"
    # The liveness probe asks kopf's own endpoint, on the port the operator is told to serve it.
    probe = operator["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    port = next(p["containerPort"] for p in operator["ports"] if p["name"] == probe["port"])
    assert env["AGENT_REGISTRY_LIVENESS_ENDPOINT"] == f"http://0.0.0.0:{port}/healthz"
    affinity = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert affinity["preferredDuringSchedulingIgnoredDuringExecution"]


def test_operator_env_names_are_settings_it_reads(defaults: list[dict[str, Any]]) -> None:
    known = {f"AGENT_REGISTRY_{field.upper()}" for field in OperatorSettings.model_fields} | {
        "AGENT_REGISTRY_LIVENESS_ENDPOINT"  # read by the entry point, for kopf
    }
    operator = container(one(defaults, "Deployment", "reg-agent-registry-operator"), "operator")
    assert set(env_of(operator)) <= known, set(env_of(operator)) - known
    # ... and every setting is a value of the chart, so a new one cannot be forgotten.
    assert set(env_of(operator)) == known, known - set(env_of(operator))


def test_facade_has_probes_service_and_disruption_budget(defaults: list[dict[str, Any]]) -> None:
    deployment = one(defaults, "Deployment", "reg-agent-registry-facade")
    facade = container(deployment, "facade")
    assert facade["command"] == ["agent-registry-facade"]
    assert facade["livenessProbe"]["httpGet"]["path"] == "/health"
    assert facade["readinessProbe"]["httpGet"]["path"] == "/ready"
    service = one(defaults, "Service", "reg-agent-registry-facade")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = one(defaults, "PodDisruptionBudget", "reg-agent-registry-facade")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def ports_of(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


def test_facade_metrics_have_a_port_and_service_the_api_service_never_exposes(binaries: Binaries) -> None:
    values = CHART / "ci" / "monitoring-values.yaml"  # the API behind a LoadBalancer, ServiceMonitors on
    objects = render(binaries, "-f", str(values))
    facade = container(one(objects, "Deployment", "reg-agent-registry-facade"), "facade")
    assert ports_of(facade) == {"http": 8080, "metrics": 9091}
    assert env_of(facade)["AGENT_REGISTRY_FACADE_METRICS_PORT"] == "9091"
    api = one(objects, "Service", "reg-agent-registry-facade")
    assert api["spec"]["type"] == "LoadBalancer"
    assert [p["targetPort"] for p in api["spec"]["ports"]] == ["http"]
    metrics = one(objects, "Service", "reg-agent-registry-facade-metrics")
    assert metrics["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["targetPort"]) for p in metrics["spec"]["ports"]] == [("metrics", "metrics")]
    monitor = one(objects, "ServiceMonitor", "reg-agent-registry-facade")
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("metrics", "/metrics")]
    assert "authorization" not in monitor["spec"]["endpoints"][0]


def test_facade_metrics_on_the_api_port_are_scraped_with_credentials(binaries: Binaries) -> None:
    authorization = {"type": "Bearer", "credentials": {"name": "prometheus-token", "key": "token"}}
    args = ["--set", "facade.metricsPort=0", "--set", "metrics.serviceMonitor.enabled=true"]
    args += ["--set-json", f"metrics.serviceMonitor.facadeAuthorization={json.dumps(authorization)}"]
    objects = render(binaries, *args)
    facade = container(one(objects, "Deployment", "reg-agent-registry-facade"), "facade")
    assert ports_of(facade) == {"http": 8080}
    assert env_of(facade)["AGENT_REGISTRY_FACADE_METRICS_PORT"] == "0"
    assert not find(objects, "Service", "reg-agent-registry-facade-metrics")
    monitor = one(objects, "ServiceMonitor", "reg-agent-registry-facade")
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["authorization"] == authorization
    # The operator's endpoint is unchanged: its own metrics port, no credentials.
    operator = one(objects, "ServiceMonitor", "reg-agent-registry-operator")["spec"]["endpoints"][0]
    assert operator["port"] == "metrics" and "authorization" not in operator


def test_facade_env_names_are_settings_it_reads(defaults: list[dict[str, Any]]) -> None:
    settings = pytest.importorskip("agent_registry.facade.settings", reason="the facade is not written yet")
    model = settings.FacadeSettings
    known = set()
    for field, info in model.model_fields.items():
        known.add(f"{settings.ENV_PREFIX}{field}".upper())
        choices = getattr(info.validation_alias, "choices", [info.validation_alias])
        known |= {str(choice).upper() for choice in choices if choice}
    facade = container(one(defaults, "Deployment", "reg-agent-registry-facade"), "facade")
    assert set(env_of(facade)) <= known, set(env_of(facade)) - known
    # Every setting is a value of the chart, except the kubeconfig: in a pod it is the service account.
    unset = {
        name
        for name, info in model.model_fields.items()
        if name != "kubeconfig"
        and not {f"{settings.ENV_PREFIX}{name}".upper(), *map(str, getattr(info.validation_alias, "choices", []))}
        & set(env_of(facade))
    }
    assert not unset, unset
    env = env_of(facade)
    assert (
        env["AGENT_REGISTRY_REDIS_KEY_PREFIX"]
        == env_of(container(one(defaults, "Deployment", "reg-agent-registry-operator"), "operator"))[
            "AGENT_REGISTRY_REDIS_KEY_PREFIX"
        ]
    )


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_every_pod_is_locked_down(binaries: Binaries, values: Path | None) -> None:
    objects = render(binaries, *(["-f", str(values)] if values else []))
    deployments = find(objects, "Deployment")
    assert deployments
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        where = deployment["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in spec["containers"]:
            context = c["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], where
            assert c.get("livenessProbe") and c.get("readinessProbe"), where


# -- least-privilege RBAC ----------------------------------------------------------------------

AGENTS = "registry.optiinfra.io"
OPERATOR_AGENT_RULES = {
    (AGENTS, "agents", "get"), (AGENTS, "agents", "list"), (AGENTS, "agents", "watch"),
    (AGENTS, "agents", "patch"), (AGENTS, "agents", "delete"), (AGENTS, "agents", "override"),
    (AGENTS, "agents/status", "patch"),
    ("coordination.k8s.io", "leases", "list"), ("coordination.k8s.io", "leases", "watch"),
    ("coordination.k8s.io", "leases", "delete"),
    ("", "events", "create"),
}  # fmt: skip
KOPF_CLUSTER_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "get"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
}
LEADER_RULES = {
    ("coordination.k8s.io", "leases", "get"), ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"), ("", "events", "create"),
}  # fmt: skip
FACADE_AGENT_RULES = {(AGENTS, "agents", v) for v in ("get", "list", "create", "patch", "delete", "override")} | {
    (AGENTS, "agents/status", "patch"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "patch"),
    ("", "events", "list"),  # GET /agents/{id}/events
}
FACADE_AUTH_RULES = {
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
}


def test_clusterwide_rbac_is_exactly_what_each_component_needs(defaults: list[dict[str, Any]]) -> None:
    assert (
        rules(one(defaults, "ClusterRole", "reg-agent-registry-operator")) == OPERATOR_AGENT_RULES | KOPF_CLUSTER_RULES
    )
    leader = one(defaults, "Role", "reg-agent-registry-operator-leader-election")
    assert leader["metadata"]["namespace"] == "registry"
    assert rules(leader) == LEADER_RULES
    assert rules(one(defaults, "ClusterRole", "reg-agent-registry-facade")) == FACADE_AGENT_RULES
    assert rules(one(defaults, "ClusterRole", "reg-agent-registry-facade-auth")) == FACADE_AUTH_RULES
    # The owner rule's exemption, for Kubernetes' garbage collector (ownerRestriction.overrideSubjects).
    assert rules(one(defaults, "ClusterRole", "reg-agent-registry-override")) == {(AGENTS, "agents", "override")}
    override = one(defaults, "ClusterRoleBinding", "reg-agent-registry-override")
    assert {s["name"] for s in override["subjects"]} == {"system:kube-controller-manager", "generic-garbage-collector"}
    # For people, bound by the cluster's admins: every verb on agents, none elsewhere.
    admin = rules(one(defaults, "ClusterRole", "reg-agent-registry-admin"))
    assert {(g, r) for g, r, _ in admin} == {(AGENTS, "agents"), (AGENTS, "agents/status")}
    assert (AGENTS, "agents", "override") in admin
    for binding in find(defaults, "ClusterRoleBinding") + find(defaults, "RoleBinding"):
        if binding is not override:
            assert binding["subjects"][0]["kind"] == "ServiceAccount"
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]


def test_namespaced_rbac_uses_roles_in_the_listed_namespaces(binaries: Binaries) -> None:
    objects = render(binaries, "--set", "watchNamespaces={team-a,team-b}", "--set", "facade.defaultNamespace=team-a")
    operator_roles = find(objects, "Role", "reg-agent-registry-operator")
    assert {r["metadata"]["namespace"] for r in operator_roles} == {"team-a", "team-b"}
    assert all(rules(r) == OPERATOR_AGENT_RULES for r in operator_roles)
    facade_roles = find(objects, "Role", "reg-agent-registry-facade")
    assert {r["metadata"]["namespace"] for r in facade_roles} == {"team-a", "team-b"}
    cluster_roles = {r["metadata"]["name"]: rules(r) for r in find(objects, "ClusterRole")}
    # Only kopf's reads of CRDs and namespaces and the cluster-scoped review APIs stay cluster-wide.
    # (and the admin and override ClusterRoles, which are bound per namespace or not at all).
    assert cluster_roles.keys() - {"reg-agent-registry-admin", "reg-agent-registry-override"} == {
        "reg-agent-registry-operator-framework",
        "reg-agent-registry-facade-auth",
    }
    assert cluster_roles["reg-agent-registry-operator-framework"] == KOPF_CLUSTER_RULES
    assert cluster_roles["reg-agent-registry-facade-auth"] == FACADE_AUTH_RULES
    assert not find(objects, "ClusterRoleBinding", "reg-agent-registry-override")
    assert {b["metadata"]["namespace"] for b in find(objects, "RoleBinding", "reg-agent-registry-override")} == {
        "team-a",
        "team-b",
    }
    operator = container(one(objects, "Deployment", "reg-agent-registry-operator"), "operator")
    assert env_of(operator)["AGENT_REGISTRY_NAMESPACES"] == "team-a,team-b"


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_no_wildcards_in_any_rule(binaries: Binaries, values: Path | None) -> None:
    objects = render(binaries, *(["-f", str(values)] if values else []))
    for role in find(objects, "ClusterRole") + find(objects, "Role"):
        for group, resource, verb in rules(role):
            assert "*" not in (group, resource, verb), role["metadata"]["name"]


def test_rbac_rules_are_grouped_by_who_needs_them(binaries: Binaries) -> None:
    text = helm(binaries, "template", "reg", str(CHART), "--show-only", "templates/operator-rbac.yaml").stdout
    assert "# Framework:" in text
    assert "# Application:" in text


def test_sidecar_rbac_matches_the_plain_manifest(binaries: Binaries) -> None:
    objects = render(
        binaries,
        "--set",
        "sidecar.rbac.bindings[0].namespace=agents",
        "--set",
        "sidecar.rbac.bindings[0].serviceAccounts={cost-agent}",
    )
    chart_role = one(objects, "Role", "reg-agent-registry-agent-sidecar")
    manifest_role = yaml.safe_load((REPO / "manifests" / "rbac" / "sidecar-role.yaml").read_text())
    assert rules(chart_role) == rules(manifest_role)
    binding = one(objects, "RoleBinding", "reg-agent-registry-agent-sidecar")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cost-agent", "namespace": "agents"}]


# -- CRD switches, and every generated file in step with its source ---------------------------


def test_crd_is_kept_on_uninstall_and_can_be_left_out(binaries: Binaries, defaults: list[dict[str, Any]]) -> None:
    crd = one(defaults, "CustomResourceDefinition", "agents.registry.optiinfra.io")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["spec"] == yaml.safe_load(CRD_SOURCE.read_text())["spec"]
    not_kept = one(
        render(binaries, "--set", "crds.keep=false"), "CustomResourceDefinition", "agents.registry.optiinfra.io"
    )
    assert "annotations" not in not_kept["metadata"]
    assert not find(render(binaries, "--set", "crds.enabled=false"), "CustomResourceDefinition")


def test_chart_crd_template_matches_crds_dir() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "sync-chart-crd.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_manifests_match_the_chart(binaries: Binaries) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "render-manifests.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_plain_manifests_pass_server_side_dry_run(dry_run_ready: LocalControlPlane) -> None:
    manifest = (REPO / "manifests" / "install" / "agent-registry.yaml").read_text()
    # The Namespace is created for real first: a dry run cannot put objects into a dry-run namespace.
    if dry_run_ready.kubectl("get", "namespace", "agent-registry", check=False).returncode != 0:
        dry_run_ready.create_namespace("agent-registry")
    applied = dry_run_ready.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert applied.returncode == 0, applied.stderr


# -- values.yaml: documented, and exactly what the schema allows -------------------------------


def _leaf_paths_without_comment(text: str) -> list[str]:
    """Keys in values.yaml with neither a comment right above them nor a commented ancestor."""
    missing = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    previous = ""
    for line in text.splitlines():
        stripped = line.strip()
        match = re.match(r"^(\s*)([A-Za-z0-9_]+):(.*)$", line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = previous.startswith("#") or any(d for _, _, d in stack)
            leaf = match.group(3).strip() not in ("",)
            if leaf and not documented:
                missing.append(".".join([k for _, k, _ in stack] + [match.group(2)]))
            stack.append((indent, match.group(2), documented))
        if stripped:
            previous = stripped
    return missing


def test_every_value_is_documented() -> None:
    assert _leaf_paths_without_comment((CHART / "values.yaml").read_text()) == []


def _schema_keys(schema: dict[str, Any], root: dict[str, Any], prefix: str = "") -> set[str]:
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    keys: set[str] = set()
    if schema.get("type") == "object" and schema.get("additionalProperties") is False:
        for name, sub in schema["properties"].items():
            keys.add(prefix + name)
            keys |= _schema_keys(sub, root, f"{prefix}{name}.")
    return keys


def _value_keys(values: dict[str, Any], schema_keys: set[str], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in values.items():
        path = prefix + name
        keys.add(path)
        if isinstance(value, dict) and any(k.startswith(path + ".") for k in schema_keys):
            keys |= _value_keys(value, schema_keys, path + ".")
    return keys


def test_values_and_schema_name_the_same_settings() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    schema_keys = _schema_keys(schema, schema) - {"global"}
    value_keys = _value_keys(yaml.safe_load((CHART / "values.yaml").read_text()), schema_keys)
    assert schema_keys == value_keys, {
        "only in schema": schema_keys - value_keys,
        "only in values": value_keys - schema_keys,
    }


# -- the example agent with the sidecar --------------------------------------------------------


def test_sample_sidecar_uses_the_chart_image_and_known_variables() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    objects = list(yaml.safe_load_all((REPO / "manifests" / "samples" / "cost-agent-with-sidecar.yaml").read_text()))
    deployment = one(objects, "Deployment", "cost-agent")
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        assert c["image"].endswith(f":{chart['appVersion']}"), c["image"]
    sidecar = container(deployment, "agent-sidecar")
    assert sidecar["command"] == ["agent-sidecar"]
    known = {env_name(field) for field in SidecarSettings.model_fields}
    assert set(env_of(sidecar)) <= known, set(env_of(sidecar)) - known
    assert (
        deployment["spec"]["template"]["spec"]["serviceAccountName"]
        == one(objects, "RoleBinding", "cost-agent-sidecar")["subjects"][0]["name"]
    )


# -- the image recipe --------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


KNOWN_INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "EXPOSE", "CMD", "ENTRYPOINT", "LABEL"}


def test_dockerfile_is_multistage_slim_and_non_root() -> None:
    instructions = _dockerfile_instructions()
    assert {k for k, _ in instructions} <= KNOWN_INSTRUCTIONS
    args = dict(rest.split("=", 1) for k, rest in instructions if k == "ARG" and "=" in rest)
    stages = [rest for k, rest in instructions if k == "FROM"]
    assert len(stages) >= 2, "multi-stage: build, then a clean runtime"
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    # The final stage runs as a numeric non-root user and copies only the virtualenv.
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    user = [rest for k, rest in final if k == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0"
    assert all("--from=build" in rest for k, rest in final if k == "COPY")
    for keyword, rest in instructions:
        if keyword == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def _commands_used(binaries: Binaries) -> set[str]:
    """The first word of every command that runs the registry's image: chart, samples, Dockerfile."""
    objects = render(binaries, "--set", "image.repository=registry-image")
    for path in (REPO / "manifests" / "samples").glob("*.yaml"):
        objects += [o for o in yaml.safe_load_all(path.read_text()) if o]
    used = set()
    for deployment in find(objects, "Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            if "agent-registry" in c["image"] or c["image"].startswith("registry-image"):
                used.add(c["command"][0])
    cmd = [rest for k, rest in _dockerfile_instructions() if k == "CMD"]
    used |= set(re.findall(r'\["([a-z-]+)"', cmd[-1]))
    return used - {"python"}


def test_every_command_is_a_console_script_of_the_package(binaries: Binaries) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    used = _commands_used(binaries)
    assert {"agent-registry-operator", "agent-registry-facade", "agent-sidecar"} <= used
    missing = used - set(scripts)
    assert not missing, f"add to [project.scripts] in pyproject.toml: {sorted(missing)}"
    for name in sorted(used):
        module, _, function = scripts[name].partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name
