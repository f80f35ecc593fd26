"""Build kube-apiserver, kube-controller-manager, kubectl, etcd and helm from their Go modules into a cache.

Neither Docker nor prebuilt downloads exist on the build machines, so the local control
plane is compiled from source through the Go module proxy, once, into a cache directory
outside the repository keyed by the versions. A second run finds the binaries and does
nothing; a cache that lacks one of them (a tool added since it was filled) builds only that
one.

The same way, and each into a directory of its own keyed by its versions, come what a kind
node runs besides the control plane (kubelet, kubeadm, kube-scheduler, kube-proxy, CoreDNS,
crictl and a pause program: :func:`ensure_node_built`) and the kind CLI
(:func:`ensure_kind_built`), because no registry or release download is reachable either.

``go install k8s.io/kubernetes/cmd/kube-apiserver@vX`` fails because the kubernetes
module points its staging modules at ``./staging/...`` with ``replace`` lines, which the
go command ignores outside the main module. So each tool gets a tiny wrapper module whose
own ``replace`` lines pin every staging module to the matching published ``v0.Y.Z``.

Run as ``python -m agent_registry.localcluster.build``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

KUBERNETES_VERSION = "v1.34.4"
# Kubernetes 1.34 is tested against etcd 3.6; take the newest 3.6 patch release.
ETCD_VERSION = "v3.6.16"
# Helm 3.19 is built against the Kubernetes 1.34 client libraries.
HELM_VERSION = "v3.19.5"
# What kubeadm v1.34 deploys (its constants.CoreDNSVersion), so its Corefile handling fits.
COREDNS_VERSION = "v1.12.1"
# crictl follows the Kubernetes minor it speaks CRI with; kind's `load` runs it in the node.
CRICTL_VERSION = "v1.34.0"
KIND_VERSION = "v0.33.0"
# Our own pause program (below); bump when its source changes. The tag the node's image
# carries is the one kubeadm expects, kind.PAUSE_TAG.
PAUSE_REVISION = 1

BuildStep = Callable[[tuple[Path, ...], dict[str, str], Path], None]
"""Builds the given targets (``*.partial`` first, then renamed) with a Go env in a scratch dir."""


@dataclasses.dataclass(frozen=True)
class Binaries:
    """Paths of the built control-plane tools."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    etcd: Path
    helm: Path


def cache_root() -> Path:
    """Where builds are kept: outside the repository so clean clones reuse them."""
    configured = os.environ.get("AGENT_REGISTRY_CACHE")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "agent-registry"


def bin_dir() -> Path:
    key = f"k8s-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_helm-{HELM_VERSION}"
    return cache_root() / "controlplane" / key / "bin"


def binaries() -> Binaries:
    d = bin_dir()
    return Binaries(
        kube_apiserver=d / "kube-apiserver",
        kube_controller_manager=d / "kube-controller-manager",
        kubectl=d / "kubectl",
        etcd=d / "etcd",
        helm=d / "helm",
    )


@dataclasses.dataclass(frozen=True)
class NodeBinaries:
    """Paths of what a kind node needs beyond :class:`Binaries`."""

    kubelet: Path
    kubeadm: Path
    kube_scheduler: Path
    kube_proxy: Path
    coredns: Path
    crictl: Path
    pause: Path


def node_bin_dir() -> Path:
    key = f"k8s-{KUBERNETES_VERSION}_coredns-{COREDNS_VERSION}_crictl-{CRICTL_VERSION}_pause-r{PAUSE_REVISION}"
    return cache_root() / "node" / key / "bin"


def node_binaries() -> NodeBinaries:
    d = node_bin_dir()
    return NodeBinaries(
        kubelet=d / "kubelet",
        kubeadm=d / "kubeadm",
        kube_scheduler=d / "kube-scheduler",
        kube_proxy=d / "kube-proxy",
        coredns=d / "coredns",
        crictl=d / "crictl",
        pause=d / "pause",
    )


def kind_binary() -> Path:
    return cache_root() / "kind" / f"kind-{KIND_VERSION}" / "bin" / "kind"


def _log(message: str) -> None:
    print(f"[controlplane] {message}", file=sys.stderr, flush=True)


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    _log("$ " + " ".join(cmd))
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=cwd, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"command failed with exit code {result.returncode}: {' '.join(cmd)}")
    _log(f"  done in {time.monotonic() - started:.0f}s")


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-buildvcs=false")
    env["CGO_ENABLED"] = "0"
    return env


def _staging_modules(kubernetes_gomod: str) -> list[str]:
    """The module paths that k8s.io/kubernetes replaces with its ./staging copies."""
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", kubernetes_gomod, re.M)))


def _download_gomod(module: str, version: str, env: dict[str, str], workdir: Path) -> str:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Path(json.loads(out)["GoMod"]).read_text()


def _write_wrapper(
    workdir: Path, module: str, requires: list[tuple[str, str]], replaces: list[tuple[str, str]], imports: list[str]
) -> None:
    lines = [f"module {module}", "", "go 1.24.0", ""]
    lines += [f"require {path} {version}" for path, version in requires]
    lines.append("")
    lines += [f"replace {path} => {path} {version}" for path, version in replaces]
    (workdir / "go.mod").write_text("\n".join(lines) + "\n")
    # A file importing the commands keeps `go mod tidy` from dropping the requirements.
    body = "\n".join(f'\t_ "{imp}"' for imp in imports)
    (workdir / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{body}\n)\n")


def _kubernetes_ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    build_date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={build_date}",
        ]
    return "-s -w " + " ".join(flags)


def _build_kubernetes(targets: tuple[Path, ...], env: dict[str, str], scratch: Path) -> None:
    """Each target is named after its command in ``k8s.io/kubernetes/cmd/``; all come from one wrapper."""
    work = scratch / "kubernetes"
    work.mkdir()
    staging = _staging_modules(_download_gomod("k8s.io/kubernetes", KUBERNETES_VERSION, env, work))
    staging_version = "v0." + KUBERNETES_VERSION.split(".", 1)[1]
    commands = [f"k8s.io/kubernetes/cmd/{target.name}" for target in targets]
    _write_wrapper(
        work,
        "agentregistry.local/kubernetes-tools",
        [("k8s.io/kubernetes", KUBERNETES_VERSION)],
        [(m, staging_version) for m in staging],
        commands,
    )
    _run(["go", "mod", "tidy"], work, env)
    ldflags = _kubernetes_ldflags()
    for target, command in zip(targets, commands, strict=True):
        tmp = target.with_suffix(".partial")
        _run(["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), command], work, env)
        tmp.rename(target)


def _module_command(module: str, version: str, package: str, ldflags: str = "-s -w") -> BuildStep:
    """A step building one command of a Go module whose ``go.mod`` has no ``replace`` lines."""

    def build(targets: tuple[Path, ...], env: dict[str, str], scratch: Path) -> None:
        (target,) = targets
        work = scratch / target.name
        work.mkdir()
        _write_wrapper(work, f"agentregistry.local/{target.name}-tools", [(module, version)], [], [package])
        _run(["go", "mod", "tidy"], work, env)
        tmp = target.with_suffix(".partial")
        _run(["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), package], work, env)
        tmp.rename(target)

    return build


_build_etcd = _module_command("go.etcd.io/etcd/server/v3", ETCD_VERSION, "go.etcd.io/etcd/server/v3")
_build_helm = _module_command(
    "helm.sh/helm/v3",
    HELM_VERSION,
    "helm.sh/helm/v3/cmd/helm",
    f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
)
_build_coredns = _module_command(
    "github.com/coredns/coredns",
    COREDNS_VERSION,
    "github.com/coredns/coredns",
    f"-s -w -X github.com/coredns/coredns/coremain.GitCommit={COREDNS_VERSION}",
)
_build_crictl = _module_command(
    "sigs.k8s.io/cri-tools",
    CRICTL_VERSION,
    "sigs.k8s.io/cri-tools/cmd/crictl",
    f"-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version={CRICTL_VERSION}",
)
_build_kind = _module_command("sigs.k8s.io/kind", KIND_VERSION, "sigs.k8s.io/kind")

# The process that holds a pod's namespaces, as registry.k8s.io/pause does: it sleeps until
# told to stop and, being PID 1 of pods that share their PID namespace, reaps orphans.
_PAUSE_SOURCE = """\
package main

import (
\t"os"
\t"os/signal"
\t"syscall"
)

func main() {
\tsignals := make(chan os.Signal, 16)
\tsignal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
\tfor sig := range signals {
\t\tif sig != syscall.SIGCHLD {
\t\t\tos.Exit(0)
\t\t}
\t\tfor {
\t\t\tpid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
\t\t\tif pid <= 0 || err != nil {
\t\t\t\tbreak
\t\t\t}
\t\t}
\t}
}
"""


def _build_pause(targets: tuple[Path, ...], env: dict[str, str], scratch: Path) -> None:
    (target,) = targets
    work = scratch / "pause"
    work.mkdir()
    (work / "go.mod").write_text("module agentregistry.local/pause\n\ngo 1.24.0\n")
    (work / "main.go").write_text(_PAUSE_SOURCE)
    tmp = target.with_suffix(".partial")
    _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "."], work, env)
    tmp.rename(target)


def _ensure(directory: Path, steps: Iterable[tuple[tuple[Path, ...], BuildStep, str]], force: bool) -> None:
    """Run each step whose targets are (partly) missing; a step builds only its missing targets."""
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.which("go") is None:
        raise RuntimeError("the go command is not on PATH; it is needed to build the Kubernetes tools")
    env = _go_env()
    for targets, build, version in steps:
        missing = targets if force else tuple(t for t in targets if not t.exists())
        if not missing:
            continue
        label = f"{_and(t.name for t in missing)} {version}"
        _log(f"building {label} into {directory} (first run only; takes several minutes)")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="agent-registry-build-") as scratch:
            build(missing, env, Path(scratch))
        _log(f"built {label} in {time.monotonic() - started:.0f}s")


def ensure_built(force: bool = False) -> Binaries:
    """Build whatever is missing from the cache and return the binaries' paths."""
    out = binaries()
    steps = (
        ((out.kube_apiserver, out.kube_controller_manager, out.kubectl), _build_kubernetes, KUBERNETES_VERSION),
        ((out.etcd,), _build_etcd, ETCD_VERSION),
        ((out.helm,), _build_helm, HELM_VERSION),
    )
    _ensure(bin_dir(), steps, force)
    return out


def ensure_node_built(force: bool = False) -> NodeBinaries:
    """The kind node's own binaries (see :class:`NodeBinaries`), building what the cache lacks."""
    out = node_binaries()
    steps = (
        ((out.kubelet, out.kubeadm, out.kube_scheduler, out.kube_proxy), _build_kubernetes, KUBERNETES_VERSION),
        ((out.coredns,), _build_coredns, COREDNS_VERSION),
        ((out.crictl,), _build_crictl, CRICTL_VERSION),
        ((out.pause,), _build_pause, f"r{PAUSE_REVISION}"),
    )
    _ensure(node_bin_dir(), steps, force)
    return out


def ensure_kind_built(force: bool = False) -> Path:
    """The kind CLI, built from its Go module unless the cache has it."""
    out = kind_binary()
    _ensure(out.parent, (((out,), _build_kind, KIND_VERSION),), force)
    return out


def _and(names: Iterable[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    *rest, last = names
    return f"{', '.join(rest)} and {last}" if rest else last


def versions(found: Binaries) -> dict[str, str]:
    """First line of each tool's own version output, to prove what was built."""
    commands = {
        "kube-apiserver": [str(found.kube_apiserver), "--version"],
        "kube-controller-manager": [str(found.kube_controller_manager), "--version"],
        "kubectl": [str(found.kubectl), "version", "--client"],
        "etcd": [str(found.etcd), "--version"],
        "helm": [str(found.helm), "version", "--short"],
    }
    result = {}
    for name, cmd in commands.items():
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        # etcd logs a JSON line to stderr before its version; prefer the line naming it.
        lines = (out.stdout + "\n" + out.stderr).strip().splitlines()
        named = [line for line in lines if "version" in line.lower() and not line.startswith("{")]
        result[name] = (named or lines or ["?"])[0]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument("--print-bin-dir", action="store_true", help="print the cache directory and exit")
    parser.add_argument(
        "--kind", action="store_true", help="also build the kind CLI and what a kind node runs (kubelet, kubeadm, ...)"
    )
    args = parser.parse_args(argv)
    if args.print_bin_dir:
        print(bin_dir())
        return 0
    started = time.monotonic()
    found = ensure_built(force=args.force)
    for name, version in versions(found).items():
        _log(f"{name}: {version}")
    _log(f"control plane ready in {time.monotonic() - started:.0f}s at {bin_dir()}")
    if args.kind:
        ensure_node_built(force=args.force)
        ensure_kind_built(force=args.force)
        _log(f"kind node binaries at {node_bin_dir()}, kind at {kind_binary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
