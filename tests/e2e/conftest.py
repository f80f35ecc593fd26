"""Fixtures of the end-to-end suite.

``E2E_CLUSTER`` picks the cluster the scenarios run on: ``local`` (default; the local
control plane with local processes standing in for pods) or ``kind`` (``make e2e-kind``;
skipped with the reason when Docker or kind is missing).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_cluster import Cluster, KindCluster, LocalCluster, kind_missing_reason

from agent_registry.localcluster.build import Binaries, ensure_built
from agent_registry.localcluster.docker import DockerUnavailableError, Engine, LocalDocker

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHART = REPO / "helm" / "agent-registry"
DATA = HERE / "data"
CLUSTER_ENV = "E2E_CLUSTER"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end: the chart, the image and the processes together")
    config.addinivalue_line("markers", "kind: runs on the cluster chosen by E2E_CLUSTER (local or kind)")
    config.addinivalue_line("markers", "docker: needs a Docker engine (the machine's, or a dockerd the tests start)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything here is e2e; what needs the built binaries counts as k8s, what runs the
    registry's processes also as redis, so `make unit` (-m "not k8s and not redis") skips them."""
    for item in items:
        if HERE not in Path(str(item.path)).parents:
            continue
        item.add_marker(pytest.mark.e2e)
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & {"binaries", "e2e_cluster"}:
            item.add_marker(pytest.mark.k8s)
        if "e2e_cluster" in fixtures or Path(str(item.path)).name == "test_localrun.py":
            item.add_marker(pytest.mark.redis)
        if "docker_engine" in fixtures:
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    return ensure_built()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """The machine's Docker daemon, or one started under the cache for the session; a skip
    that says why when neither can be had."""
    docker = LocalDocker()
    try:
        docker.start()
    except DockerUnavailableError as error:
        pytest.skip(f"Docker cannot be had: {error}")
    try:
        yield docker.engine
    finally:
        docker.close()


@pytest.fixture(scope="session")
def e2e_cluster(binaries: Binaries) -> Iterator[Cluster]:
    """A fresh cluster with nothing installed, for the scenarios."""
    wanted = os.environ.get(CLUSTER_ENV, "local")
    cluster: Cluster
    if wanted == "kind":
        reason = kind_missing_reason()
        if reason:
            pytest.skip(f"{CLUSTER_ENV}=kind but {reason}")
        cluster = KindCluster(binaries)
    elif wanted == "local":
        cluster = LocalCluster()
    else:
        raise pytest.UsageError(f"{CLUSTER_ENV}={wanted!r}: expected 'local' or 'kind'")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Attach the registry's logs to a failed scenario: on kind there is no other way to see them."""
    report: pytest.TestReport = yield
    dump = getattr(item.module, "logs_for_report", None)
    if report.failed and call.when == "call" and dump is not None and "e2e_cluster" in getattr(item, "funcargs", {}):
        report.sections.append(("registry logs", dump(item.funcargs["e2e_cluster"])))
    return report
