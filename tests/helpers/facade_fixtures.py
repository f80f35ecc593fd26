"""Fixtures for the tests that talk to the facade: one or more facades, and an HTTP client.

Loaded for every test by ``tests/conftest.py``, which holds the shared servers, the admin
``api``, the namespace's ``agents`` and the ``operator`` these facades read the index of.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import FacadeProcess
from facade_harness import facade_for_test


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
