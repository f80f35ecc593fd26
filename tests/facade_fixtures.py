"""Fixtures for the facade's tests: the operator, one or more facades, and the namespace's Agents.

Loaded by test modules with ``pytest_plugins = ["facade_fixtures"]`` (conftest.py holds the
shared servers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client, config

from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import FacadeProcess, OperatorProcess
from facade_harness import facade_for_test
from operator_harness import Agents, operator_for_test


@pytest.fixture
def api_client(controlplane: LocalControlPlane) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(controlplane.kubeconfig))
    yield api
    api.close()


@pytest.fixture
def agents(api_client: client.ApiClient, namespace: str) -> Agents:
    """The Agent objects of the test's namespace, straight from the API server."""
    return Agents(api_client, namespace)


@pytest.fixture
def operator(
    controlplane: LocalControlPlane, namespace: str, redis_url: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    op = operator_for_test(controlplane.kubeconfig, namespace, redis_url, tmp_path).start()
    yield op
    op.stop()


@pytest.fixture
def make_facade(
    controlplane: LocalControlPlane, namespace: str, redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., FacadeProcess]]:
    started: list[FacadeProcess] = []

    def make(**kwargs: Any) -> FacadeProcess:
        facade = facade_for_test(
            controlplane.kubeconfig, namespace, redis_url, tmp_path, name=f"facade-{len(started)}", **kwargs
        )
        started.append(facade)
        return facade.start()

    yield make
    for facade in started:
        facade.stop()


@pytest.fixture
def facade(make_facade: Callable[..., FacadeProcess]) -> FacadeProcess:
    """A facade without authentication, serving the test's namespace."""
    return make_facade()


@pytest.fixture
def http(facade: FacadeProcess) -> Iterator[httpx.Client]:
    with facade.client() as session:
        yield session
