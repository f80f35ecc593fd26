"""One agent must not speak for another: the chart's owner-restriction policy on the real API
server, the sidecar recording its identity, and the facade applying the same rule to REST callers.

The policy is rendered from the chart with the built helm (one source) and bound to the test's
namespace only, so it cannot touch other tests' objects. Identities are real ServiceAccounts
with tokens, bound to the real sidecar Role (manifests/rbac/sidecar-role.yaml) and the chart's
operator and admin roles.
"""

from __future__ import annotations

import json
import secrets
import signal
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from accounts import WRITER_RULES, Accounts, user
from agent_registry import kubeapi
from agent_registry.kubeapi import paths
from agent_registry.kubeapi.sync import SyncApi
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import FacadeProcess, InClusterAccount, SidecarProcess
from agent_registry.localcluster.process import LOOPBACK, wait_for
from agent_registry.schema import constants as c
from agent_registry.schema import lease
from facade_harness import assert_error, registration
from fake_agent import FakeAgent
from repo import CHART_DIR, SIDECAR_ROLE
from sidecar_harness import sidecar_for_test

POLICY_TEMPLATE = "templates/owner-restriction-policy.yaml"
OWNER = c.REGISTERED_BY_ANNOTATION
# Agents do not heartbeat into Leases yet; until they do, the tests' agents may handle their own.
LEASE_RULES = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "create", "update", "patch", "delete"],
    }
]


def helm_template(cp: LocalControlPlane, release: str, namespace: str, *templates: str) -> str:
    shows = [arg for t in templates for arg in ("--show-only", t)]
    args = ["template", release, str(CHART_DIR), "--namespace", namespace, *shows]
    args += ["--set", f"watchNamespaces={{{namespace}}}", "--set", f"facade.defaultNamespace={namespace}"]
    return subprocess.run([str(cp.binaries.helm), *args], capture_output=True, text=True, check=True).stdout


@dataclass
class Identity:
    name: str
    username: str
    token: str
    kubeconfig: Path
    cp: LocalControlPlane

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        # A later --kubeconfig wins over the admin one the control plane passes.
        return self.cp.kubectl(f"--kubeconfig={self.kubeconfig}", *args, input=input, check=False)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        """The sidecar's heartbeat call (kubectl would first GET the subresource, which the Role does not allow)."""
        path = paths.agents(namespace, name, "status")
        trust_only = ssl.create_default_context(cafile=str(self.cp.ca_file))
        with SyncApi(kubeapi.Connection.direct(self.cp.server, trust_only, token=self.token)) as api:
            try:
                patched = api.merge_patch(path, {"status": status})
            except kubeapi.StatusError as refused:
                return subprocess.CompletedProcess(path, 1, "", f"{refused.reason}: {refused.message}")
        return subprocess.CompletedProcess(path, 0, json.dumps(patched), "")


class World:
    """The test's namespace, with the policy installed and identities to act as."""

    def __init__(self, cp: LocalControlPlane, namespace: str, workdir: Path) -> None:
        self.cp = cp
        self.namespace = namespace
        self.workdir = workdir
        self.release = f"own-{secrets.token_hex(3)}"
        self.fullname = f"{self.release}-agent-registry"
        self.accounts = Accounts(cp, namespace)
        cp.kubectl("apply", "-n", namespace, "-f", str(SIDECAR_ROLE))

    def identity(self, account: str, *, role: str | None = "agent-sidecar") -> Identity:
        token = self.accounts.token(account, duration="1h")
        if role:
            self.accounts.bind(account, "Role", role)
        kubeconfig = self.workdir / f"{account}.kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "local", "cluster": {"server": self.cp.server, "certificate-authority": str(self.cp.ca_file)}}
            ],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": account}}],
            "current-context": "local",
        }
        kubeconfig.write_text(yaml.safe_dump(config))
        return Identity(account, user(self.namespace, account), token, kubeconfig, self.cp)

    def install_policy(self) -> None:
        self.cp.kubectl("apply", "-f", "-", input=helm_template(self.cp, self.release, self.namespace, POLICY_TEMPLATE))
        # A new binding takes a moment to reach the admission plugin: probe with a write it must refuse.
        prober = self.identity("policy-prober")
        self.agent("policy-probe", owner="someone-else")

        def refused() -> bool:
            denied = prober.kubectl("delete", "agent", "policy-probe", "-n", self.namespace, "--dry-run=server")
            return denied.returncode != 0 and "owner rule" in denied.stderr

        wait_for("the owner-restriction policy to take effect", refused, timeout=30)
        self.cp.kubectl("delete", "agent", "policy-probe", "-n", self.namespace)

    def remove_policy(self) -> None:
        for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            self.cp.kubectl("delete", kind, f"{self.fullname}-owner-restriction", "--ignore-not-found", check=False)

    def agent_body(self, name: str, owner: str | None = None) -> str:
        metadata: dict[str, Any] = {"name": name, "namespace": self.namespace}
        if owner is not None:
            metadata["annotations"] = {OWNER: owner}
        spec = {"type": "cost", "host": "10.0.0.7", "port": 8001}
        return json.dumps({"apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": metadata, "spec": spec})

    def agent(self, name: str, owner: str | None = None, as_: Identity | None = None) -> None:
        """Create an Agent, as the admin or as ``as_``."""
        body = self.agent_body(name, owner)
        if as_ is None:
            self.cp.kubectl("create", "-f", "-", input=body)
        else:
            created = as_.kubectl("create", "-f", "-", input=body)
            assert created.returncode == 0, created.stderr

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        got = self.cp.kubectl("get", kind, name, "-n", self.namespace, "-o", "json", check=False)
        return json.loads(got.stdout) if got.returncode == 0 else None

    def owner_of(self, kind: str, name: str) -> str | None:
        obj = self.get(kind, name) or {}
        value: str | None = (obj.get("metadata", {}).get("annotations") or {}).get(OWNER)
        return value

    def lease_body(self, name: str, owner: str | None) -> str:
        metadata: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": {c.AGENT_LEASE_LABEL: name}}
        if owner is not None:
            metadata["annotations"] = {OWNER: owner}
        spec = {"holderIdentity": name, "leaseDurationSeconds": 30}
        return json.dumps({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec})


@pytest.fixture
def world(controlplane: LocalControlPlane, namespace: str, tmp_path: Path) -> Iterator[World]:
    w = World(controlplane, namespace, tmp_path)
    w.install_policy()
    yield w
    w.remove_policy()


def refused(result: subprocess.CompletedProcess[str], *mentions: str) -> None:
    assert result.returncode != 0, f"allowed: {result.stdout}"
    assert "Forbidden" in result.stderr, result.stderr
    for mention in mentions:
        assert mention in result.stderr, (mention, result.stderr)


def allowed(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr


STATUS = {"heartbeatSequence": 99, "reportedStatus": "unhealthy"}


# -- the chart ----------------------------------------------------------------------------------


def test_the_chart_policy_uses_the_registry_names(controlplane: LocalControlPlane) -> None:
    text = helm_template(controlplane, "reg", "agents", POLICY_TEMPLATE)
    for name in (c.REGISTERED_BY_ANNOTATION, c.AGENT_LEASE_LABEL, f"check('{c.OVERRIDE_VERB}')", c.GROUP):
        assert name in text, name
    policy, binding = [d for d in yaml.safe_load_all(text) if d]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"] == ["agents"]
    assert {v["reason"] for v in policy["spec"]["validations"]} == {"Forbidden"}


# -- the API server enforces it -----------------------------------------------------------------


def test_an_agent_cannot_write_or_delete_another_agents_agent(world: World) -> None:
    a, b = world.identity("agent-a"), world.identity("agent-b")
    ns = world.namespace
    world.agent("b", owner=b.username, as_=b)
    rule = f"registered by {b.username}"

    refused(a.patch_status(ns, "b", STATUS), rule)
    refused(a.kubectl("patch", "agent", "b", "-n", ns, "--type=merge", "-p", '{"spec": {"port": 9}}'), rule)
    refused(a.kubectl("delete", "agent", "b", "-n", ns), rule, "may delete")
    refused(a.kubectl("annotate", "agent", "b", "-n", ns, "--overwrite", f"{OWNER}={a.username}"), rule)
    refused(a.kubectl("annotate", "agent", "b", "-n", ns, f"{OWNER}-"), rule)
    # Nor can it create one in another's name.
    refused(a.kubectl("create", "-f", "-", input=world.agent_body("fake-b", b.username)), "must be the creating user")
    agent = world.get("agent", "b")
    assert agent is not None
    assert agent["metadata"]["annotations"][OWNER] == b.username
    assert agent["spec"]["port"] == 8001
    assert "heartbeatSequence" not in (agent.get("status") or {})

    # Its own agent it may do everything to, except give it away.
    world.agent("a", owner=a.username, as_=a)
    allowed(a.patch_status(ns, "a", STATUS))
    allowed(a.kubectl("patch", "agent", "a", "-n", ns, "--type=merge", "-p", '{"spec": {"port": 9}}'))
    refused(a.kubectl("annotate", "agent", "a", "-n", ns, "--overwrite", f"{OWNER}={b.username}"), "cannot change")
    allowed(a.kubectl("delete", "agent", "a", "-n", ns))
    # And B still may write and delete its own.
    allowed(b.patch_status(ns, "b", STATUS))
    allowed(b.kubectl("delete", "agent", "b", "-n", ns))


def test_an_agent_cannot_renew_or_delete_another_agents_lease(world: World) -> None:
    a, b = world.identity("agent-a"), world.identity("agent-b")
    for account in (a, b):
        world.accounts.grant(account.name, LEASE_RULES, role=f"{account.name}-leases")
    ns = world.namespace
    allowed(b.kubectl("create", "-f", "-", input=world.lease_body("b", b.username)))
    renew = json.dumps({"spec": {"holderIdentity": "a", "renewTime": "2030-01-01T00:00:00.000000Z"}})
    rule = f"Lease {ns}/b is registered by {b.username}"

    refused(a.kubectl("patch", "lease", "b", "-n", ns, "--type=merge", "-p", renew), rule)
    refused(a.kubectl("delete", "lease", "b", "-n", ns), rule)
    refused(a.kubectl("label", "lease", "b", "-n", ns, f"{c.AGENT_LEASE_LABEL}-"), rule)
    # An agent Lease is new with this rule, so it must name its creator; the creator is anyone's own name only.
    refused(a.kubectl("create", "-f", "-", input=world.lease_body("a", None)), "must be the creating user")
    refused(a.kubectl("create", "-f", "-", input=world.lease_body("a", b.username)), "must be the creating user")
    assert (world.get("lease", "b") or {})["spec"]["holderIdentity"] == "b"

    allowed(b.kubectl("patch", "lease", "b", "-n", ns, "--type=merge", "-p", renew))
    allowed(b.kubectl("delete", "lease", "b", "-n", ns))
    # Leases that are not agents' (leader election, say) are not the policy's business.
    plain = json.dumps(
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader", "namespace": ns}}
    )
    allowed(a.kubectl("create", "-f", "-", input=plain))


def test_the_operator_and_an_admin_still_can(world: World) -> None:
    b = world.identity("agent-b")
    ns = world.namespace
    # The chart's own RBAC for the operator and the admin ClusterRole, rendered for this release.
    rbac = helm_template(world.cp, world.release, ns, "templates/operator-rbac.yaml", "templates/admin-rbac.yaml")
    world.cp.kubectl("apply", "-f", "-", input=rbac)
    try:
        operator = world.identity(f"{world.fullname}-operator", role=None)
        admin = world.identity("alice", role=None)
        world.accounts.bind("alice", "ClusterRole", f"{world.fullname}-admin")
        for name in ("b1", "b2"):
            world.agent(name, owner=b.username, as_=b)

        allowed(operator.patch_status(ns, "b1", {"phase": "Unreachable"}))
        allowed(operator.kubectl("delete", "agent", "b1", "-n", ns))
        allowed(admin.patch_status(ns, "b2", {"phase": "Unreachable"}))
        allowed(admin.kubectl("annotate", "agent", "b2", "-n", ns, "--overwrite", f"{OWNER}={admin.username}"))
        assert world.owner_of("agent", "b2") == admin.username
        allowed(admin.kubectl("delete", "agent", "b2", "-n", ns))
    finally:
        world.cp.kubectl("delete", "-f", "-", "--ignore-not-found", input=rbac, check=False)


def test_an_unowned_agent_stays_writable_and_can_be_claimed(world: World) -> None:
    a, b = world.identity("agent-a"), world.identity("agent-b")
    ns = world.namespace
    world.agent("legacy", as_=a)  # as a sidecar older than the rule creates it
    allowed(b.patch_status(ns, "legacy", STATUS))
    refused(b.kubectl("annotate", "agent", "legacy", "-n", ns, f"{OWNER}={a.username}"), "cannot change")
    allowed(b.kubectl("annotate", "agent", "legacy", "-n", ns, f"{OWNER}={b.username}"))
    refused(a.kubectl("delete", "agent", "legacy", "-n", ns), f"registered by {b.username}")


# -- the sidecar --------------------------------------------------------------------------------


@pytest.fixture
def start_sidecar(
    world: World, fake_agent: FakeAgent, tmp_path: Path, controlplane: LocalControlPlane
) -> Iterator[Callable[[Identity, str], SidecarProcess]]:
    started: list[SidecarProcess] = []

    def start(identity: Identity, agent_name: str) -> SidecarProcess:
        account = InClusterAccount.mount(
            tmp_path / f"sa-{identity.name}-{len(started)}",
            token=identity.token,
            ca_file=controlplane.ca_file,
            namespace=world.namespace,
            host=LOOPBACK,
            port=controlplane.apiserver_port,
        )
        process = sidecar_for_test(
            tmp_path,
            fake_agent,
            name=f"sidecar-{identity.name}-{len(started)}",
            agent_name=agent_name,
            namespace=None,  # from the service account, as in a pod
            in_cluster=account,
        ).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def fake_agent() -> Iterator[FakeAgent]:
    with FakeAgent() as agent:
        yield agent


def sequence(world: World, name: str) -> int:
    return int(((world.get("agent", name) or {}).get("status") or {}).get("heartbeatSequence") or 0)


def renew_time(world: World, agent_name: str) -> str:
    return str(((world.get("lease", lease.lease_name(agent_name)) or {}).get("spec") or {}).get("renewTime") or "")


def test_the_sidecar_records_its_identity_and_does_not_adopt_another_identitys_agent(
    world: World, start_sidecar: Callable[[Identity, str], SidecarProcess]
) -> None:
    a, b = world.identity("agent-a"), world.identity("agent-b")
    sidecar_b = start_sidecar(b, "cost-b")
    wait_for(
        "sidecar B's heartbeats", lambda: sequence(world, "cost-b") > 0 and renew_time(world, "cost-b"), timeout=30
    )
    assert world.owner_of("agent", "cost-b") == b.username
    assert world.owner_of("lease", lease.lease_name("cost-b")) == b.username

    # A sidecar configured (by mistake or malice) with B's agent name cannot take it over.
    sidecar_a = start_sidecar(a, "cost-b")

    def refusal() -> dict[str, Any] | None:
        return next((e for e in sidecar_a.entries() if e["msg"].startswith("cannot adopt the agent")), None)

    entry = wait_for("sidecar A to report the owner rule", refusal, timeout=30)
    assert entry["level"] == "error"
    assert entry["registered_by"] == b.username
    assert entry["identity"] == a.username
    assert sidecar_a.running  # it keeps retrying, in case the name frees up
    before = renew_time(world, "cost-b")
    wait_for("B to keep heartbeating", lambda: renew_time(world, "cost-b") > before, timeout=30)
    assert world.owner_of("agent", "cost-b") == b.username
    assert len([e for e in sidecar_a.entries() if e["msg"].startswith("cannot adopt")]) == 1  # once, not per retry

    # When B leaves, its Agent goes, and A registers the name as its own.
    sidecar_b.send_signal(signal.SIGTERM)
    assert sidecar_b.wait() == 0
    wait_for("A to register the freed name", lambda: world.owner_of("agent", "cost-b") == a.username, timeout=60)
    # B took its Lease along, so A's heartbeats renew a Lease of its own.
    wait_for("A's Lease", lambda: world.owner_of("lease", lease.lease_name("cost-b")) == a.username, timeout=30)
    sidecar_a.send_signal(signal.SIGTERM)
    assert sidecar_a.wait() == 0
    assert world.get("agent", "cost-b") is None


def test_the_sidecar_claims_an_unowned_agent_it_adopts(
    world: World, start_sidecar: Callable[[Identity, str], SidecarProcess]
) -> None:
    a = world.identity("agent-a")
    world.agent("cost-a", as_=a)  # registered by an older sidecar: no annotation
    sidecar = start_sidecar(a, "cost-a")
    wait_for("the adoption", lambda: sequence(world, "cost-a") > 0, timeout=30)
    assert world.owner_of("agent", "cost-a") == a.username
    sidecar.send_signal(signal.SIGTERM)
    assert sidecar.wait() == 0


# -- the facade ---------------------------------------------------------------------------------


def test_the_facade_applies_the_owner_rule_to_rest_callers(
    world: World, make_facade: Callable[..., FacadeProcess]
) -> None:
    facade = make_facade(auth=True, auth_cache_seconds=0)
    ns = world.namespace
    a, b = world.identity("rest-a", role=None), world.identity("rest-b", role=None)
    for identity in (a, b):
        world.accounts.grant(identity.name, WRITER_RULES, role=f"{identity.name}-writer")
    with facade.client(token=a.token) as http_a, facade.client(token=b.token) as http_b:
        id_a = http_a.post("/agents/register", json=registration("a")).json()["agent_id"]
        response = http_b.post("/agents/register", json=registration("b"))
        assert response.status_code == 201, response.text
        id_b = response.json()["agent_id"]
        assert world.owner_of("agent", "a") == a.username
        assert world.owner_of("agent", "b") == b.username

        rule = f"is registered by {b.username}"
        assert_error(http_a.post(f"/agents/{id_b}/heartbeat", json={"status": "unhealthy"}), 403, rule, "owner rule")
        assert_error(http_a.post(f"/agents/{id_b}/unregister"), 403, rule, "owner rule")
        assert_error(http_a.post("/agents/register", json=registration("b", port=9)), 403, rule)
        agent_b = world.get("agent", "b") or {}
        assert agent_b["spec"]["port"] == 8001
        assert agent_b["status"]["reportedStatus"] == "healthy"

        assert http_b.post(f"/agents/{id_b}/heartbeat", json={"status": "degraded"}).status_code == 200
        assert http_a.post(f"/agents/{id_a}/heartbeat", json={"status": "healthy"}).status_code == 200
        assert http_b.post("/agents/register", json=registration("b", port=9)).json()["agent_id"] == id_b

        # Whoever may override agents (here the chart's admin ClusterRole) is not held by it.
        admin_rbac = helm_template(world.cp, world.release, ns, "templates/admin-rbac.yaml")
        world.cp.kubectl("apply", "-f", "-", input=admin_rbac)
        try:
            admin = world.identity("alice", role=None)
            world.accounts.bind("alice", "ClusterRole", f"{world.fullname}-admin")
            with facade.client(token=admin.token) as http_admin:
                assert http_admin.post(f"/agents/{id_b}/heartbeat", json={"status": "healthy"}).status_code == 200
                assert http_admin.post(f"/agents/{id_b}/unregister").status_code == 200
        finally:
            world.cp.kubectl("delete", "-f", "-", "--ignore-not-found", input=admin_rbac, check=False)
        assert http_a.post(f"/agents/{id_a}/unregister").status_code == 200
    assert world.get("agent", "a") is None


def test_without_authentication_the_facade_records_no_identity(
    world: World, make_facade: Callable[..., FacadeProcess]
) -> None:
    with make_facade().client() as http:
        assert http.post("/agents/register", json=registration("anonymous")).status_code == 201
    assert world.owner_of("agent", "anonymous") is None
