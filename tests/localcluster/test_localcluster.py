"""The local control plane and Redis are real servers, isolated per test, and never leak."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from agent_registry import kubeapi
from agent_registry.kubeapi.sync import SyncApi
from agent_registry.localcluster import build
from agent_registry.localcluster.build import ETCD_VERSION, HELM_VERSION, KUBERNETES_VERSION, ensure_built
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.redis_server import LocalRedis
from repo import CRD_DIR, REPO_ROOT

AGENT_GROUP_VERSION = "registry.optiinfra.io/v1"


def _alive(pid: int) -> bool:
    """Whether the process runs; a zombie (killed, not yet reaped by init) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _get_as(cp: LocalControlPlane, path: str, token: str) -> kubeapi.StatusError | None:
    """A GET authenticated only by a bearer token (kubectl would add the admin certificate):
    the API server's refusal, or None when it answered."""
    trust_only = ssl.create_default_context(cafile=str(cp.ca_file))
    with SyncApi(kubeapi.Connection.direct(cp.server, trust_only, token=token)) as api:
        try:
            api.request("GET", path)
        except kubeapi.StatusError as refused:
            return refused
    return None


# -- the binaries --------------------------------------------------------------------------


def test_built_binaries_report_their_versions() -> None:
    built = ensure_built()

    def first_line(*args: str) -> str:
        result = subprocess.run(args, capture_output=True, text=True, check=True)
        return (result.stdout or result.stderr).strip().splitlines()[0]

    assert first_line(str(built.kube_apiserver), "--version") == f"Kubernetes {KUBERNETES_VERSION}"
    assert first_line(str(built.kube_controller_manager), "--version") == f"Kubernetes {KUBERNETES_VERSION}"
    assert first_line(str(built.etcd), "--version") == f"etcd Version: {ETCD_VERSION.lstrip('v')}"
    assert first_line(str(built.kubectl), "version", "--client") == f"Client Version: {KUBERNETES_VERSION}"
    assert first_line(str(built.helm), "version", "--short").startswith(HELM_VERSION)


def test_a_cache_missing_one_binary_builds_only_that_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache filled before kube-controller-manager was added keeps its other binaries."""
    monkeypatch.setenv("AGENT_REGISTRY_CACHE", str(tmp_path))
    cached = build.binaries()
    build.bin_dir().mkdir(parents=True)
    for path in (cached.kube_apiserver, cached.kubectl, cached.etcd, cached.helm):
        path.write_text("cached")
    built: list[list[str]] = []

    def fake_build(targets: tuple[Path, ...], env: dict[str, str], scratch: Path) -> None:
        built.append([t.name for t in targets])
        for target in targets:
            target.write_text("built")

    for builder in ("_build_kubernetes", "_build_etcd", "_build_helm"):
        monkeypatch.setattr(build, builder, fake_build)

    build.ensure_built()

    assert built == [["kube-controller-manager"]]
    assert cached.kube_apiserver.read_text() == "cached"
    build.ensure_built()
    assert built == [["kube-controller-manager"]]  # nothing is missing now


def test_apiserver_serves_its_version(controlplane: LocalControlPlane) -> None:
    version = json.loads(controlplane.kubectl("get", "--raw", "/version").stdout)
    assert version["gitVersion"] == KUBERNETES_VERSION
    assert controlplane.server.startswith("https://127.0.0.1:")


def test_kubeconfig_fixture_points_at_the_control_plane(kubeconfig: Path, controlplane: LocalControlPlane) -> None:
    assert kubeconfig == controlplane.kubeconfig
    result = subprocess.run(
        [str(controlplane.binaries.kubectl), "get", "namespace", "default", "-o", "name"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "namespace/default"


def test_repository_crds_are_established(controlplane: LocalControlPlane) -> None:
    if not any(CRD_DIR.glob("*.y*ml")):
        pytest.skip("crds/ holds no YAML yet")
    group = AGENT_GROUP_VERSION.split("/", maxsplit=1)[0]
    resources = controlplane.kubectl("api-resources", f"--api-group={group}", "-o", "name")
    assert "agents.registry.optiinfra.io" in resources.stdout.split()


# -- authentication and RBAC ---------------------------------------------------------------


def test_service_account_token_is_authenticated_but_forbidden_without_bindings(
    controlplane: LocalControlPlane, namespace: str
) -> None:
    controlplane.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = controlplane.kubectl("create", "token", "nobody", "-n", namespace).stdout.strip()
    user = f"system:serviceaccount:{namespace}:nobody"

    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    reviewed = json.loads(controlplane.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review)).stdout)
    assert reviewed["status"]["authenticated"] is True, reviewed["status"]
    assert reviewed["status"]["user"]["username"] == user

    agents_path = f"/apis/{AGENT_GROUP_VERSION}/namespaces/{namespace}/agents"
    for path in (f"/api/v1/namespaces/{namespace}/pods", agents_path):
        refused = _get_as(controlplane, path, token)
        assert refused is not None and (refused.status, refused.reason) == (403, "Forbidden"), refused
        assert user in refused.message
    refused = _get_as(controlplane, f"/api/v1/namespaces/{namespace}/pods", "not-a-real-token")
    assert refused is not None and refused.status == 401, refused

    can_i = controlplane.kubectl("auth", "can-i", "list", "pods", "-n", namespace, f"--as={user}", check=False)
    assert (can_i.returncode, can_i.stdout.strip()) == (1, "no")


def test_rbac_binding_grants_access_to_the_same_token(controlplane: LocalControlPlane, namespace: str) -> None:
    controlplane.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    controlplane.kubectl("create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace)
    controlplane.kubectl(
        "create", "rolebinding", "reader", "--role=pod-reader", f"--serviceaccount={namespace}:reader", "-n", namespace
    )
    token = controlplane.kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    # The RBAC authorizer reads bindings from an informer cache, which lags writes slightly.
    deadline = time.monotonic() + 10
    while (refused := _get_as(controlplane, f"/api/v1/namespaces/{namespace}/pods", token)) is not None:
        assert refused.status == 403, refused
        assert time.monotonic() < deadline, "role binding never took effect"
        time.sleep(0.1)
    other_namespace = _get_as(controlplane, "/api/v1/namespaces/default/pods", token)
    assert other_namespace is not None and other_namespace.status == 403


# -- namespaces ----------------------------------------------------------------------------

_namespaces_seen: list[str] = []


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_namespace(controlplane: LocalControlPlane, namespace: str, run: int) -> None:
    assert namespace not in _namespaces_seen
    for earlier in _namespaces_seen:
        gone = controlplane.kubectl("get", "namespace", earlier, "--ignore-not-found", "-o", "name")
        assert gone.stdout == "", f"namespace {earlier} of an earlier test still exists"
    phase = controlplane.kubectl("get", "namespace", namespace, "-o", "jsonpath={.status.phase}").stdout
    assert phase == "Active"
    assert controlplane.kubectl("get", "configmaps", "-n", namespace, "-o", "name").stdout == ""
    controlplane.kubectl("create", "configmap", "left-behind", f"--from-literal=run={run}", "-n", namespace)
    _namespaces_seen.append(namespace)


def test_delete_namespace_removes_objects_held_by_finalizers(controlplane: LocalControlPlane) -> None:
    name = controlplane.create_namespace("finalizer-test")
    held = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "held", "namespace": name, "finalizers": ["example.com/never-released"]},
    }
    controlplane.kubectl("create", "-f", "-", input=json.dumps(held))

    controlplane.delete_namespace(name)

    assert controlplane.kubectl("get", "namespace", name, "--ignore-not-found", "-o", "name").stdout == ""
    # Listing across namespaces reads etcd directly, so orphans of the deleted namespace would show.
    leftovers = controlplane.kubectl(
        "get", "configmaps", "-A", f"--field-selector=metadata.namespace={name}", "-o", "name"
    )
    assert leftovers.stdout == ""


# -- faults: restarts keep data ------------------------------------------------------------


def test_apiserver_restart_keeps_data(controlplane: LocalControlPlane, namespace: str) -> None:
    controlplane.kubectl("create", "configmap", "survivor", "--from-literal=k=v", "-n", namespace)
    server, old_pid = controlplane.server, controlplane.pids["kube-apiserver"]

    controlplane.stop_apiserver()
    assert _wait_gone(old_pid)
    down = controlplane.kubectl("get", "configmaps", "-n", namespace, "--request-timeout=2s", check=False)
    assert down.returncode != 0
    controlplane.start_apiserver()

    assert controlplane.server == server
    value = controlplane.kubectl("get", "configmap", "survivor", "-n", namespace, "-o", "jsonpath={.data.k}").stdout
    assert value == "v"


def test_etcd_restart_keeps_data(controlplane: LocalControlPlane, namespace: str) -> None:
    controlplane.kubectl("create", "configmap", "survivor", "--from-literal=k=v", "-n", namespace)

    controlplane.stop_etcd()
    controlplane.start_etcd()

    value = controlplane.kubectl("get", "configmap", "survivor", "-n", namespace, "-o", "jsonpath={.data.k}").stdout
    assert value == "v"
    controlplane.kubectl("create", "configmap", "written-after-restart", "-n", namespace)


# -- Redis ---------------------------------------------------------------------------------


@pytest.mark.parametrize("run", [1, 2])
def test_redis_is_empty_for_each_test(redis_url: str, run: int) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("written-by-run", run)


def test_redis_restarts_empty_on_the_same_port(redis_server: LocalRedis, redis_url: str) -> None:
    port = redis_server.port
    with redis.Redis.from_url(redis_url) as client:
        client.set("cached", "1")
        redis_server.kill()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        redis_server.start()
        assert redis_server.port == port
        assert client.get("cached") is None  # no persistence: a restarted cache is empty
        redis_server.stop()
        redis_server.start()
        assert client.ping() is True


# -- no leaks ------------------------------------------------------------------------------


def test_stop_leaves_no_processes_or_files() -> None:
    with LocalControlPlane() as cp:
        pids, workdir = cp.pids, cp.workdir
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
        assert set(cp.log_files) == set(pids)
        assert all(_alive(pid) for pid in pids.values())
    assert not any(_alive(pid) for pid in pids.values())
    assert not workdir.exists()

    with LocalRedis() as server:
        redis_pid = server.pid
    assert redis_pid is not None and not _alive(redis_pid)


_START_REDIS_AND_HANG = """
import time
from agent_registry.localcluster.redis_server import LocalRedis
server = LocalRedis().start()
print(server.pid, server.workdir, flush=True)
time.sleep(600)
"""


def test_servers_die_with_a_killed_parent() -> None:
    """Even SIGKILL, which skips every cleanup hook, leaves no server running (files do remain)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _START_REDIS_AND_HANG], stdout=subprocess.PIPE, text=True, env=_child_env()
    )
    try:
        assert parent.stdout is not None
        pid, workdir = parent.stdout.readline().split()
        redis_pid = int(pid)
        assert _alive(redis_pid)
    finally:
        parent.kill()
        parent.wait()
    shutil.rmtree(workdir, ignore_errors=True)
    assert _wait_gone(redis_pid)


def _child_env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def _pids_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_main_runs_until_interrupted_then_cleans_up() -> None:
    main = subprocess.Popen(
        [sys.executable, "-m", "agent_registry.localcluster", "--redis"],
        stdout=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    try:
        assert main.stdout is not None
        printed = {}
        for line in main.stdout:
            key, _, value = line.removeprefix("export ").strip().partition("=")
            printed[key] = value
            if key == "REDIS_URL":
                break
        kubeconfig = Path(printed["KUBECONFIG"])
        workdir = kubeconfig.parent
        # etcd, kube-apiserver and kube-controller-manager name the workdir in their flags.
        server_pids = _pids_mentioning(str(workdir))
        assert len(server_pids) == 3
        redis_port = printed["REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
        redis_pids = _pids_mentioning(f"127.0.0.1:{redis_port}")
        assert len(redis_pids) == 1

        main.send_signal(signal.SIGINT)
        assert main.wait(timeout=30) == 0
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()
    assert not any(_alive(pid) for pid in server_pids + redis_pids)
    assert not workdir.exists()
