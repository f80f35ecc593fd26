"""The delivery scenarios, written once against "a cluster" (``E2E_CLUSTER``: local or kind).

In order, on one fresh cluster: install the chart; an agent registers through the sidecar
and ``kubectl get agents`` shows it Healthy; an agent that stops goes Unreachable, then is
deleted; registration and discovery through the REST API; ``helm upgrade`` without marking
anyone Unreachable; ``helm uninstall`` keeps the CRD and the Agents. Each test needs the
ones before it; after a failure the rest are skipped with the reason.

On the local cluster the chart's Deployments run as local processes (``local_kubelet``):
with the chart's commands, environment, ServiceAccount tokens and probes, so the RBAC
the chart grants is the RBAC they run with.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e_cluster import Cluster

from agent_registry.localcluster.process import WaitTimeoutError, wait_for
from agent_registry.schema import constants as c

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "agent-registry"
E2E_VALUES = Path(__file__).resolve().parent / "data" / "values-e2e.yaml"
SAMPLE = REPO / "manifests" / "samples" / "cost-agent-with-sidecar.yaml"
SIDECAR_ROLE = REPO / "manifests" / "rbac" / "sidecar-role.yaml"

RELEASE = "registry"
NAMESPACE = "agent-registry"
AGENTS_NS = "e2e-agents"
OPERATOR = f"{RELEASE}-agent-registry-operator"
FACADE = f"{RELEASE}-agent-registry-facade"
REDIS = f"{RELEASE}-agent-registry-redis"
SAMPLE_DEPLOYMENT = "cost-agent"
GC_DEPLOYMENT = "gc-agent"

# The first scenario on kind sets up the cluster; with a cold cache that builds the node's
# Go binaries and images first (about 15 minutes on two cores), beyond the default timeout.
pytestmark = [pytest.mark.kind, pytest.mark.timeout(2400)]


class Scenario:
    """What the earlier steps left for the later ones, and which steps passed."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.passed: set[str] = set()
        self.agent_pods: list[str] = []

    def require(self, *steps: str) -> None:
        missing = [step for step in steps if step not in self.passed]
        if missing:
            pytest.skip(f"needs the earlier step(s) {', '.join(missing)}, which did not pass")

    def agents(self, namespace: str = AGENTS_NS) -> dict[str, dict[str, Any]]:
        items = self.cluster.get_json("agents", "-n", namespace)["items"]
        return {item["metadata"]["name"]: item for item in items}

    def phase(self, name: str, namespace: str = AGENTS_NS) -> str | None:
        agent = self.agents(namespace).get(name)
        return (agent or {}).get("status", {}).get("phase")

    def event_reasons(self, name: str, namespace: str = AGENTS_NS) -> list[str]:
        events = self.cluster.get_json("events", "-n", namespace)["items"]
        return [e["reason"] for e in events if e["involvedObject"]["name"] == name]

    def lease_holder(self) -> str | None:
        lease = self.cluster.get_json("lease", OPERATOR, "-n", NAMESPACE)
        return lease.get("spec", {}).get("holderIdentity")

    def assert_clean_logs(self, deployment: str) -> None:
        """No restarts, and nothing refused: the RBAC the chart grants is enough."""
        logs = self.cluster.logs(NAMESPACE, deployment)
        assert self.cluster.restarts(NAMESPACE, deployment) == 0, logs[-4000:]
        for word in ("Forbidden", " 403", "Traceback"):
            assert word not in logs, f"{word!r} in the logs of {deployment}:\n{logs[-4000:]}"


def logs_for_report(cluster: Cluster) -> str:
    """The last lines of every registry and agent container, for a failed test's report."""
    parts = []
    for namespace, deployment in ((NAMESPACE, OPERATOR), (NAMESPACE, FACADE), (AGENTS_NS, SAMPLE_DEPLOYMENT)):
        try:
            parts.append(f"===== {namespace}/{deployment}\n{cluster.logs(namespace, deployment)[-6000:]}")
        except Exception as error:
            parts.append(f"===== {namespace}/{deployment}: no logs ({error})")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def scenario(e2e_cluster: Cluster) -> Iterator[Scenario]:
    e2e_cluster.kubectl("create", "namespace", AGENTS_NS)
    yield Scenario(e2e_cluster)
    # A kind cluster is deleted and a local one stopped afterwards; this only spares the
    # next test module's time on a cluster kept with E2E_KEEP_CLUSTER.
    e2e_cluster.kubectl("delete", "namespace", AGENTS_NS, "--wait=false", check=False)


def sample_for(cluster: Cluster) -> str:
    """manifests/samples' agent with the sidecar: two replicas, the cluster's image, test-speed timings."""
    objects = [o for o in yaml.safe_load_all(SAMPLE.read_text()) if o]
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        obj["spec"]["replicas"] = 2
        pod = obj["spec"]["template"]["spec"]
        pod["terminationGracePeriodSeconds"] = 5
        # Lets a test freeze the sidecar from the agent container (Cluster.freeze on kind).
        pod["shareProcessNamespace"] = True
        for container in pod["containers"]:
            container["image"] = cluster.sidecar_image() if container["name"] == "agent-sidecar" else cluster.image()
            container["imagePullPolicy"] = "Never" if cluster.name == "kind" else "IfNotPresent"
            if container["name"] == "agent-sidecar":
                fast = {
                    "AGENT_HEARTBEAT_INTERVAL_SECONDS": "1",
                    "AGENT_UNREACHABLE_AFTER_SECONDS": "3",
                    "AGENT_GC_AFTER_SECONDS": "3",
                    "AGENT_SHUTDOWN_TIMEOUT_SECONDS": "3",
                }
                container["env"] = [e for e in container["env"] if e["name"] not in fast]
                container["env"] += [{"name": k, "value": v} for k, v in fast.items()]
    return yaml.safe_dump_all(objects)


def test_install(scenario: Scenario) -> None:
    cluster = scenario.cluster
    installed = cluster.helm(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
        "-f", str(E2E_VALUES), *cluster.image_values(),
    )  # fmt: skip
    assert "kubectl get agents" in installed.stdout  # NOTES.txt
    crd = cluster.get_json("crd", c.CRD_NAME)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for deployment in (REDIS, OPERATOR, FACADE):
        cluster.wait_rollout(NAMESPACE, deployment)
    operators = cluster.pod_names(NAMESPACE, OPERATOR)
    assert len(operators) == 2
    # Leader election is on, with the pod's name as identity: one of them holds the Lease.
    wait_for("an operator pod to hold the Lease", lambda: scenario.lease_holder() in operators)
    scenario.passed.add("install")


def test_agent_registers_through_the_sidecar_and_shows_healthy(scenario: Scenario) -> None:
    scenario.require("install")
    cluster = scenario.cluster
    cluster.kubectl("apply", "-n", AGENTS_NS, "-f", str(SIDECAR_ROLE))
    cluster.kubectl("apply", "-n", AGENTS_NS, "-f", "-", input=sample_for(cluster))
    cluster.wait_rollout(AGENTS_NS, SAMPLE_DEPLOYMENT)
    pods = scenario.agent_pods = sorted(cluster.pod_names(AGENTS_NS, SAMPLE_DEPLOYMENT))
    assert len(pods) == 2
    # Each pod's sidecar registers an Agent named after the pod, and the operator takes it to Healthy.
    wait_for("both Agents Healthy", lambda: all(scenario.phase(pod) == "Healthy" for pod in pods))
    table = cluster.kubectl("get", "agents", "-n", AGENTS_NS).stdout
    for pod in pods:
        line = next(line for line in table.splitlines() if line.startswith(pod))
        assert " cost " in line and " Healthy " in line, table
    agent = scenario.agents()[pods[0]]
    assert agent["spec"]["capabilities"] == ["spot_migration", "rightsizing"]
    assert "Registered" in scenario.event_reasons(pods[0])
    scenario.passed.add("sidecar")


def test_sidecar_agents_are_findable_by_their_id(scenario: Scenario) -> None:
    """The id label (what lookups by id select on) is the id in the status, for every agent.

    A sidecar heartbeats right after creating its Agent, so the operator sees several
    events before its first patch lands; each must settle on one id.
    """
    scenario.require("sidecar")
    for name, agent in scenario.agents().items():
        assert agent["metadata"]["labels"][c.AGENT_ID_LABEL] == agent["status"]["agentId"], name


def test_an_agent_that_stops_goes_unreachable_then_is_deleted(scenario: Scenario) -> None:
    scenario.require("sidecar")
    victim, survivor = scenario.agent_pods
    # The sidecar stops dead, without deregistering: a hung process or a partitioned node.
    scenario.cluster.freeze(AGENTS_NS, SAMPLE_DEPLOYMENT, victim, "agent-sidecar")
    wait_for("Unreachable", lambda: scenario.phase(victim) == "Unreachable", timeout=20)
    wait_for("the Agent deleted", lambda: victim not in scenario.agents(), timeout=30)
    # Every phase change is visible: the Events outlive the Agent.
    wait_for(
        "the Unreachable and Removed Events", lambda: {"Unreachable", "Removed"} <= set(scenario.event_reasons(victim))
    )
    assert scenario.phase(survivor) == "Healthy"
    scenario.passed.add("unreachable")


@pytest.fixture
def rest_client(scenario: Scenario) -> Iterator[tuple[str, dict[str, str]]]:
    """The facade's URL and the headers of a ServiceAccount that RBAC lets use agents."""
    if scenario.cluster.name == "local" and importlib.util.find_spec("agent_registry.facade.__main__") is None:
        pytest.skip("the facade (agent_registry.facade) is not runnable yet")
    cluster = scenario.cluster
    client_rbac = f"""
apiVersion: v1
kind: ServiceAccount
metadata: {{name: e2e-client, namespace: {NAMESPACE}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: e2e-client, namespace: {NAMESPACE}}}
rules:
  - apiGroups: ["{c.GROUP}"]
    resources: ["agents", "agents/status"]
    verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: e2e-client, namespace: {NAMESPACE}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: e2e-client}}
subjects: [{{kind: ServiceAccount, name: e2e-client, namespace: {NAMESPACE}}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: e2e-nobody, namespace: {NAMESPACE}}}
"""
    cluster.kubectl("apply", "-f", "-", input=client_rbac)
    token = cluster.kubectl("create", "token", "e2e-client", "-n", NAMESPACE).stdout.strip()
    with cluster.service_url(NAMESPACE, FACADE, 80) as url:
        yield url, {"Authorization": f"Bearer {token}"}


def test_registration_and_discovery_through_the_rest_api(
    scenario: Scenario, rest_client: tuple[str, dict[str, str]]
) -> None:
    scenario.require("install")
    url, auth = rest_client
    cluster = scenario.cluster
    nobody = cluster.kubectl("create", "token", "e2e-nobody", "-n", NAMESPACE).stdout.strip()
    registration = {
        "name": "rest-cost-agent",
        "type": "cost",
        "host": "10.1.2.3",
        "port": 8001,
        "capabilities": ["spot_migration", "rightsizing"],
        "version": "2.0.0",
        "metadata": {"region": "eu-west-1"},
    }
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as http:
        assert http.get("/health").status_code == 200
        assert http.post("/agents/register", json=registration).status_code == 401
        refused = http.post("/agents/register", json=registration, headers={"Authorization": f"Bearer {nobody}"})
        assert refused.status_code == 403 and "error" in refused.json()

        registered = http.post("/agents/register", json=registration, headers=auth)
        assert registered.status_code == 201, registered.text
        agent_id = registered.json()["agent_id"]
        assert registered.json()["heartbeat_url"] == f"/agents/{agent_id}/heartbeat"
        beat = http.post(f"/agents/{agent_id}/heartbeat", json={"status": "healthy"}, headers=auth)
        assert beat.status_code == 200 and beat.json()["received"] is True

        found = http.get(f"/agents/{agent_id}", headers=auth)
        assert found.status_code == 200, found.text
        assert found.json()["name"] == "rest-cost-agent" and found.json()["status"] == "healthy"
        by_type = wait_for(
            "the agent listed by type",
            lambda: [a for a in http.get("/agents/type/cost", headers=auth).json()["agents"] if a["id"] == agent_id],
        )
        assert by_type[0]["capabilities"] == ["spot_migration", "rightsizing"]
        # It is an Agent object like any other: kubectl sees it.
        assert "rest-cost-agent" in cluster.kubectl("get", "agents", "-n", NAMESPACE).stdout

        gone = http.post(f"/agents/{agent_id}/unregister", headers=auth)
        assert gone.status_code == 200 and gone.json() == {"message": "Agent unregistered successfully"}
        missing = http.get(f"/agents/{agent_id}", headers=auth)
        assert missing.status_code == 404 and missing.json() == {"error": "Agent not found"}
    scenario.assert_clean_logs(FACADE)
    scenario.passed.add("rest")


def real_pods(scenario: Scenario) -> Cluster:
    """The cluster, when its pods are real (kind); else a skip that says so."""
    if scenario.cluster.name != "kind":
        pytest.skip("needs real pods, a kubelet and the garbage collector: runs on kind (make e2e-kind)")
    return scenario.cluster


# Run inside a registry container: who it runs as, and whether its root filesystem takes a write.
_WHO_AND_WHERE = """
import json, os
try:
    open("/written-by-the-e2e-test", "w").close()
    writable = True
except OSError:
    writable = False
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "root_writable": writable}))
"""


def test_registry_containers_run_as_non_root_on_a_read_only_root_and_pass_their_probes(scenario: Scenario) -> None:
    scenario.require("install")
    cluster = real_pods(scenario)
    for deployment in (OPERATOR, FACADE):
        for pod in cluster.pod_names(NAMESPACE, deployment):
            status = cluster.get_json("pod", pod, "-n", NAMESPACE)["status"]
            # Ready: the readiness probe answers on the port the chart names. No restart: the
            # liveness probe has passed for as long as the pod has run.
            for container in status["containerStatuses"]:
                assert container["ready"] and container["restartCount"] == 0, (pod, container)
            answer = cluster.kubectl("exec", "-n", NAMESPACE, pod, "--", "python", "-c", _WHO_AND_WHERE).stdout
            assert json.loads(answer) == {"uid": 65532, "gid": 65532, "root_writable": False}, (pod, answer)


def _gc_agent(cluster: Cluster) -> str:
    """The sample agent, one replica named gc-agent, that its registry would not call
    Unreachable for ten minutes: only its pod's deletion can remove its Agent quickly."""
    objects = [o for o in yaml.safe_load_all(sample_for(cluster)) if o and o["kind"] == "Deployment"]
    deployment = objects[0]
    deployment["metadata"]["name"] = GC_DEPLOYMENT
    deployment["spec"]["replicas"] = 1
    labels = {"app.kubernetes.io/name": GC_DEPLOYMENT}
    deployment["metadata"]["labels"] = deployment["spec"]["selector"]["matchLabels"] = labels
    deployment["spec"]["template"]["metadata"]["labels"] = labels
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for env in container.get("env", []):
            if env["name"] in ("AGENT_UNREACHABLE_AFTER_SECONDS", "AGENT_GC_AFTER_SECONDS"):
                env["value"] = "600"
    return yaml.safe_dump(deployment)


def test_deleting_an_agents_pod_deletes_its_agent(scenario: Scenario) -> None:
    """The Agent's ownerReference names its pod; with the sidecar frozen (it cannot deregister)
    and the agent not due to go Unreachable for ten minutes, only the garbage collector removes it."""
    scenario.require("sidecar")
    cluster = real_pods(scenario)
    cluster.kubectl("apply", "-n", AGENTS_NS, "-f", "-", input=_gc_agent(cluster))
    cluster.wait_rollout(AGENTS_NS, GC_DEPLOYMENT)
    (pod,) = cluster.pod_names(AGENTS_NS, GC_DEPLOYMENT)
    wait_for(f"{pod} Healthy", lambda: scenario.phase(pod) == "Healthy")
    uid = cluster.get_json("pod", pod, "-n", AGENTS_NS)["metadata"]["uid"]
    owners = scenario.agents()[pod]["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [("Pod", pod, uid)]

    cluster.freeze(AGENTS_NS, GC_DEPLOYMENT, pod, "agent-sidecar")
    cluster.kubectl("delete", "pod", pod, "-n", AGENTS_NS, "--wait=false")
    wait_for("the Agent deleted with its pod", lambda: pod not in scenario.agents(), timeout=90)
    assert "Unreachable" not in scenario.event_reasons(pod)
    # The Deployment's next pod registers an Agent of its own.
    wait_for(
        "the replacement pod's Agent Healthy",
        lambda: any(scenario.phase(p) == "Healthy" for p in cluster.pod_names(AGENTS_NS, GC_DEPLOYMENT) if p != pod),
        timeout=120,
    )
    cluster.kubectl("delete", "deployment", GC_DEPLOYMENT, "-n", AGENTS_NS)


def test_the_standby_operator_takes_over_when_the_leaders_pod_is_deleted(scenario: Scenario) -> None:
    scenario.require("sidecar")
    cluster = real_pods(scenario)
    survivors = scenario.agent_pods[1:]
    operators = set(cluster.pod_names(NAMESPACE, OPERATOR))
    leader = scenario.lease_holder()
    assert leader in operators and len(operators) == 2
    cluster.kubectl("delete", "pod", str(leader), "-n", NAMESPACE, "--wait=false")
    # The leader hands its Lease over as it stops; the standby takes it, then a new pod stands by.
    wait_for("the standby to hold the Lease", lambda: scenario.lease_holder() in operators - {leader}, timeout=60)
    cluster.wait_rollout(NAMESPACE, OPERATOR)
    time.sleep(3)  # a few of the new leader's sweeps
    for name in survivors:
        assert scenario.phase(name) == "Healthy"
        assert "Unreachable" not in scenario.event_reasons(name)


# A client inside the cluster, through the facade's Service, doing what an agent does
# (heartbeats) and what an orchestrator does (lookups), each retried the way the client
# library's heartbeat loop retries (its own backoff), for DURATION seconds.
_RETRYING_CLIENT = """
import json, os, time
import httpx
from agent_sidecar.client import AgentRegistration, Outcome

url, duration = os.environ["FACADE_URL"], float(os.environ["DURATION"])
token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token"
agent = AgentRegistration("rolling-client", "cost", "10.4.4.4", 8001, ["rightsizing"],
                          orchestrator_url=url, token_file=token_file, timeout=5)
done = {"operations": 0, "failed_attempts": 0, "lost": 0}

def retried(attempt):
    for failures in range(1, 11):
        if attempt():
            done["operations"] += 1
            return
        done["failed_attempts"] += 1
        time.sleep(agent._delay(Outcome.FAILED, failures))
    done["lost"] += 1

def lookup():
    try:
        answer = httpx.get(f"{url}/agents/{agent.agent_id}", timeout=5,
                           headers={"Authorization": "Bearer " + open(token_file).read().strip()})
    except httpx.HTTPError:
        return False
    return answer.status_code == 200

retried(agent.register)
print("registered", flush=True)
end = time.monotonic() + duration
while time.monotonic() < end:
    retried(agent.send_heartbeat)
    retried(lookup)
    time.sleep(0.2)
retried(agent.unregister)
print(json.dumps(done), flush=True)
"""


def test_a_rolling_restart_of_the_facade_loses_no_request_of_a_retrying_client(scenario: Scenario) -> None:
    scenario.require("rest")
    cluster = real_pods(scenario)
    client_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "rolling-client", "namespace": NAMESPACE},
        "spec": {
            "serviceAccountName": "e2e-client",
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            "containers": [{
                # The registry's image: the client library needs httpx, which the sidecar's lacks.
                "name": "client", "image": cluster.image(), "imagePullPolicy": "Never",
                "command": ["python", "-c", _RETRYING_CLIENT],
                "env": [{"name": "FACADE_URL", "value": f"http://{FACADE}.{NAMESPACE}.svc"},
                        {"name": "DURATION", "value": "45"}],
            }],
        },
    }  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(client_pod))

    def client_output() -> str:
        logs = cluster.kubectl("logs", "-n", NAMESPACE, "rolling-client", check=False)
        return logs.stdout + logs.stderr

    try:
        wait_for("the client registered", lambda: "registered" in client_output(), timeout=120)
    except WaitTimeoutError:
        pod = cluster.get_json("pod", "rolling-client", "-n", NAMESPACE)
        raise AssertionError(f"the client never registered: {pod['status']}\n{client_output()}") from None
    cluster.kubectl("rollout", "restart", f"deployment/{FACADE}", "-n", NAMESPACE)
    cluster.wait_rollout(NAMESPACE, FACADE)

    def client_done() -> bool:
        phase = cluster.get_json("pod", "rolling-client", "-n", NAMESPACE)["status"]["phase"]
        return phase in ("Succeeded", "Failed")

    wait_for("the client done", client_done, timeout=120)
    output = cluster.kubectl("logs", "-n", NAMESPACE, "rolling-client").stdout
    cluster.kubectl("delete", "pod", "rolling-client", "-n", NAMESPACE, "--wait=false")
    done = json.loads(output.strip().splitlines()[-1])
    print(f"rolling restart of the facade: {done}")
    assert done["lost"] == 0 and done["operations"] >= 20, output


def test_helm_upgrade_rolls_the_registry_without_marking_anyone_unreachable(scenario: Scenario) -> None:
    scenario.require("install", "sidecar")
    cluster = scenario.cluster
    # The agent whose sidecar still runs; the other one's was frozen on purpose.
    survivors = scenario.agent_pods[1:]
    assert all(name in scenario.agents() for name in survivors)
    operators_before = set(cluster.pod_names(NAMESPACE, OPERATOR))
    scenario.assert_clean_logs(OPERATOR)
    upgraded = cluster.helm(
        "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--reuse-values",
        "--set", "facade.replicas=1", "--set", "operator.sweepIntervalSeconds=1",
    )  # fmt: skip
    assert "STATUS: deployed" in upgraded.stdout and "REVISION: 2" in upgraded.stdout
    # One facade replica: the PodDisruptionBudget would block every drain, so it is gone.
    assert cluster.kubectl("get", "pdb", FACADE, "-n", NAMESPACE, check=False).returncode != 0
    deployment = cluster.get_json("deployment", OPERATOR, "-n", NAMESPACE)
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AGENT_REGISTRY_SWEEP_INTERVAL_SECONDS"] == "1"
    for name in (OPERATOR, FACADE):
        cluster.wait_rollout(NAMESPACE, name)
    operators_after = set(cluster.pod_names(NAMESPACE, OPERATOR))
    assert operators_after and not operators_after & operators_before, "the operator pods were replaced"
    wait_for("a new operator pod to hold the Lease", lambda: scenario.lease_holder() in operators_after)
    # Give the new leader a few sweeps: everyone got a fresh grace period, nobody went Unreachable.
    time.sleep(3)
    for name in survivors:
        assert scenario.phase(name) == "Healthy"
        assert "Unreachable" not in scenario.event_reasons(name)
    scenario.passed.add("upgrade")


def test_helm_uninstall_keeps_the_crd_and_the_agents(scenario: Scenario) -> None:
    scenario.require("install")
    cluster = scenario.cluster
    agents_before = set(scenario.agents()) & set(scenario.agent_pods[1:])
    cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE)
    selector = f"app.kubernetes.io/instance={RELEASE}"
    for kind in ("deployments", "services", "serviceaccounts", "roles", "rolebindings"):
        assert cluster.get_json(kind, "-n", NAMESPACE, "-l", selector)["items"] == [], kind
    for kind in ("clusterroles", "clusterrolebindings"):
        assert cluster.get_json(kind, "-l", selector)["items"] == [], kind
    crd = cluster.get_json("crd", c.CRD_NAME)
    assert crd["metadata"]["name"] == c.CRD_NAME
    assert agents_before <= set(scenario.agents()), "uninstalling the registry deleted Agents"
    wait_for(
        "the registry's pods gone",
        lambda: not cluster.pod_names(NAMESPACE, OPERATOR) if cluster.name == "local" else True,
    )


def test_reinstall_namespaced_adopts_the_kept_crd(scenario: Scenario) -> None:
    """A new install after the uninstall takes over the kept CRD, this time with Roles in two
    namespaces instead of ClusterRoles, and the operator works with just those."""
    scenario.require("install")
    cluster = scenario.cluster
    installed = cluster.helm(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(E2E_VALUES), *cluster.image_values(),
        "--set", f"watchNamespaces={{{AGENTS_NS},{NAMESPACE}}}", "--set", "operator.replicas=1",
        "--set", "facade.replicas=1",
    )  # fmt: skip
    assert "STATUS: deployed" in installed.stdout
    # Nothing on Agents is granted cluster-wide: ClusterRoles that name them (the admin and
    # override roles) are bound only by RoleBindings in the watched namespaces, or not at all.
    release = f"app.kubernetes.io/instance={RELEASE}"
    cluster_roles = cluster.get_json("clusterroles", "-l", release)["items"]
    bound = {b["roleRef"]["name"] for b in cluster.get_json("clusterrolebindings", "-l", release)["items"]}
    assert not [
        r["metadata"]["name"]
        for r in cluster_roles
        if r["metadata"]["name"] in bound
        for rule in r["rules"]
        if "agents" in rule["resources"]
    ]
    cluster.wait_rollout(NAMESPACE, OPERATOR)
    operators = cluster.pod_names(NAMESPACE, OPERATOR)
    # The previous install's Lease may still name a stopped pod: wait until this one leads.
    wait_for("the operator to hold the Lease", lambda: scenario.lease_holder() in operators)
    manual = {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": "manual-agent", "namespace": AGENTS_NS},
        "spec": {"type": "resource", "host": "10.9.9.9", "port": 9000},
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manual))
    # The operator, with Roles only, initialises a new Agent in a watched namespace.
    wait_for("the new Agent initialised", lambda: scenario.phase("manual-agent") == "Healthy")
    for name in scenario.agent_pods[1:]:
        wait_for(f"{name} Healthy", lambda name=name: scenario.phase(name) == "Healthy")
    scenario.assert_clean_logs(OPERATOR)
    cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE)
