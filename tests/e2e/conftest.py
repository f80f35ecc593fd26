"""Fixtures of the end-to-end suite.

The scenarios run on each cluster ``E2E_CLUSTER`` names: ``local`` (the local control plane
with local processes standing in for pods) or ``kind`` (``make e2e-kind``: a kind cluster
on a Docker engine, the machine's or one the tests start; skipped with the reason when none
can be had); both, local first, when it is unset (``make test``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_cluster import Cluster, KindCluster, LocalCluster

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
        callspec = getattr(item, "callspec", None)
        if "docker_engine" in fixtures or (callspec is not None and callspec.params.get("e2e_cluster") == "kind"):
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


def _clusters() -> list[str]:
    """``E2E_CLUSTER`` when set; else both, local first (the fast path), kind after."""
    wanted = os.environ.get(CLUSTER_ENV)
    if wanted is None:
        return ["local", "kind"]
    if wanted not in ("local", "kind"):
        raise pytest.UsageError(f"{CLUSTER_ENV}={wanted!r}: expected 'local' or 'kind'")
    return [wanted]


@pytest.fixture(scope="session", params=_clusters())
def e2e_cluster(request: pytest.FixtureRequest, binaries: Binaries) -> Iterator[Cluster]:
    """A fresh cluster with nothing installed, for the scenarios; kind only where a Docker
    engine can be had that runs privileged containers, else a skip that says why."""
    cluster: Cluster
    if request.param == "kind":
        engine: Engine = request.getfixturevalue("docker_engine")
        failure = engine.privileged_failure()
        if failure is not None:
            pytest.skip(f"kind needs privileged containers, which this Docker engine cannot run: {failure}")
        cluster = KindCluster(binaries, engine)
    else:
        cluster = LocalCluster()
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
