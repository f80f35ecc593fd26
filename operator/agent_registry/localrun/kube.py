"""The few API calls ``make run`` makes itself: reachability, the CRD, a namespace, Agent phases.

They go through the client layer's synchronous transport with the kubeconfig the processes
get, so an embedded control plane and a real cluster are handled alike.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent_registry import kubeapi
from agent_registry.kubeapi import objects, paths
from agent_registry.kubeapi.sync import SyncApi
from agent_registry.schema import constants as c
from agent_registry.schema.crd import build_crd

FIELD_MANAGER = "agent-registry-localrun"


def connect(kubeconfig: Path) -> SyncApi:
    return SyncApi(kubeapi.load(kubeconfig), user_agent=FIELD_MANAGER)


def server_version(api: SyncApi) -> str:
    """The cluster's version; raises when the API server does not answer."""
    return str(api.request("GET", paths.VERSION, timeout=10)["gitVersion"])


def apply_crd(api: SyncApi, timeout: float = 60.0) -> None:
    """Server-side apply the Agent CRD built from the models, and wait until it is Established."""
    api.apply(paths.crd(c.CRD_NAME), build_crd(), FIELD_MANAGER)
    deadline = time.monotonic() + timeout
    while True:
        current = api.get(paths.crd(c.CRD_NAME)) or {}
        conditions = (current.get("status") or {}).get("conditions") or []
        if any(cond.get("type") == "Established" and cond.get("status") == "True" for cond in conditions):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {c.CRD_NAME} not Established within {timeout:.0f}s: {conditions}")
        time.sleep(0.2)


def ensure_namespace(api: SyncApi, name: str) -> bool:
    """Create the namespace unless it exists; True when it was created."""
    try:
        api.create(paths.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    except kubeapi.Conflict:
        return False
    return True


def agent_phases(api: SyncApi, namespace: str) -> dict[str, str | None]:
    """Each Agent's name and phase in ``namespace``."""
    return {objects.name(item): (item.get("status") or {}).get("phase") for item in api.list(paths.agents(namespace))}
