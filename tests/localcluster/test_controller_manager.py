"""kube-controller-manager in the local control plane: owner references and namespace
deletion behave as in a real cluster, and the controller-manager restarts like the servers."""

from __future__ import annotations

from typing import Any

from agent_registry.kubeapi import paths
from agent_registry.kubeapi.sync import SyncApi
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.process import wait_for
from agent_registry.schema import constants as c
from operator_harness import Agents

# The garbage collector finds new resource types (the Agent CRD, applied after it started)
# on its next discovery round, every 30 s; then it lists them and acts on what it finds.
GC_TIMEOUT = 90.0


def create_pod(api: SyncApi, namespace: str, name: str) -> dict[str, Any]:
    """A bare Pod: no scheduler or kubelet runs it, but it is a real owner.

    The ServiceAccount admission plugin is off, so it needs no ServiceAccount; the field
    says so anyway, for a control plane that has the plugin on."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}],
        },
    }
    return api.create(paths.pods(namespace), pod)


def owner_reference(obj: dict[str, Any]) -> dict[str, str]:
    meta = obj["metadata"]
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"], "uid": meta["uid"]}


def create_lease(api: SyncApi, namespace: str, name: str, owner: dict[str, Any]) -> dict[str, Any]:
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "ownerReferences": [owner_reference(owner)]},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 45},
    }
    return api.create(paths.leases(namespace), lease)


def test_an_agent_goes_with_its_pod(api: SyncApi, namespace: str, agents: Agents) -> None:
    doomed_pod = create_pod(api, namespace, "doomed-pod")
    kept_pod = create_pod(api, namespace, "kept-pod")
    agents.create("doomed-agent", owner_references=[owner_reference(doomed_pod)])
    kept = agents.create("kept-agent", owner_references=[owner_reference(kept_pod)])

    # Never scheduled, the Pod is deleted at once: no kubelet has to confirm it.
    api.delete(paths.pods(namespace, "doomed-pod"))

    wait_for("the garbage collector to delete the Agent", lambda: agents.get("doomed-agent") is None, GC_TIMEOUT)
    survivor = agents.get("kept-agent")
    assert survivor is not None, "an Agent whose Pod still exists was deleted"
    assert survivor["metadata"]["uid"] == kept["metadata"]["uid"]
    assert survivor["metadata"]["ownerReferences"] == [owner_reference(kept_pod)]


def test_a_lease_goes_with_its_agent(api: SyncApi, namespace: str, agents: Agents) -> None:
    agent = agents.create("cost-agent")
    kept_agent = agents.create("kept-agent")
    assert agent["apiVersion"] == c.API_VERSION and agent["kind"] == c.KIND
    create_lease(api, namespace, "cost-agent", agent)
    create_lease(api, namespace, "kept-agent", kept_agent)

    agents.delete("cost-agent")

    wait_for(
        "the garbage collector to delete the Lease",
        lambda: api.get(paths.leases(namespace, "cost-agent")) is None,
        GC_TIMEOUT,
    )
    assert api.get(paths.leases(namespace, "kept-agent")) is not None


def test_a_deleted_namespace_is_emptied_and_removed_by_the_namespace_controller(
    controlplane: LocalControlPlane, api: SyncApi
) -> None:
    """Only the API call: nothing but the namespace controller finishes the job."""
    name = controlplane.create_namespace("namespace-controller-test")
    try:
        Agents(api, name).create("left-behind")
        api.delete(paths.namespace(name))

        wait_for("the namespace to be gone", lambda: api.get(paths.namespace(name)) is None, GC_TIMEOUT)
        # Listing across namespaces reads etcd directly, so orphans of the deleted namespace would show.
        leftovers = api.request("GET", paths.agents(), params={"fieldSelector": f"metadata.namespace={name}"})
        assert leftovers["items"] == []
    finally:
        controlplane.delete_namespace(name)


def test_controller_manager_is_listed_and_restarts(
    controlplane: LocalControlPlane, api: SyncApi, namespace: str, agents: Agents
) -> None:
    old_pid = controlplane.pids["kube-controller-manager"]
    log_file = controlplane.log_files["kube-controller-manager"]
    assert log_file.exists()

    controlplane.stop_controller_manager()
    assert "kube-controller-manager" not in controlplane.pids
    # Deleted while no garbage collector runs: the restarted one finds the orphan on its first look.
    agent = agents.create("cost-agent")
    create_lease(api, namespace, "cost-agent", agent)
    agents.delete("cost-agent")
    controlplane.start_controller_manager()

    new_pid = controlplane.pids["kube-controller-manager"]
    assert new_pid != old_pid
    wait_for(
        "the restarted garbage collector to delete the Lease",
        lambda: api.get(paths.leases(namespace, "cost-agent")) is None,
        GC_TIMEOUT,
    )
    assert log_file.read_text().count("=== starting kube-controller-manager") >= 2
