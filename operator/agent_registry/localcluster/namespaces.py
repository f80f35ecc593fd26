"""Deleting a namespace at once, whatever its objects' finalizers say.

Deleting a namespace only marks it ``Terminating``; the namespace controller (in
kube-controller-manager, which the local control plane runs) then deletes every object in
it and finally clears the namespace's ``kubernetes`` finalizer so it disappears. It does
that in the background, and it waits for as long as any object is held by a finalizer:
an operator's finalizers on Agents, after a test stopped that operator, would keep the
namespace, its Agents and their operator timers around for the rest of the session.

:func:`purge_namespace` does the controller's job itself, synchronously, and goes one step
further: objects held by finalizers get those finalizers removed, so nothing survives the
namespace. The controller may be working on the same namespace meanwhile; whichever of the
two comes second finds objects gone (404) or changed (409), which both take as done.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from agent_registry import kubeapi
from agent_registry.kubeapi import paths
from agent_registry.kubeapi.sync import SyncApi

# One request returns every group with its resources (Kubernetes >= 1.30).
AGGREGATED_DISCOVERY = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
# Gone meanwhile (404) or changed under us (409): nothing is left for this step to do.
_GONE = (kubeapi.NotFound, kubeapi.Conflict)
# events.k8s.io/v1 events are the core events under another name; emptying one empties both.
_ALIASES = {("events.k8s.io", "events")}
_DELETE_NOW = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "propagationPolicy": "Background"}


@dataclasses.dataclass(frozen=True)
class ResourceType:
    """A namespaced resource at its preferred version, e.g. ``/apis/apps/v1`` + ``deployments``."""

    prefix: str
    plural: str

    def collection(self, namespace: str) -> str:
        return f"{self.prefix}/namespaces/{namespace}/{self.plural}"


def namespaced_resource_types(api: SyncApi) -> list[ResourceType]:
    """Every namespaced resource that can be listed and deleted as a collection, CRDs included."""
    found = []
    for root in ("/api", "/apis"):
        listing = api.request("GET", root, accept=AGGREGATED_DISCOVERY)
        if listing.get("kind") != "APIGroupDiscoveryList":
            raise RuntimeError(f"GET {root} did not return aggregated discovery: {str(listing)[:200]}")
        for group in listing["items"]:
            group_name = group["metadata"].get("name", "")
            preferred = group["versions"][0]  # versions are listed in order of preference
            prefix = f"/apis/{group_name}/{preferred['version']}" if group_name else f"/api/{preferred['version']}"
            for resource in preferred.get("resources", []):
                verbs = set(resource.get("verbs", []))
                if (
                    resource.get("scope") == "Namespaced"
                    and {"list", "deletecollection"} <= verbs
                    and (group_name, resource["resource"]) not in _ALIASES
                ):
                    found.append(ResourceType(prefix, resource["resource"]))
    return found


def purge_namespace(api: SyncApi, name: str) -> None:
    """Delete the namespace ``name`` and everything in it, finalizers notwithstanding."""
    try:
        api.delete(paths.namespace(name))
    except kubeapi.NotFound:
        return
    # Marked Terminating first: from now on the API server refuses new objects in it.
    for resource_type in namespaced_resource_types(api):
        collection = resource_type.collection(name)
        deleted = api.delete(collection, _DELETE_NOW)
        for item in _held_by_finalizers(deleted):
            with contextlib.suppress(*_GONE):
                api.merge_patch(f"{collection}/{item['metadata']['name']}", {"metadata": {"finalizers": None}})
    finalized = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "spec": {"finalizers": []}}
    with contextlib.suppress(*_GONE):
        api.replace(f"{paths.namespace(name)}/finalize", finalized)


def _held_by_finalizers(deleted: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects a delete-collection call returned that are still there, waiting on finalizers."""
    return [item for item in deleted.get("items") or [] if item.get("metadata", {}).get("finalizers")]
