"""The system under test, as child processes on loopback: kube-apiserver + etcd, Redis, the
operator and the HTTP facade, with the settings a production install uses unless a
benchmark parameter says otherwise.

The control plane and Redis are the ones the tests use (``agent_registry.localcluster``);
the operator and the facade are started by its launcher, as ``python -m ...`` like in a
pod, each with its own log file in the work directory. Clients authenticate as one ServiceAccount with a
Role on agents and leases, the way a sidecar does.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from agent_registry import kubeapi
from agent_registry.kubeapi import paths
from agent_registry.kubeapi.sync import SyncApi
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import FacadeProcess, OperatorProcess
from agent_registry.localcluster.process import ManagedProcess
from agent_registry.localcluster.redis_server import LocalRedis
from bench.procs import Sampler

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "crds"
KEY_PREFIX = "bench"
CLIENT_ACCOUNT = "bench-client"
OPERATOR_LEASE = "agent-registry-operator"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_API_COUNTERS = (
    "apiserver_request_total{",
    "apiserver_watch_events_total{",
    "apiserver_flowcontrol_dispatched_requests_total{",
)
# The garbage collector's resource discovery period (30 s, fixed in kube-controller-manager),
# plus the time its new informers take to list what exists.
GC_DISCOVERY_SECONDS = 40.0


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def http_get(url: str, timeout: float = 5.0, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    """GET without proxies; (0, reason) when nothing answers."""
    opener = _NO_PROXY
    if context is not None:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (OSError, ValueError) as error:
        return 0, str(error)


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format, as (name, labels, value) rows."""
    rows = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _METRIC_LINE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        try:
            rows.append((match.group(1), labels, float(match.group(3))))
        except ValueError:
            continue
    return rows


def metric_sum(rows: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    return sum(v for n, lab, v in rows if n == name and all(lab.get(k) == x for k, x in labels.items()))


class Stack:
    """``Stack(namespace, sampler).start()``; ``close()`` stops everything, newest first."""

    def __init__(
        self,
        namespace: str,
        sampler: Sampler,
        *,
        facade_auth: bool = True,
        sweep_seconds: float = 5.0,
        keep_logs: bool = False,
    ) -> None:
        self.namespace = namespace
        self.sampler = sampler
        self.facade_auth = facade_auth
        self.sweep_seconds = sweep_seconds
        self.keep_logs = keep_logs
        self.workdir = Path(tempfile.mkdtemp(prefix="agent-registry-bench-"))
        self.cp: LocalControlPlane | None = None
        self.redis: LocalRedis | None = None
        self.operator: OperatorProcess | None = None
        self.facade: FacadeProcess | None = None
        self.token = ""
        self.crds_applied_at = 0.0
        self._operator_starts = 0

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Stack:
        self.cp = LocalControlPlane().start()
        self.cp.apply_crds(CRD_DIR)
        self.crds_applied_at = time.monotonic()
        self.cp.create_namespace(self.namespace)
        self.redis = LocalRedis().start()
        for name, pid in self.cp.pids.items():
            self.sampler.watch(name, pid)
        self.sampler.watch("redis", self.redis.pid)
        self.token = self._client_token()
        return self

    def close(self) -> None:
        for name, process in (("facade", self.facade), ("operator", self.operator)):
            if process is not None:
                process.stop()
                self.sampler.watch(name, None)
        if self.redis is not None:
            self.redis.close()
        if self.cp is not None:
            self.cp.stop()
        if self.keep_logs:
            progress(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- what clients need ----------------------------------------------------------------

    @property
    def controlplane(self) -> LocalControlPlane:
        assert self.cp is not None, "start() first"
        return self.cp

    @property
    def api_url(self) -> str:
        return self.controlplane.server

    @property
    def facade_url(self) -> str:
        assert self.facade is not None, "start_facade() first"
        return self.facade.url

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    def api_ssl_context(self) -> ssl.SSLContext:
        """Trusts the API server; authentication is the bearer token."""
        return ssl.create_default_context(cafile=str(self.controlplane.ca_file))

    def admin(self) -> SyncApi:
        return self.controlplane.admin_api()

    def _client_token(self) -> str:
        """A ServiceAccount token with what a sidecar, an orchestrator and a kubelet need here."""
        ns = self.namespace
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": CLIENT_ACCOUNT, "namespace": ns},
            "rules": [
                {
                    "apiGroups": ["registry.optiinfra.io"],
                    "resources": ["agents", "agents/status"],
                    "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"],
                },
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"],
                },
            ],
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": CLIENT_ACCOUNT, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CLIENT_ACCOUNT},
            "subjects": [{"kind": "ServiceAccount", "name": CLIENT_ACCOUNT, "namespace": ns}],
        }
        account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": CLIENT_ACCOUNT, "namespace": ns}}
        with self.admin() as api:
            api.create(f"/api/v1/namespaces/{ns}/serviceaccounts", account)
            api.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles", role)
            api.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", binding)
            request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
            issued = api.create(f"/api/v1/namespaces/{ns}/serviceaccounts/{CLIENT_ACCOUNT}/token", request)
        token = str(issued["status"]["token"])
        # RBAC reaches the authorizer through an informer: wait until the binding counts.
        connection = kubeapi.Connection.direct(self.api_url, self.api_ssl_context(), token=token)
        deadline = time.monotonic() + 30
        with SyncApi(connection) as as_client:
            while True:
                try:
                    as_client.request("GET", paths.agents(ns), params={"limit": "1"})
                    return token
                except kubeapi.Forbidden as refused:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the bench ServiceAccount is still refused after 30 s: {refused}") from None
                time.sleep(0.2)

    # --- the operator -----------------------------------------------------------------------

    def start_operator(self) -> OperatorProcess:
        """Start the operator (production settings, leader election on); :meth:`wait_operator` waits for it.

        Call it on the main thread (see ``process.py``: only then does the kernel kill the
        child if this process dies), then :meth:`wait_operator`, which may run in a thread.
        """
        self._operator_starts += 1
        process = OperatorProcess(
            self.workdir / "logs",
            kubeconfig=self.controlplane.kubeconfig,
            redis_url=self.redis_url,
            namespaces=[self.namespace],
            redis_key_prefix=KEY_PREFIX,
            # Room for a graceful exit at N = 10,000, which the benchmark times.
            stop_grace_seconds=35,
            leader_election=True,
            lease_namespace=self.namespace,
            lease_name=OPERATOR_LEASE,
            identity=f"bench-{socket.gethostname()}-{self._operator_starts}",
            sweep_interval_seconds=self.sweep_seconds,
        ).start(wait=False)
        self.operator = process
        self.sampler.watch("operator", process.pid)
        return process

    def wait_operator(self) -> None:
        assert self.operator is not None
        self.operator.wait_ready()

    @property
    def operator_metrics_url(self) -> str:
        assert self.operator is not None, "start_operator() first"
        return self.operator.metrics_url

    def stop_operator(self) -> float:
        """SIGTERM and time the graceful exit."""
        assert self.operator is not None
        started = time.monotonic()
        self.operator.stop()
        self.sampler.watch("operator", None)
        self.operator = None
        return time.monotonic() - started

    def operator_metrics(self) -> list[tuple[str, dict[str, str], float]]:
        status, text = http_get(self.operator_metrics_url)
        if status != 200:
            raise RuntimeError(f"operator metrics: HTTP {status}: {text[:200]}")
        return parse_metrics(text)

    # --- the facade ---------------------------------------------------------------------------

    def start_facade(self, settings: dict[str, str] | None = None) -> FacadeProcess:
        """Start the facade; ``settings`` are extra ones by field name (``--facade-setting``)."""
        process = FacadeProcess(
            self.workdir / "logs",
            kubeconfig=self.controlplane.kubeconfig,
            redis_url=self.redis_url,
            namespace=self.namespace,
            redis_key_prefix=KEY_PREFIX,
            auth=self.facade_auth,
            **(settings or {}),
        ).start(wait=False)
        self.facade = process
        self.sampler.watch("facade", process.pid)
        return process

    def wait_facade(self) -> None:
        assert self.facade is not None
        self.facade.wait_ready()

    def stop_facade(self) -> None:
        if self.facade is not None:
            self.facade.stop()
            self.sampler.watch("facade", None)
            self.facade = None

    def facade_metrics(self) -> list[tuple[str, dict[str, str], float]]:
        if self.facade is None:
            return []
        status, text = http_get(self.facade.metrics_url)
        return parse_metrics(text) if status == 200 else []

    # --- the garbage collector --------------------------------------------------------------------

    def wait_gc_watches_crds(self) -> float:
        """Wait until kube-controller-manager's garbage collector watches the CRDs' resources
        (it looks for new resources every 30 s; the CRDs came after it started); seconds waited.

        A dependent created before that names an owner the collector has not seen: it checks
        each such owner with a GET, at most 10 per second (its queue's rate limit), so 3,000
        Leases created too early cost 5 minutes of GETs that are no cost of a heartbeat."""
        if "kube-controller-manager" not in self.controlplane.pids:
            return 0.0
        left = self.crds_applied_at + GC_DISCOVERY_SECONDS - time.monotonic()
        if left > 0:
            time.sleep(left)
        return max(0.0, left)

    # --- the API server's own count --------------------------------------------------------------

    def apiserver_requests(self) -> dict[str, float]:
        """Requests the API server has answered, by verb and resource (``apiserver_request_total``,
        e.g. ``"PATCH leases"``), watch events it has sent, by kind (``"WATCH-EVENT leases"``),
        and requests by flow schema, i.e. by kind of client (``"FLOW exempt"``: the operator and
        the facade, as admins here; ``"FLOW service-accounts"``: the load generator;
        ``"FLOW kube-system-service-accounts"``: the garbage collector): the difference over
        a phase says what each heartbeat made the API server do, and for whom."""
        status, text = http_get(f"{self.api_url}/metrics", timeout=10, context=self.controlplane.admin_ssl_context())
        if status != 200:
            return {}
        wanted = [line for line in text.splitlines() if line.startswith(_API_COUNTERS)]
        counts: dict[str, float] = {}
        for name, labels, value in parse_metrics("\n".join(wanted)):
            if name == "apiserver_request_total":
                resource = labels.get("resource") or "(non-resource)"
                if labels.get("subresource"):
                    resource += "/" + labels["subresource"]
                key = f"{labels.get('verb', '')} {resource}"
            elif name == "apiserver_watch_events_total":
                key = f"WATCH-EVENT {labels.get('kind') or labels.get('resource') or ''}"
            elif name == "apiserver_flowcontrol_dispatched_requests_total":
                key = f"FLOW {labels.get('flow_schema', '')}"
            else:
                continue
            counts[key] = counts.get(key, 0.0) + value
        return counts

    # --- etcd -----------------------------------------------------------------------------------

    def etcd_figures(self) -> dict[str, float]:
        """etcd's size and write volume, from its /metrics on the client URL and the db file."""
        status, text = http_get(f"{self.controlplane.etcd_url}/metrics")
        rows = parse_metrics(text) if status == 200 else []
        db_file = self.controlplane.workdir / "etcd" / "member" / "snap" / "db"
        return {
            "db_total_size_bytes": metric_sum(rows, "etcd_mvcc_db_total_size_in_bytes"),
            "db_in_use_bytes": metric_sum(rows, "etcd_mvcc_db_total_size_in_use_in_bytes"),
            "grpc_received_bytes": metric_sum(rows, "etcd_network_client_grpc_received_bytes_total"),
            "grpc_sent_bytes": metric_sum(rows, "etcd_network_client_grpc_sent_bytes_total"),
            "puts": metric_sum(rows, "etcd_mvcc_put_total"),
            # A compaction (the API server asks for one every 5 minutes) frees space: growth
            # measured across one is not growth per write.
            "compact_revision": metric_sum(rows, "etcd_debugging_mvcc_compact_revision"),
            "current_revision": metric_sum(rows, "etcd_debugging_mvcc_current_revision"),
            "db_file_bytes": float(db_file.stat().st_size) if db_file.exists() else 0.0,
        }


def log_tail(process: ManagedProcess | None, lines: int = 30) -> str:
    return process.log_tail(lines) if process is not None else ""


__all__ = ["Stack", "http_get", "log_tail", "metric_sum", "parse_metrics", "progress"]
