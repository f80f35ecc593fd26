"""Paths of the objects the registry uses, in one place."""

from __future__ import annotations

from urllib.parse import quote

from agent_registry.schema import constants as c

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
SELF_SUBJECT_REVIEWS = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
SUBJECT_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
NAMESPACES = "/api/v1/namespaces"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
VERSION = "/version"


def _name(value: str) -> str:
    return quote(value, safe="")


def agents(namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
    """Agents in ``namespace`` (all namespaces when None), one by ``name``, or its ``subresource``."""
    base = f"/apis/{c.GROUP}/{c.VERSION}"
    path = f"{base}/namespaces/{_name(namespace)}/{c.PLURAL}" if namespace is not None else f"{base}/{c.PLURAL}"
    if name is not None:
        path += f"/{_name(name)}"
        if subresource:
            path += f"/{subresource}"
    return path


def leases(namespace: str, name: str | None = None) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{_name(namespace)}/leases"
    return f"{path}/{_name(name)}" if name is not None else path


def events(namespace: str) -> str:
    return f"/api/v1/namespaces/{_name(namespace)}/events"


def pods(namespace: str, name: str | None = None) -> str:
    path = f"/api/v1/namespaces/{_name(namespace)}/pods"
    return f"{path}/{_name(name)}" if name is not None else path


def namespace(name: str) -> str:
    return f"{NAMESPACES}/{_name(name)}"


def crd(name: str) -> str:
    return f"{CRDS}/{_name(name)}"
