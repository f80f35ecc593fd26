"""The few API calls ``make run`` makes itself: reachability, the CRD, a namespace, Agent phases.

They use the official client with the kubeconfig the processes get, so an embedded
control plane and a real cluster are handled alike.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agent_registry.schema import constants as c
from agent_registry.schema.crd import build_crd

FIELD_MANAGER = "agent-registry-localrun"


def api_client(kubeconfig: Path) -> client.ApiClient:
    api: client.ApiClient = config.new_client_from_config(config_file=str(kubeconfig))
    return api


def server_version(api: client.ApiClient) -> str:
    """The cluster's version; raises when the API server does not answer."""
    info = client.VersionApi(api).get_code(_request_timeout=10)
    return str(info.git_version)


def apply_crd(api: client.ApiClient, timeout: float = 60.0) -> None:
    """Server-side apply the Agent CRD built from the models, and wait until it is Established."""
    crd = build_crd()
    extensions = client.ApiextensionsV1Api(api)
    extensions.patch_custom_resource_definition(
        c.CRD_NAME,
        crd,
        field_manager=FIELD_MANAGER,
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    deadline = time.monotonic() + timeout
    while True:
        current = extensions.read_custom_resource_definition(c.CRD_NAME)
        conditions = (current.status.conditions if current.status else None) or []
        if any(cond.type == "Established" and cond.status == "True" for cond in conditions):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {c.CRD_NAME} not Established within {timeout:.0f}s: {conditions}")
        time.sleep(0.2)


def ensure_namespace(api: client.ApiClient, name: str) -> bool:
    """Create the namespace unless it exists; True when it was created."""
    core = client.CoreV1Api(api)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


def agent_phases(api: client.ApiClient, namespace: str) -> dict[str, str | None]:
    """Each Agent's name and phase in ``namespace``."""
    listing = cast(
        dict[str, Any],
        client.CustomObjectsApi(api).list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL),
    )
    return {item["metadata"]["name"]: (item.get("status") or {}).get("phase") for item in listing["items"]}
