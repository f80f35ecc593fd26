"""A real kube-apiserver, etcd and kube-controller-manager on loopback.

kube-apiserver and etcd run the way controller-runtime's envtest runs them. The
controller-manager runs two controllers only, the garbage collector and the namespace
controller; there is no scheduler, kubelet or other controller: objects are stored,
validated, authorised, watched and garbage-collected for real, but nothing else reconciles
them. Consequences:

* owner references work as in a real cluster: an Agent owned by a Pod goes when the Pod
  goes, a Lease owned by an Agent when the Agent goes;
* the ServiceAccount admission plugin is off (it would wait for a token controller that
  does not run), and namespaces get no ``default`` ServiceAccount on their own;
* a deleted namespace is emptied and finalised by the namespace controller. That waits,
  as it should, for every finalizer to be released, which an operator stopped by a test
  never does; :meth:`LocalControlPlane.delete_namespace` therefore does the job itself, at
  once, finalizers included, so test namespaces are gone before the next test starts and no
  objects (or operator timers on them) pile up over a session.

Usable outside pytest: ``python -m agent_registry.localcluster`` and ``make run`` reuse it.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import yaml

from agent_registry import kubeapi
from agent_registry.kubeapi import paths
from agent_registry.kubeapi.sync import SyncApi
from agent_registry.localcluster.build import Binaries, ensure_built
from agent_registry.localcluster.namespaces import purge_namespace
from agent_registry.localcluster.pki import CONTROLLER_MANAGER_USER, PkiFiles, generate_pki
from agent_registry.localcluster.process import LOOPBACK, ManagedProcess, ProcessExitedError, free_port, log

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"
# Its first address, 10.0.0.1, is the "kubernetes" Service; pki.SERVICE_IP puts it in the serving cert.
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
# Set to keep the work directory (logs, etcd data, certificates) after stop(), for debugging.
KEEP_WORKDIR_ENV = "AGENT_REGISTRY_KEEP_WORKDIR"
_PORT_ATTEMPTS = 3
_ADMIN_TIMEOUT_SECONDS = 30.0
# Only the controllers the tests need, each running as its own kube-system ServiceAccount
# (--use-service-account-credentials), the identities a kubeadm cluster gives them; the
# chart's ownerRestriction.overrideSubjects names generic-garbage-collector.
# - garbage-collector-controller: ownerReferences are how an Agent goes with its Pod and a
#   Lease with its Agent; without it, tests of that would be tests of nothing.
# - namespace-controller: deleting a namespace then completes as in a real cluster for
#   whoever deletes it (kubectl, the e2e scenarios' clean-up, `make run` users), and the
#   owner rule's exemption for a namespace being deleted is used by the identity it was
#   written for. delete_namespace() still empties the namespace itself (the controller would
#   wait forever on the finalizers of a stopped operator); the two race harmlessly, since
#   either one's delete of something already gone ends in 404 or 409, which both accept.
# Everything else (token, ServiceAccount, workload, node controllers) stays off: nothing in
# the tests needs it, and each would add watches and CPU on a two-core machine.
CONTROLLERS = ("garbage-collector-controller", "namespace-controller")
_T = TypeVar("_T")


class KubectlError(subprocess.CalledProcessError):
    """A kubectl command failed; unlike its base class, the message includes kubectl's stderr."""

    def __str__(self) -> str:
        stderr = (self.stderr or "").strip()
        return f"{super().__str__()}\n{stderr}" if stderr else super().__str__()


class LocalControlPlane:
    """kube-apiserver + etcd + kube-controller-manager in a temporary directory, with an admin kubeconfig.

    ``with LocalControlPlane() as cp: cp.kubectl("get", "ns")``
    """

    def __init__(self, startup_timeout: float = 120.0) -> None:
        self.startup_timeout = startup_timeout
        self._binaries: Binaries | None = None
        self._workdir: Path | None = None
        self._pki: PkiFiles | None = None
        self._etcd: ManagedProcess | None = None
        self._apiserver: ManagedProcess | None = None
        self._controller_manager: ManagedProcess | None = None
        self._etcd_client_port = 0
        self._apiserver_port = 0
        self._controller_manager_port = 0
        self._last_readyz = "no answer yet"
        self._admin: SyncApi | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalControlPlane:
        if self._workdir is not None:
            raise RuntimeError("this LocalControlPlane was already started; create a new one")
        started = time.monotonic()
        self._binaries = ensure_built()
        self._workdir = Path(tempfile.mkdtemp(prefix="agent-registry-controlplane-"))
        atexit.register(self.stop)
        log(f"starting etcd, kube-apiserver and kube-controller-manager on {LOOPBACK} in {self._workdir}")
        try:
            self._pki = generate_pki(self._workdir / "pki")
            self._etcd = self._start_on_free_ports(self._new_etcd, self._wait_etcd_healthy)
            log(f"etcd up at {self.etcd_url} after {time.monotonic() - started:.1f}s")
            self._apiserver = self._start_on_free_ports(self._new_apiserver, self._wait_apiserver_ready)
            self._write_kubeconfigs()
            log(f"kube-apiserver ready at {self.server} after {time.monotonic() - started:.1f}s")
            self._controller_manager = self._start_on_free_ports(
                self._new_controller_manager, self._wait_controller_manager_healthy
            )
        except BaseException:
            self.stop()
            raise
        log(f"kube-controller-manager up after {time.monotonic() - started:.1f}s")
        return self

    def stop(self) -> None:
        """Stop the servers and remove the work directory. Safe to call more than once."""
        atexit.unregister(self.stop)
        if self._admin is not None:
            self._admin.close()
        # Clients before servers, so none spends its last seconds retrying a vanished one.
        for process in (self._controller_manager, self._apiserver, self._etcd):
            if process is not None:
                process.stop()
        if self._workdir is not None and self._workdir.exists():
            if os.environ.get(KEEP_WORKDIR_ENV):
                log(f"keeping {self._workdir} because {KEEP_WORKDIR_ENV} is set")
            else:
                shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> LocalControlPlane:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop_apiserver(self) -> None:
        self._require(self._apiserver).stop()

    def start_apiserver(self) -> None:
        """Start the API server again on the same port, against the same etcd."""
        apiserver = self._require(self._apiserver)
        apiserver.start()
        self._wait_apiserver_ready(apiserver)

    def stop_etcd(self) -> None:
        self._require(self._etcd).stop()

    def start_etcd(self) -> None:
        """Start etcd again on the same ports and data; wait until the API server is ready again too."""
        etcd = self._require(self._etcd)
        etcd.start()
        self._wait_etcd_healthy(etcd)
        if self._apiserver is not None and self._apiserver.running:
            self._wait_apiserver_ready(self._apiserver)

    def stop_controller_manager(self) -> None:
        self._require(self._controller_manager).stop()

    def start_controller_manager(self) -> None:
        """Start kube-controller-manager again on the same port; it rebuilds its view from the API server."""
        controller_manager = self._require(self._controller_manager)
        controller_manager.start()
        self._wait_controller_manager_healthy(controller_manager)

    def pause(self, component: str) -> None:
        """SIGSTOP ``"kube-apiserver"``, ``"etcd"`` or ``"kube-controller-manager"``: connections
        stay open, nothing answers."""
        self._component(component).pause()

    def resume(self, component: str) -> None:
        self._component(component).resume()

    def _component(self, component: str) -> ManagedProcess:
        self._require(self._workdir)
        processes = {p.name: p for p in self._processes}
        if component not in processes:
            raise ValueError(f"component must be one of {sorted(processes)}, not {component!r}")
        return processes[component]

    def ensure_running(self) -> None:
        """Start whichever server a fault test left stopped or paused, etcd first."""
        for process in self._processes:
            process.resume()
        if not self._require(self._etcd).running:
            self.start_etcd()
        if not self._require(self._apiserver).running:
            self.start_apiserver()
        if not self._require(self._controller_manager).running:
            self.start_controller_manager()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the API server's /readyz says ok."""
        self._wait_apiserver_ready(self._require(self._apiserver), timeout)

    # -- what clients need -------------------------------------------------------------------

    @property
    def binaries(self) -> Binaries:
        return self._require(self._binaries)

    @property
    def workdir(self) -> Path:
        return self._require(self._workdir)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self._apiserver_port}"

    @property
    def apiserver_port(self) -> int:
        return self._apiserver_port

    @property
    def etcd_url(self) -> str:
        return f"http://{LOOPBACK}:{self._etcd_client_port}"

    @property
    def ca_file(self) -> Path:
        return self._require(self._pki).ca_cert

    @property
    def admin_cert_file(self) -> Path:
        return self._require(self._pki).admin_cert

    @property
    def admin_key_file(self) -> Path:
        return self._require(self._pki).admin_key

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the servers that are running now."""
        return {p.name: p.pid for p in self._processes if p.running and p.pid}

    @property
    def log_files(self) -> dict[str, Path]:
        return {p.name: p.log_path for p in self._processes}

    def admin_ssl_context(self) -> ssl.SSLContext:
        """TLS settings that trust the API server and authenticate as the cluster admin."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.admin_cert_file), str(self.admin_key_file))
        return context

    # -- kubectl -----------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl as the admin; raises :class:`KubectlError` on failure if ``check``."""
        command = [
            str(self.binaries.kubectl),
            f"--kubeconfig={self.kubeconfig}",
            # Discovery cache per control plane: ports are reused, schemas are not.
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, command, result.stdout, result.stderr)
        return result

    def apply_crds(self, directory: Path, timeout: float = 60.0) -> list[str]:
        """Apply every YAML/JSON file in ``directory`` and wait until each CRD is Established.

        Returns the names of the CRDs found.
        """
        if not any(p.suffix in (".yaml", ".yml", ".json") for p in directory.iterdir()):
            raise FileNotFoundError(f"no YAML or JSON files in {directory}")
        # Server-side apply: large CRD schemas overflow client-side apply's annotation.
        applied = self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(directory), "-o", "name")
        prefix = "customresourcedefinition.apiextensions.k8s.io/"
        crds = [line.removeprefix(prefix) for line in applied.stdout.split() if line.startswith(prefix)]
        for name in crds:
            waited = self.kubectl(
                "wait", "--for=condition=Established", f"--timeout={timeout:.0f}s", f"crd/{name}", check=False
            )
            if waited.returncode != 0:
                conditions = self.kubectl("get", f"crd/{name}", "-o", "jsonpath={.status.conditions}", check=False)
                raise TimeoutError(
                    f"CRD {name} not Established within {timeout:.0f}s: {waited.stderr.strip()}; "
                    f"conditions: {conditions.stdout or conditions.stderr}"
                )
        return crds

    def create_namespace(self, name: str) -> str:
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        self._api.create(paths.NAMESPACES, namespace)
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace and everything in it, doing the absent namespace controller's job.

        Objects held by finalizers lose them, so nothing lingers; see :mod:`.namespaces`.
        """
        purge_namespace(self._api, name)

    def admin_api(self) -> SyncApi:
        """A new client of the API server authenticated as the admin (by its client certificate)."""
        # Emptying a namespace of many objects is one slow delete-collection call per type.
        return SyncApi(kubeapi.Connection.direct(self.server, self.admin_ssl_context()), timeout=_ADMIN_TIMEOUT_SECONDS)

    # -- internals ---------------------------------------------------------------------------

    @property
    def _processes(self) -> list[ManagedProcess]:
        """The servers started so far, in start order."""
        return [p for p in (self._etcd, self._apiserver, self._controller_manager) if p is not None]

    @property
    def _api(self) -> SyncApi:
        if self._admin is None:
            self._admin = self.admin_api()
        return self._admin

    @staticmethod
    def _require(value: _T | None) -> _T:
        if value is None:
            raise RuntimeError("the local control plane is not started")
        return value

    def _start_on_free_ports(
        self, make: Callable[[], ManagedProcess], wait: Callable[[ManagedProcess], None]
    ) -> ManagedProcess:
        """Start a server on freshly picked ports, picking again if another process took one first."""
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            process = make()
            process.start()
            try:
                wait(process)
            except ProcessExitedError:
                process.stop()
                if attempt == _PORT_ATTEMPTS or not process.failed_to_bind():
                    raise
                log(f"{process.name}: port taken meanwhile, retrying on other ports")
                continue
            except BaseException:
                process.stop()
                raise
            return process
        raise AssertionError("unreachable")

    def _new_etcd(self) -> ManagedProcess:
        self._etcd_client_port = free_port()
        peer_url = f"http://{LOOPBACK}:{free_port()}"
        argv = [
            str(self.binaries.etcd),
            "--name=default",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            # Throwaway data: skipping fsync makes every write, and so every test, faster.
            "--unsafe-no-fsync",
        ]
        # On SIGTERM etcd waits about 7 s for the API server's watch streams to end. Killing it
        # sooner loses nothing: every acknowledged write is already in the WAL (page cache).
        return ManagedProcess("etcd", argv, self.workdir / "logs" / "etcd.log", stop_grace_seconds=1.0)

    def _wait_etcd_healthy(self, etcd: ManagedProcess) -> None:
        def healthy() -> bool:
            status, body = _http_get(f"{self.etcd_url}/health", None)
            return status == 200 and json.loads(body).get("health") == "true"

        etcd.wait_until(healthy, self.startup_timeout, "/health reports healthy")

    def _new_apiserver(self) -> ManagedProcess:
        pki = self._require(self._pki)
        self._apiserver_port = free_port()
        argv = [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self._apiserver_port}",
            f"--advertise-address={LOOPBACK}",
            f"--cert-dir={self.workdir / 'apiserver'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            # TokenRequest (`kubectl create token`) signs with the private key; TokenReview and
            # request authentication verify with the public key, for tokens bound to the issuer's audience.
            f"--service-account-key-file={pki.service_account_public_key}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            # Would hold every pod until a token controller makes a token; the controller-manager runs none.
            "--disable-admission-plugins=ServiceAccount",
        ]
        return ManagedProcess("kube-apiserver", argv, self.workdir / "logs" / "kube-apiserver.log")

    def _wait_apiserver_ready(self, apiserver: ManagedProcess, timeout: float | None = None) -> None:
        context = self.admin_ssl_context()

        def ready() -> bool:
            status, body = _http_get(f"{self.server}/readyz", context)
            self._last_readyz = f"HTTP {status}: {body.strip()[-300:]}" if status else body
            return status == 200 and body.strip() == "ok"

        try:
            apiserver.wait_until(ready, timeout or self.startup_timeout, "/readyz says ok")
        except TimeoutError as error:
            verbose = _http_get(f"{self.server}/readyz?verbose", context)[1]
            raise TimeoutError(f"{error}\nlast /readyz: {self._last_readyz}\n/readyz?verbose:\n{verbose}") from None

    @property
    def _controller_manager_kubeconfig(self) -> Path:
        return self.workdir / "kube-controller-manager.kubeconfig"

    def _new_controller_manager(self) -> ManagedProcess:
        self._controller_manager_port = free_port()
        argv = [
            str(self.binaries.kube_controller_manager),
            f"--kubeconfig={self._controller_manager_kubeconfig}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self._controller_manager_port}",
            f"--controllers={','.join(CONTROLLERS)}",
            "--use-service-account-credentials=true",
            # One instance, started and stopped by us: nothing to elect, and no Lease to wait out after a restart.
            "--leader-elect=false",
        ]
        # Nothing but the probe below calls its server, on /healthz, which needs no
        # authentication: no --authentication-kubeconfig or --authorization-kubeconfig, and
        # the serving certificate it makes for itself in memory will do.
        return ManagedProcess("kube-controller-manager", argv, self.workdir / "logs" / "kube-controller-manager.log")

    def _wait_controller_manager_healthy(self, controller_manager: ManagedProcess) -> None:
        # Its certificate is self-signed, and the question is only whether it is up.
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE

        def healthy() -> bool:
            status, body = _http_get(f"https://{LOOPBACK}:{self._controller_manager_port}/healthz", unverified)
            return status == 200 and body.strip() == "ok"

        controller_manager.wait_until(healthy, self.startup_timeout, "/healthz says ok")

    def _write_kubeconfigs(self) -> None:
        pki = self._require(self._pki)
        self._write_kubeconfig(self.kubeconfig, "admin", pki.admin_cert, pki.admin_key)
        self._write_kubeconfig(
            self._controller_manager_kubeconfig,
            CONTROLLER_MANAGER_USER,
            pki.controller_manager_cert,
            pki.controller_manager_key,
        )

    def _write_kubeconfig(self, path: Path, user: str, cert: Path, key: Path) -> None:
        pki = self._require(self._pki)

        def b64(file: Path) -> str:
            return base64.b64encode(file.read_bytes()).decode()

        # Credentials are embedded so the file works on its own for kubectl, kopf and client libraries.
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "local", "cluster": {"server": self.server, "certificate-authority-data": b64(pki.ca_cert)}}
            ],
            "users": [{"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)


_NO_PROXY = urllib.request.ProxyHandler({})


def _http_get(url: str, context: ssl.SSLContext | None) -> tuple[int, str]:
    """GET without proxies; (0, reason) when nothing answers yet."""
    handlers: list[urllib.request.BaseHandler] = [_NO_PROXY]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=5) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (OSError, ValueError) as error:
        return 0, f"no answer: {error}"
