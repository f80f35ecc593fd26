"""Fixtures for tests against real servers: kube-apiserver + etcd + kube-controller-manager, and Redis, all on loopback.

Each server starts once per session, on first use; tests that use none of these
fixtures start nothing. Every test gets its own namespace and an empty Redis.
"""

from __future__ import annotations

import re
import secrets
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import redis

from accounts import Accounts
from agent_registry import kubeapi
from agent_registry.kubeapi.sync import SyncApi
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import OperatorProcess
from agent_registry.localcluster.redis_server import LocalRedis
from operator_harness import Agents, operator_for_test
from repo import CRD_DIR

_K8S_FIXTURES = {"controlplane", "kubeconfig", "namespace"}
_REDIS_FIXTURES = {"redis_server", "redis_url"}
# The facades and their HTTP client, beside the servers below: defined once, for every test.
pytest_plugins = ["facade_fixtures"]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A cancelled CI job gets SIGTERM, which by default ends Python without any cleanup.
    # Handled like Ctrl-C, it lets pytest run fixture teardown: servers stop, temp dirs go.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the servers they need, so `-m "not k8s"` runs only the quick ones."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _K8S_FIXTURES:
            item.add_marker(pytest.mark.k8s)
        if fixtures & _REDIS_FIXTURES:
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session")
def controlplane() -> Iterator[LocalControlPlane]:
    with LocalControlPlane() as cp:
        if CRD_DIR.is_dir() and any(CRD_DIR.glob("*.y*ml")):
            cp.apply_crds(CRD_DIR)
        yield cp


@pytest.fixture(scope="session")
def kubeconfig(controlplane: LocalControlPlane) -> Path:
    return controlplane.kubeconfig


@pytest.fixture(scope="session")
def api(controlplane: LocalControlPlane) -> Iterator[SyncApi]:
    """The cluster admin's client, through the kubeconfig every process of the tests gets."""
    with SyncApi(kubeapi.load(controlplane.kubeconfig)) as admin:
        yield admin


def _namespace_name(test_name: str) -> str:
    # Readable in `kubectl get ns` while debugging, unique, and a valid DNS label (<= 63).
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"{slug}-{secrets.token_hex(4)}"


@pytest.fixture
def namespace(controlplane: LocalControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    name = controlplane.create_namespace(_namespace_name(request.node.name))
    yield name
    # A fault test that failed half-way may have left etcd or the API server down.
    controlplane.ensure_running()
    controlplane.delete_namespace(name)


@pytest.fixture
def agents(api: SyncApi, namespace: str) -> Agents:
    """The Agent objects of the test's namespace, straight from the API server."""
    return Agents(api, namespace)


@pytest.fixture
def accounts(controlplane: LocalControlPlane, namespace: str) -> Accounts:
    """ServiceAccounts, tokens and RBAC in the test's namespace."""
    return Accounts(controlplane, namespace)


@pytest.fixture
def make_operator(
    controlplane: LocalControlPlane, namespace: str, redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Operators for the test's namespace, not yet started; keywords override their settings.
    Every one made is stopped at the end of the test."""
    made: list[OperatorProcess] = []

    def make(**settings: Any) -> OperatorProcess:
        made.append(operator_for_test(controlplane.kubeconfig, namespace, redis_url, tmp_path, **settings))
        return made[-1]

    yield make
    for op in made:
        op.stop()


@pytest.fixture
def operator(make_operator: Callable[..., OperatorProcess]) -> OperatorProcess:
    """One operator, started, writing the index the test's facades read."""
    return make_operator().start()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> str:
    if not redis_server.running:  # a fault test killed it and failed before restarting it
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url
