"""Where the API server is and how to authenticate to it: one precedence for every process.

1. an explicit kubeconfig (a setting of the process, or a test's);
2. the in-cluster service account (its token file exists and the kubelet's
   ``KUBERNETES_SERVICE_HOST`` is set): in a pod, the pod's own identity wins even when
   ``KUBECONFIG`` is set, so RBAC is what the chart grants;
3. the first file named by ``$KUBECONFIG``;
4. ``~/.kube/config``.

The in-cluster account and kubeconfigs with certificates or tokens (the local control
plane's, most clusters') are read here without any client library, so the sidecar never
imports one. A kubeconfig user that needs an exec plugin or an auth-provider is handed to
the ``kubernetes`` package's loader, which implements those; it is imported only then.
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import functools
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_TOKEN_REREAD_SECONDS = 10.0
"""Bound service account tokens rotate (the kubelet rewrites the file); re-read it this often."""


class ConfigError(Exception):
    """No usable credentials; the message says what was tried."""


@dataclasses.dataclass(frozen=True)
class Source:
    kubeconfig: Path | None = None
    service_account_dir: Path | None = None

    def __str__(self) -> str:
        if self.service_account_dir is not None:
            return f"service account {self.service_account_dir}"
        return f"kubeconfig {self.kubeconfig}"


def resolve(
    explicit: Path | None = None,
    env: Mapping[str, str] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> Source:
    """Pick the credentials by the precedence above; raise ConfigError naming what was tried."""
    env = os.environ if env is None else env
    if explicit is not None:
        if not Path(explicit).expanduser().is_file():
            raise ConfigError(f"kubeconfig {explicit}: no such file")
        return Source(kubeconfig=Path(explicit).expanduser())
    if (service_account_dir / "token").is_file() and env.get("KUBERNETES_SERVICE_HOST"):
        if not env.get("KUBERNETES_SERVICE_PORT"):
            raise ConfigError("KUBERNETES_SERVICE_PORT: required with KUBERNETES_SERVICE_HOST (the kubelet sets both)")
        return Source(service_account_dir=service_account_dir)
    named = env.get("KUBECONFIG", "")
    first = next((part for part in named.split(os.pathsep) if part), "")
    path = Path(first or "~/.kube/config").expanduser()
    if path.is_file():
        return Source(kubeconfig=path)
    tried = f"$KUBECONFIG ({first})" if first else "~/.kube/config"
    raise ConfigError(
        f"no Kubernetes credentials: no service account token in {service_account_dir} "
        f"with KUBERNETES_SERVICE_HOST set, and {tried} is not a file"
    )


@dataclasses.dataclass(frozen=True)
class Material:
    ca_file: Path | None = None
    ca_data: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


class Connection:
    """The API server's URL, a TLS context for it, and the Authorization header to send."""

    def __init__(
        self,
        server: str,
        context: ssl.SSLContext,
        token: str | None = None,
        token_file: Path | None = None,
        refresher: Any = None,
        namespace: str | None = None,
        material: Material | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.context = context
        self.namespace = namespace
        self.material = material or Material()
        """What the TLS context was built from, for clients that take files (kopf's watch)."""
        """The namespace the credentials belong to (in-cluster) or name (kubeconfig context)."""
        self._token = token
        self._token_file = token_file
        self._token_read_at = 0.0
        self._refresher = refresher
        if token_file is not None:
            self._read_token()

    @property
    def needs_refresh(self) -> bool:
        """Whether ``refresh`` should run before the next call (it may block briefly)."""
        if self._token_file is not None:
            return time.monotonic() - self._token_read_at > _TOKEN_REREAD_SECONDS
        return self._refresher is not None and self._refresher.due()

    def refresh(self) -> None:
        if self._token_file is not None:
            self._read_token()
        elif self._refresher is not None:
            self._token = self._refresher.refresh()

    @property
    def token(self) -> str | None:
        if self._token and self._token.lower().startswith("bearer "):
            return self._token[len("bearer ") :]
        return self._token

    @property
    def refreshes_itself(self) -> bool:
        """Whether tokens come from an exec plugin or auth-provider (only that loader can renew them)."""
        return self._refresher is not None

    def authorization(self) -> str | None:
        if not self._token:
            return None
        return self._token if self._token.lower().startswith("bearer ") else f"Bearer {self._token}"

    def _read_token(self) -> None:
        assert self._token_file is not None
        self._token = self._token_file.read_text().strip()
        self._token_read_at = time.monotonic()

    @classmethod
    def direct(cls, server: str, context: ssl.SSLContext, token: str | None = None) -> Connection:
        """For tooling that already holds a TLS context (the local control plane's admin)."""
        return cls(server, context, token=token)


def connect(source: Source) -> Connection:
    if source.service_account_dir is not None:
        return _in_cluster(source.service_account_dir)
    assert source.kubeconfig is not None
    return _from_kubeconfig(source.kubeconfig)


def load(explicit: Path | None = None) -> Connection:
    """``connect(resolve(explicit))``: what a process needs at start."""
    return connect(resolve(explicit))


def _in_cluster(directory: Path) -> Connection:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 service address
    context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
    namespace_file = directory / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.is_file() else None
    material = Material(ca_file=directory / "ca.crt")
    return Connection(
        f"https://{host}:{port}", context, token_file=directory / "token", namespace=namespace, material=material
    )


def _from_kubeconfig(path: Path) -> Connection:
    document = yaml.safe_load(path.read_text()) or {}
    context_name = document.get("current-context")
    contexts = {c["name"]: c.get("context") or {} for c in document.get("contexts") or []}
    if context_name not in contexts:
        raise ConfigError(f"kubeconfig {path}: current-context {context_name!r} is not among its contexts")
    context = contexts[context_name]
    clusters = {c["name"]: c.get("cluster") or {} for c in document.get("clusters") or []}
    users = {u["name"]: u.get("user") or {} for u in document.get("users") or []}
    cluster = clusters.get(context.get("cluster"))
    if cluster is None or not cluster.get("server"):
        raise ConfigError(f"kubeconfig {path}: context {context_name!r} names no cluster with a server")
    user = users.get(context.get("user"), {})
    if "exec" in user or "auth-provider" in user:
        return _via_kubernetes_loader(path, context.get("namespace"))
    base = path.parent
    material = _material_of(cluster, user, base)
    return Connection(
        str(cluster["server"]),
        _tls_context(material),
        token=user.get("token"),
        token_file=_path(user.get("tokenFile"), base),
        namespace=context.get("namespace"),
        material=material,
    )


def _material_of(cluster: Mapping[str, Any], user: Mapping[str, Any], base: Path) -> Material:
    ca_data = cluster.get("certificate-authority-data")
    return Material(
        ca_file=None if ca_data else _path(cluster.get("certificate-authority"), base),
        ca_data=base64.b64decode(ca_data).decode() if ca_data else None,
        cert_file=_file(user, "client-certificate", base),
        key_file=_file(user, "client-key", base),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


def _tls_context(material: Material) -> ssl.SSLContext:
    if material.ca_data:
        tls = ssl.create_default_context(cadata=material.ca_data)
    elif material.ca_file:
        tls = ssl.create_default_context(cafile=str(material.ca_file))
    else:
        tls = ssl.create_default_context()
    if material.insecure:
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    if material.cert_file is not None:
        tls.load_cert_chain(str(material.cert_file), str(material.key_file) if material.key_file else None)
    return tls


def _path(value: str | None, base: Path) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _file(user: Mapping[str, Any], field: str, base: Path) -> Path | None:
    """A certificate or key as a file: Python's ssl loads client certificates only from files."""
    if user.get(f"{field}-data"):
        return _private_file(base64.b64decode(user[f"{field}-data"]))
    return _path(user.get(field), base)


@functools.cache
def _private_dir() -> Path:
    """One directory only this user can read, removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="agent-registry-kube-"))
    atexit.register(shutil.rmtree, directory, True)
    return directory


def _private_file(content: bytes) -> Path:
    handle, name = tempfile.mkstemp(dir=_private_dir())
    with os.fdopen(handle, "wb") as file:
        file.write(content)
    return Path(name)


class _KubernetesRefresher:
    """Tokens from exec plugins and auth-providers, through the ``kubernetes`` package's loader."""

    def __init__(self, configuration: Any) -> None:
        self.configuration = configuration
        self._refreshed_at = time.monotonic()

    def due(self) -> bool:
        return self.configuration.refresh_api_key_hook is not None and time.monotonic() - self._refreshed_at > 10.0

    def refresh(self) -> str | None:
        self._refreshed_at = time.monotonic()
        hook = self.configuration.refresh_api_key_hook
        if hook is not None:
            hook(self.configuration)
        return self.token()

    def token(self) -> str | None:
        keys = self.configuration.api_key
        value = keys.get("BearerToken") or keys.get("authorization")
        return str(value) if value else None


def _via_kubernetes_loader(path: Path, namespace: str | None) -> Connection:
    # Imported here, not at the top: the package costs tens of MB, and only exec plugins
    # and auth-providers need it (never the sidecar in a pod).
    from kubernetes import client as kclient  # noqa: PLC0415
    from kubernetes import config as kconfig  # noqa: PLC0415

    configuration = kclient.Configuration()
    kconfig.load_kube_config(config_file=str(path), client_configuration=configuration)
    material = Material(
        ca_file=_path(configuration.ssl_ca_cert, path.parent),
        cert_file=_path(configuration.cert_file, path.parent),
        key_file=_path(configuration.key_file, path.parent),
        insecure=not configuration.verify_ssl,
    )
    refresher = _KubernetesRefresher(configuration)
    return Connection(
        str(configuration.host),
        _tls_context(material),
        token=refresher.token(),
        refresher=refresher,
        namespace=namespace,
        material=material,
    )
