"""Pods as local processes: a stand-in for the controllers and the kubelet the local control plane lacks.

The local control plane stores Deployments but nothing runs them. ``LocalKubelet`` polls the
Deployments of the cluster and runs each replica's containers as processes on this machine,
so that ``helm install`` ends with the chart's own commands, environment, ServiceAccounts
(hence its RBAC) and probes at work, the way pods would run them:

* **network**: each pod gets its own loopback address (127.0.77.x), so two replicas can
  listen on the same port; ``0.0.0.0``, ``127.0.0.1`` and ``localhost`` in an env value or
  argument mean the pod's address (its containers share it, as in a pod), and a Service's
  DNS name means the address of the first replica behind it (given out before that
  replica starts, so start order does not matter);
* **credentials**: a token for the pod's ServiceAccount from the TokenRequest API, in a
  kubeconfig that ``KUBECONFIG`` names (none with ``automountServiceAccountToken: false``);
* **env**: ``value``, ``$(VAR)`` expansion, the Downward API fields, Secret and ConfigMap
  keys;
* **images**: the registry's image runs its console scripts from this virtualenv (``python``
  is this interpreter); a ``redis`` image runs Debian's redis-server bound to the pod's
  address. Other images cannot run here and fail the pod;
* **lifecycle**: a changed pod template replaces the pods (Recreate); scaling starts or
  stops replicas; a deleted Deployment stops its pods with SIGTERM, then SIGKILL after the
  grace period; a container that exits is restarted (``restarts`` counts it);
* **Pod objects**: each pod is also written to the API (Pending: no scheduler runs, and it
  lists only each container's name and image), so ``metadata.uid`` is a real object's uid and
  an ownerReference to the pod holds; the object is deleted once its processes have stopped,
  and the real garbage collector then removes what the pod owned, as on a cluster;
* **probes**: readiness is the container's httpGet or tcpSocket probe against the pod's
  address (an exec probe counts as a TCP check of the container's first port).

"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from agent_registry import kubeapi
from agent_registry.kubeapi import paths
from agent_registry.kubeapi.sync import SyncApi
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.process import ManagedProcess

POD_NETWORK = "127.0.77."
NODE_NAME = "local-kubelet"
# The console scripts of the registry image, and the module each runs, for a virtualenv
# that does not have a script yet (an editable install made before it was added).
CONSOLE_SCRIPTS = {
    "agent-registry-operator": "agent_registry.controller",
    "agent-registry-facade": "agent_registry.facade",
    "agent-sidecar": "agent_sidecar",
}
MAX_GRACE_SECONDS = 15.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_POD_SELF = re.compile(r"(?<![\w.-])(0\.0\.0\.0|127\.0\.0\.1|localhost)(?![\w.-])")


class PodStartError(RuntimeError):
    """A container of this pod cannot run here (unknown image, unresolvable env)."""


@dataclasses.dataclass
class Container:
    name: str
    process: ManagedProcess
    spec: dict[str, Any]
    restarts: int = 0
    started_at: float = dataclasses.field(default_factory=time.monotonic)


@dataclasses.dataclass
class LocalPod:
    namespace: str
    name: str
    deployment: str
    ip: str
    uid: str
    workdir: Path
    template_hash: str
    grace_seconds: float
    containers: list[Container] = dataclasses.field(default_factory=list)

    @property
    def restarts(self) -> int:
        return sum(c.restarts for c in self.containers)

    def container(self, name: str) -> Container:
        for container in self.containers:
            if container.name == name:
                return container
        raise KeyError(f"pod {self.name} has no container {name}")

    def logs(self, container: str | None = None) -> str:
        chosen = [c for c in self.containers if container in (None, c.name)]
        return "\n".join(f"--- {self.name}/{c.name}\n{c.process.log_tail(400)}" for c in chosen)

    def ready(self) -> bool:
        return all(c.process.running and _probe_ok(self.ip, c.spec) for c in self.containers)

    def stop(self) -> None:
        for container in self.containers:
            if container.process.pid:
                # A stopped (SIGSTOP) container must still be able to act on SIGTERM.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(container.process.pid, signal.SIGCONT)
        threads = [
            threading.Thread(target=c.process.stop, args=(self.grace_seconds,), daemon=True) for c in self.containers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


class LocalKubelet:
    """``with LocalKubelet(controlplane, workdir): ...``: runs the cluster's Deployments until stopped."""

    def __init__(self, controlplane: LocalControlPlane, workdir: Path, period: float = 0.3) -> None:
        self.controlplane = controlplane
        self.workdir = workdir
        self.period = period
        self.pods: dict[tuple[str, str], list[LocalPod]] = {}
        self.errors: list[str] = []
        self._ips: dict[tuple[str, str, int], str] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="local-kubelet", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> LocalKubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        with self._lock:
            stop_all([pod for pods in self.pods.values() for pod in pods])
            self.pods.clear()

    # -- queries -----------------------------------------------------------------------------

    def pods_of(self, namespace: str, deployment: str) -> list[LocalPod]:
        with self._lock:
            return list(self.pods.get((namespace, deployment), []))

    def all_pods(self) -> list[LocalPod]:
        with self._lock:
            return [pod for pods in self.pods.values() for pod in pods]

    def service_address(self, namespace: str, service: str, port: int | str) -> tuple[str, int]:
        """Where a Service's port leads: the first replica's address and the container port."""
        with self.controlplane.admin_api() as api:
            svc = api.request("GET", f"/api/v1/namespaces/{namespace}/services/{service}")
            target = self._service_target(api, namespace, svc)
        if target is None:
            raise LookupError(f"no Deployment matches the selector of service {namespace}/{service}")
        deployment, template = target
        for entry in svc["spec"]["ports"]:
            if port in (entry.get("port"), entry.get("name")):
                return self._ip(namespace, deployment, 0), _container_port(
                    template, entry.get("targetPort", entry["port"])
                )
        raise LookupError(f"service {namespace}/{service} has no port {port}")

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        with self.controlplane.admin_api() as api:
            while not self._stop.is_set():
                try:
                    self._reconcile(api)
                except Exception as error:  # keep running: the API server may be restarting
                    self._note(f"reconcile failed: {type(error).__name__}: {error}")
                self._stop.wait(self.period)

    def _note(self, message: str) -> None:
        if not self.errors or self.errors[-1] != message:
            self.errors.append(message)
        print(f"[local-kubelet] {message}", file=sys.stderr, flush=True)

    def _reconcile(self, api: SyncApi) -> None:
        wanted: dict[tuple[str, str], dict[str, Any]] = {}
        for deployment in api.list("/apis/apps/v1/deployments"):
            meta = deployment["metadata"]
            if not meta.get("deletionTimestamp"):
                wanted[(meta["namespace"], meta["name"])] = deployment
        with self._lock:
            for key in [k for k in self.pods if k not in wanted]:
                remove_all(api, self.pods.pop(key))
        for key, deployment in wanted.items():
            self._sync_deployment(api, key, deployment)
        with self._lock:
            for pod in self.all_pods():
                self._restart_exited(pod)

    def _sync_deployment(self, api: SyncApi, key: tuple[str, str], deployment: dict[str, Any]) -> None:
        template = deployment["spec"]["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        replicas = int(deployment["spec"].get("replicas", 1))
        with self._lock:
            pods = self.pods.setdefault(key, [])
            outdated = [pod for pod in pods if pod.template_hash != digest]
            surplus = [pod for pod in pods if pod not in outdated][replicas:]
            for pod in outdated + surplus:
                pods.remove(pod)
            # Recreate: old pods stop (together, as a rollout would) before new ones start.
            remove_all(api, outdated + surplus)
            for index in range(len(pods), replicas):
                name = f"{key[1]}-{digest[:5]}-{index}"
                try:
                    pods.append(self._start_pod(api, key, name, index, template, digest))
                except PodStartError as error:
                    self._note(f"pod {key[0]}/{name} cannot start: {error}")
                    break

    def _restart_exited(self, pod: LocalPod) -> None:
        for container in pod.containers:
            # Back off like the kubelet's CrashLoopBackOff, on a shorter scale.
            backoff = min(2.0**container.restarts, 10.0)
            if not container.process.running and time.monotonic() - container.started_at > backoff:
                container.restarts += 1
                container.started_at = time.monotonic()
                self._note(
                    f"{pod.name}/{container.name} exited with code {container.process.returncode}; restarting "
                    f"(restart {container.restarts}); log tail:\n{container.process.log_tail(15)}"
                )
                container.process.start()

    # -- starting a pod ----------------------------------------------------------------------

    def _ip(self, namespace: str, deployment: str, index: int) -> str:
        with self._lock:
            key = (namespace, deployment, index)
            if key not in self._ips:
                if len(self._ips) >= 250:
                    raise PodStartError("out of pod addresses")
                self._ips[key] = f"{POD_NETWORK}{len(self._ips) + 2}"
            return self._ips[key]

    def _start_pod(
        self, api: SyncApi, key: tuple[str, str], name: str, index: int, template: dict[str, Any], digest: str
    ) -> LocalPod:
        namespace, deployment = key
        spec = template["spec"]
        workdir = self.workdir / namespace / name
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        pod = LocalPod(
            namespace=namespace,
            name=name,
            deployment=deployment,
            ip=self._ip(namespace, deployment, index),
            uid=_write_pod_object(api, namespace, name, template),
            workdir=workdir,
            template_hash=digest,
            grace_seconds=min(float(spec.get("terminationGracePeriodSeconds", 30)), MAX_GRACE_SECONDS),
        )
        kubeconfig = None
        if spec.get("automountServiceAccountToken", True):
            kubeconfig = self._service_account_kubeconfig(
                api, namespace, spec.get("serviceAccountName", "default"), workdir
            )
        volumes = {v["name"]: workdir / "volumes" / v["name"] for v in spec.get("volumes", [])}
        services = self._service_hosts(api, namespace)
        try:
            for container_spec in spec["containers"]:
                argv = self._argv(container_spec, pod, volumes, services)
                env = self._env(api, container_spec, pod, spec, kubeconfig, services)
                for mount in container_spec.get("volumeMounts", []):
                    volumes[mount["name"]].mkdir(parents=True, exist_ok=True)
                process = ManagedProcess(
                    f"{name}/{container_spec['name']}",
                    argv,
                    workdir / f"{container_spec['name']}.log",
                    env=env,
                    stop_grace_seconds=pod.grace_seconds,
                )
                process.start()
                pod.containers.append(Container(container_spec["name"], process, container_spec))
        except BaseException:
            remove_all(api, [pod])
            raise
        return pod

    def _service_account_kubeconfig(self, api: SyncApi, namespace: str, account: str, workdir: Path) -> Path:
        try:
            issued = api.create(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 7200}},
            )
        except kubeapi.StatusError as error:
            raise PodStartError(f"no token for serviceaccount {namespace}/{account}: {error}") from None
        cp = self.controlplane
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "cluster",
                    "cluster": {
                        "server": cp.server,
                        "certificate-authority-data": base64.b64encode(cp.ca_file.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": account, "user": {"token": issued["status"]["token"]}}],
            "contexts": [{"name": "pod", "context": {"cluster": "cluster", "user": account, "namespace": namespace}}],
            "current-context": "pod",
        }
        path = workdir / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _service_target(
        self, api: SyncApi, namespace: str, service: dict[str, Any]
    ) -> tuple[str, dict[str, Any]] | None:
        selector = service["spec"].get("selector") or {}
        if not selector:
            return None
        for deployment in api.list(f"/apis/apps/v1/namespaces/{namespace}/deployments"):
            labels = deployment["spec"]["template"]["metadata"].get("labels", {})
            if all(labels.get(k) == v for k, v in selector.items()):
                return deployment["metadata"]["name"], deployment["spec"]["template"]
        return None

    def _service_hosts(self, api: SyncApi, namespace: str) -> list[tuple[re.Pattern[str], str]]:
        """(pattern of a Service's DNS names, address of its first replica), for rewriting env and args."""
        rewrites = []
        for service in api.list("/api/v1/services"):
            target = self._service_target(api, service["metadata"]["namespace"], service)
            if target is None:
                continue
            name, svc_ns = service["metadata"]["name"], service["metadata"]["namespace"]
            address = self._ip(svc_ns, target[0], 0)
            suffix = (
                r"(\.svc(\.cluster\.local)?)?"
                if svc_ns != namespace
                else rf"(\.{re.escape(svc_ns)}(\.svc(\.cluster\.local)?)?)?"
            )
            head = rf"{re.escape(name)}\.{re.escape(svc_ns)}" if svc_ns != namespace else re.escape(name)
            rewrites.append((re.compile(rf"(?<![\w.-]){head}{suffix}(?=[:/]|$)"), address))
        return rewrites

    def _rewrite(self, value: str, pod: LocalPod, services: list[tuple[re.Pattern[str], str]]) -> str:
        # The pod's own addresses: all of them, and its loopback (shared by its containers).
        value = _POD_SELF.sub(pod.ip, value)
        for pattern, address in services:
            value = pattern.sub(address, value)
        return value

    def _argv(
        self,
        container: dict[str, Any],
        pod: LocalPod,
        volumes: dict[str, Path],
        services: list[tuple[re.Pattern[str], str]],
    ) -> list[str]:
        command = list(container.get("command") or [])
        args = list(container.get("args") or [])
        if not command:
            raise PodStartError(f"container {container['name']} relies on the image's entrypoint; name a command")
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}

        def local(arg: str) -> str:
            for path, directory in mounts.items():
                if arg == path or arg.startswith(path + "/"):
                    return str(directory) + arg[len(path) :]
            return self._rewrite(arg, pod, services)

        image = container["image"]
        if _is_redis(image):
            server = shutil.which("redis-server")
            if server is None:
                raise PodStartError("redis-server is not installed")
            return [server, *[local(a) for a in [*command[1:], *args]], "--bind", pod.ip, "--daemonize", "no"]
        program = command[0]
        bin_dir = Path(sys.executable).parent
        if program == "python":
            head = [sys.executable]
        elif (bin_dir / program).exists():
            head = [str(bin_dir / program)]
        elif program in CONSOLE_SCRIPTS:
            head = [sys.executable, "-m", CONSOLE_SCRIPTS[program]]
        else:
            raise PodStartError(f"cannot run {program!r} of image {image} here")
        return head + [local(a) for a in [*command[1:], *args]]

    def _env(
        self,
        api: SyncApi,
        container: dict[str, Any],
        pod: LocalPod,
        pod_spec: dict[str, Any],
        kubeconfig: Path | None,
        services: list[tuple[re.Pattern[str], str]],
    ) -> dict[str, str]:
        env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(pod.workdir),
            "HOSTNAME": pod.name,
            "PYTHONUNBUFFERED": "1",
            "LANG": "C.UTF-8",
        }
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        fields = {
            "metadata.name": pod.name,
            "metadata.namespace": pod.namespace,
            "metadata.uid": pod.uid,
            "status.podIP": pod.ip,
            "status.hostIP": "127.0.0.1",
            "spec.nodeName": NODE_NAME,
            "spec.serviceAccountName": pod_spec.get("serviceAccountName", "default"),
        }
        for source in container.get("envFrom", []):
            prefix = source.get("prefix", "")
            for kind, ref in (("configmaps", source.get("configMapRef")), ("secrets", source.get("secretRef"))):
                if ref:
                    env.update(
                        {prefix + k: v for k, v in self._read_keys(api, pod.namespace, kind, ref["name"]).items()}
                    )
        for entry in container.get("env", []):
            if "value" in entry:
                value = _expand(str(entry["value"]), env)
            elif "valueFrom" in entry:
                value = self._value_from(api, pod.namespace, entry["valueFrom"], fields)
            else:
                value = ""
            env[entry["name"]] = self._rewrite(value, pod, services)
        return env

    def _value_from(self, api: SyncApi, namespace: str, source: dict[str, Any], fields: dict[str, str]) -> str:
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if path not in fields:
                raise PodStartError(f"unsupported fieldRef {path}")
            return fields[path]
        for kind, key in (("secrets", "secretKeyRef"), ("configmaps", "configMapKeyRef")):
            if key in source:
                ref = source[key]
                data = self._read_keys(api, namespace, kind, ref["name"])
                if ref["key"] not in data:
                    raise PodStartError(f"{kind} {namespace}/{ref['name']} has no key {ref['key']}")
                return data[ref["key"]]
        raise PodStartError(f"unsupported valueFrom {source}")

    def _read_keys(self, api: SyncApi, namespace: str, kind: str, name: str) -> dict[str, str]:
        body = api.get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
        if body is None:
            raise PodStartError(f"{kind} {namespace}/{name} not found")
        data = body.get("data") or {}
        if kind == "secrets":
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        return dict(data)


def stop_all(pods: list[LocalPod]) -> None:
    threads = [threading.Thread(target=pod.stop, daemon=True) for pod in pods]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def remove_all(api: SyncApi, pods: list[LocalPod]) -> None:
    """Stop the pods' processes, then delete their Pod objects, in a kubelet's order: a
    sidecar deregisters on SIGTERM first, the garbage collector takes what is left after."""
    stop_all(pods)
    for pod in pods:
        with contextlib.suppress(kubeapi.NotFound):
            # No kubelet confirms the deletion of an unscheduled pod: no grace period to wait.
            api.delete(paths.pods(pod.namespace, pod.name), {"gracePeriodSeconds": 0})


def _write_pod_object(api: SyncApi, namespace: str, name: str, template: dict[str, Any]) -> str:
    """Create the pod's Pod object (replacing a leftover of the same name); returns its uid."""
    spec = template["spec"]
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": template["metadata"].get("labels", {})},
        "spec": {
            "serviceAccountName": spec.get("serviceAccountName", "default"),
            "automountServiceAccountToken": False,
            "containers": [{"name": c["name"], "image": c["image"]} for c in spec["containers"]],
        },
    }
    path = paths.pods(namespace, name)
    with contextlib.suppress(kubeapi.NotFound):
        api.delete(path, {"gracePeriodSeconds": 0})
    return str(api.create(paths.pods(namespace), body)["metadata"]["uid"])


def _is_redis(image: str) -> bool:
    repository = image.split("@", maxsplit=1)[0].rsplit(":", 1)[0] if "/" in image or ":" in image else image
    return repository.rsplit("/", 1)[-1] == "redis"


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion from earlier variables; ``$$`` escapes."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        value,
    )


def _container_port(template: dict[str, Any], target: int | str) -> int:
    if isinstance(target, int):
        return target
    for container in template["spec"]["containers"]:
        for port in container.get("ports", []):
            if port.get("name") == target:
                return int(port["containerPort"])
    raise LookupError(f"no container port named {target}")


def _probe_ok(ip: str, container: dict[str, Any]) -> bool:
    probe = container.get("readinessProbe")
    if not probe:
        return True
    if "httpGet" in probe:
        get = probe["httpGet"]
        port = _named_port(container, get["port"])
        try:
            with _OPENER.open(f"http://{ip}:{port}{get.get('path', '/')}", timeout=2) as response:
                return 200 <= int(response.status) < 400
        except (urllib.error.URLError, OSError, ValueError):
            return False
    port = _named_port(container, probe["tcpSocket"]["port"]) if "tcpSocket" in probe else None
    if port is None:
        ports = container.get("ports") or []
        if not ports:
            return True
        port = int(ports[0]["containerPort"])
    try:
        with socket.create_connection((ip, port), timeout=2):
            return True
    except OSError:
        return False


def _named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for entry in container.get("ports", []):
        if entry.get("name") == port:
            return int(entry["containerPort"])
    raise LookupError(f"container {container['name']} has no port named {port}")


def wait_ready(kubelet: LocalKubelet, namespace: str, deployment: str, replicas: int, timeout: float = 60.0) -> None:
    """Until ``replicas`` pods of the Deployment are ready (probes pass)."""
    deadline = time.monotonic() + timeout
    while True:
        pods = kubelet.pods_of(namespace, deployment)
        if len(pods) == replicas and all(pod.ready() for pod in pods):
            return
        if time.monotonic() > deadline:
            logs = "\n".join(pod.logs() for pod in pods)
            raise AssertionError(
                f"{namespace}/{deployment}: {sum(p.ready() for p in pods)}/{replicas} pods ready after {timeout:.0f}s; "
                f"kubelet notes: {kubelet.errors[-5:]}\n{logs[-6000:]}"
            )
        time.sleep(0.2)
