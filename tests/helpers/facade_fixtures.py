"""Fixtures for the facade's tests: the operator and one or more facades.

Loaded by test modules with ``pytest_plugins = ["facade_fixtures"]`` (conftest.py holds the
shared servers, the admin ``api`` and the namespace's ``agents``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import FacadeProcess, OperatorProcess
from facade_harness import facade_for_test
from operator_harness import operator_for_test


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
