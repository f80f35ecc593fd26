"""A throwaway kind cluster on this machine, with every image built here.

``kind build node-image`` pulls its base image and the images a node preloads (pause,
etcd, CoreDNS, kindnetd, local-path-provisioner) from registries, and no registry is
reachable from the build machines. So the node image is put together here, the way that
command does it, from parts built locally:

* the Debian base of :mod:`images`, plus Debian's ``systemd``, ``containerd``, ``runc`` and
  ``containernetworking-plugins``;
* the node's boot and service files from kind's own module (``images/base/files`` of
  ``sigs.k8s.io/kind`` at the CLI's version, which the CLI's build already downloaded):
  its entrypoint, which prepares cgroups, mounts and DNS inside the container, and the
  kubelet unit with its kubeadm drop-ins;
* kubelet, kubeadm, kubectl and crictl in ``/usr/bin`` (:mod:`build`), and the control
  plane's component images (kube-apiserver, kube-controller-manager, kube-scheduler,
  kube-proxy, etcd, CoreDNS, pause) built from the same binaries and imported into the
  node's containerd under the names kubeadm asks for;
* a containerd configuration for Debian's containerd 1.6 (kind's is for containerd 2), a
  plain bridge CNI in place of kindnetd (which cannot be pulled) and a StorageClass for
  the kube-controller-manager's host-path provisioner in place of local-path-provisioner.

Inside the node, containerd meets what dockerd met on this machine (see :mod:`docker`):
the bounding set lacks a capability such as CAP_SYS_RESOURCE. containerd's privileged
mode asks only for the capabilities it has, but a pod that adds the missing one
(``capabilities.add``) fails with "unable to apply caps: operation not permitted". So the
node's containerd runs runc through the same wrapper as our dockerd; for the same reason
it clamps pods' ``oom_score_adj`` to its own (lowering it needs CAP_SYS_RESOURCE).

The node image is tagged by a hash of its recipe, the versions of what goes in and the
base image, so an unchanged checkout finds it and builds nothing. Clusters are created and
deleted with the kind CLI driven from here (:class:`KindCluster`); their kubeconfig is a
file under the cache, never ``~/.kube/config``.

Run as ``python -m agent_registry.localcluster.kind`` to build everything and smoke-test a
cluster (a node Ready, a pod of the project image Running, the cluster deleted).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from agent_registry.localcluster import build
from agent_registry.localcluster.docker import (
    DockerUnavailableError,
    Engine,
    LocalDocker,
    missing_capabilities,
    runtime_wrapper,
)
from agent_registry.localcluster.images import (
    BuildReport,
    ImageBuildError,
    ensure_debian_base,
    ensure_images,
    run_logged,
)
from agent_registry.localcluster.process import log

# Bump when the recipe below changes in a way its text does not show (it is hashed too).
NODE_REVISION = 1
NODE_REPOSITORY = "agent-registry.local/kind-node"
# Where the component images live in our Docker engine; inside the node they carry
# kubeadm's names instead (never tagged so in Docker, where they could shadow real ones).
COMPONENT_REPOSITORY = "agent-registry.local/kind-node-images"
KUBEADM_REGISTRY = "registry.k8s.io"
# kubeadm v1.34's constants.PauseVersion; containerd's sandbox image must be the same.
PAUSE_TAG = "3.10.1"
# kubeadm v1.34 would run etcd 3.6.5-0; ours is build.ETCD_VERSION, so the cluster
# configuration names its tag (etcd.local.imageTag) rather than the image lying about it.
ETCD_TAG = build.ETCD_VERSION.removeprefix("v") + "-0"
POD_SUBNET = "10.244.0.0/16"
# A single node gets the first /24 of the pod subnet from kube-controller-manager;
# host-local hands out addresses from exactly that.
NODE_POD_RANGE = "10.244.0.0/24"
NODE_PACKAGES = (
    "systemd", "containerd", "runc", "containernetworking-plugins",
    "conntrack", "iptables", "nftables", "iproute2", "ethtool", "util-linux", "mount", "kmod",
    "libseccomp2", "pigz", "bash", "ca-certificates", "curl", "jq", "procps",
    # the runc wrapper is a Python script
    "python3",
)  # fmt: skip
# Files of kind's node image that fit ours as they are (relative to images/base/files).
# Not taken: kind's containerd.service and config.toml (for containerd 2 in /usr/local),
# and the hook script of its containerd base spec, which ours does without.
KIND_FILES = (
    "usr/local/bin/entrypoint",
    "kind/bin/create-kubelet-cgroup-v2.sh",
    "kind/bin/undo-mount-hacks.sh",
    "etc/crictl.yaml",
    "etc/default/kubelet",
    "etc/sysctl.d/10-network-magic.conf",
    "etc/sysctl.d/10-network-security.conf",
    "etc/systemd/system/kubelet.service",
    "etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
    "etc/systemd/system/kubelet.service.d/11-kind.conf",
    "etc/systemd/system/kubelet.slice",
    "etc/systemd/system/undo-mount-hacks.service",
)
NODE_RUNTIME = "/usr/local/sbin/agent-registry-runc"
# Kernel settings kubelet changes on start (its protectKernelDefaults: false, as in kind):
# put back when our cluster is deleted, since they belong to the whole machine.
KUBELET_SYSCTLS = ("vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops")
# kind mounts it into its nodes with `docker run --volume`, which creates a missing source.
HOST_MODULES = Path("/lib/modules")

_CONTAINERD_CONFIG = f"""\
# Written by agent_registry.localcluster.kind, for Debian's containerd 1.6.
version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{KUBEADM_REGISTRY}/pause:{PAUSE_TAG}"
  # cgroup v1 hosts may lack the hugetlb controller
  tolerate_missing_hugepages_controller = true
  # Lowering a pod's oom_score_adj below containerd's own needs CAP_SYS_RESOURCE, which
  # this machine's bounding set may lack: clamp instead of failing the pod.
  restrict_oom_score_adj = true

[plugins."io.containerd.grpc.v1.cri".containerd]
  # kind's `load docker-image` reads the snapshotter from here
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
  discard_unpacked_layers = true

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  # kind's kubelet uses the systemd cgroup driver
  SystemdCgroup = true
  # runc minus the capabilities the bounding set lacks (agent_registry.localcluster.docker)
  BinaryName = "{NODE_RUNTIME}"

[plugins."io.containerd.grpc.v1.cri".cni]
  # where Debian's containernetworking-plugins puts them
  bin_dir = "/usr/lib/cni"
  conf_dir = "/etc/cni/net.d"
"""

_CNI_CONFIG = {
    "cniVersion": "1.0.0",
    "name": "agent-registry-bridge",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipMasq": True,
            # a pod reaching itself through a Service comes back over the bridge
            "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": NODE_POD_RANGE}]], "routes": [{"dst": "0.0.0.0/0"}]},
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}

# kube-controller-manager runs with --enable-hostpath-provisioner in kind's configuration.
_STORAGE_MANIFEST = """\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/host-path
"""

_IMPORT_SCRIPT = """\
#!/bin/sh
# Written by agent_registry.localcluster.kind: load the component images into the node's
# containerd (k8s.io namespace, where the CRI looks) and give them kubeadm's names.
set -eu
archive=$1
tags=$2
containerd >/tmp/containerd.log 2>&1 &
pid=$!
i=0
until ctr version >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -gt 100 ]; then cat /tmp/containerd.log; exit 1; fi
  sleep 0.1
done
ctr -n k8s.io images import --no-unpack "$archive"
while read -r source target; do
  ctr -n k8s.io images tag --force "$source" "$target"
  ctr -n k8s.io images rm "$source" >/dev/null
done <"$tags"
ctr -n k8s.io images ls -q
kill "$pid"
wait "$pid" || true
rm -rf /tmp/containerd.log /run/containerd
"""


@dataclasses.dataclass(frozen=True)
class Component:
    """One image the node's containerd holds, as built in Docker and as kubeadm names it."""

    name: str
    binary: Path
    kubeadm_ref: str
    dockerfile: str

    @property
    def local_ref(self) -> str:
        """Tagged by its recipe and binary (whose path carries its version), to be rebuilt when they change."""
        digest = hashlib.sha256(f"{self.binary}\0{self.dockerfile}".encode()).hexdigest()[:12]
        return f"{COMPONENT_REPOSITORY}/{self.name}:{self.kubeadm_ref.rsplit(':', 1)[1]}-{digest}"


def _static(name: str, tag: str, binary: Path, entrypoint: str, repository: str | None = None) -> Component:
    """A static Go binary alone, at the path its upstream image has it."""
    dockerfile = (
        f"FROM scratch\nCOPY {binary.name} {entrypoint}\n"
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        f'ENTRYPOINT ["{entrypoint}"]\n'
    )
    return Component(name, binary, f"{KUBEADM_REGISTRY}/{repository or name}:{tag}", dockerfile)


def components(debian_base: str, iptables_mode: str) -> list[Component]:
    control = build.binaries()
    node = build.node_binaries()
    k8s = build.KUBERNETES_VERSION
    # kube-proxy programs the node with iptables binaries of its own image, which must use
    # the same backend as the rules already in the node (Docker's, written by this machine).
    proxy = Component(
        "kube-proxy",
        node.kube_proxy,
        f"{KUBEADM_REGISTRY}/kube-proxy:{k8s}",
        f"FROM {debian_base}\n"
        "RUN apt-get update \\\n"
        " && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables conntrack \\\n"
        " && rm -rf /var/lib/apt/lists/* \\\n"
        f" && update-alternatives --set iptables /usr/sbin/iptables-{iptables_mode} \\\n"
        f" && update-alternatives --set ip6tables /usr/sbin/ip6tables-{iptables_mode}\n"
        "COPY kube-proxy /usr/local/bin/kube-proxy\n"
        'ENTRYPOINT ["/usr/local/bin/kube-proxy"]\n',
    )
    return [
        _static("kube-apiserver", k8s, control.kube_apiserver, "/usr/local/bin/kube-apiserver"),
        _static(
            "kube-controller-manager", k8s, control.kube_controller_manager, "/usr/local/bin/kube-controller-manager"
        ),
        _static("kube-scheduler", k8s, node.kube_scheduler, "/usr/local/bin/kube-scheduler"),
        proxy,
        _static("etcd", ETCD_TAG, control.etcd, "/usr/local/bin/etcd"),
        _static("coredns", build.COREDNS_VERSION, node.coredns, "/coredns", repository="coredns/coredns"),
        _static("pause", PAUSE_TAG, node.pause, "/pause"),
    ]


def iptables_mode() -> str:
    """``nft`` or ``legacy``: the backend of this machine's iptables, which Docker uses."""
    out = subprocess.run(["iptables", "--version"], capture_output=True, text=True, check=False).stdout
    return "legacy" if "legacy" in out else "nft"


def kind_base_files() -> Path:
    """kind's ``images/base/files`` from the Go module cache (the CLI's build fetched the module)."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/kind@{build.KIND_VERSION}"],
        cwd=tempfile.gettempdir(),
        env=build._go_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    files = Path(json.loads(out)["Dir"]) / "images" / "base" / "files"
    missing = [name for name in KIND_FILES if not (files / name).is_file()]
    if missing:
        raise ImageBuildError(f"kind {build.KIND_VERSION}'s module lacks {', '.join(missing)} under {files}")
    return files


def node_dockerfile(debian_base: str) -> str:
    return f"""\
# Written by agent_registry.localcluster.kind: a kind node from local parts.
FROM {debian_base}
# kind's trimming of systemd: units that cannot work in a container (udev, tmpfiles
# setup, getty, ...) are not started; kubelet and containerd are enabled below.
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {" ".join(NODE_PACKAGES)} \\
 && rm -rf /var/lib/apt/lists/* \\
 && find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete \\
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \\
      /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \\
      /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \\
 && echo "ReadKMsg=no" >> /etc/systemd/journald.conf \\
 && ln -sf /usr/lib/systemd/systemd /sbin/init
COPY kind-files/ /
COPY containerd-config.toml /etc/containerd/config.toml
COPY 10-bridge.conflist /etc/cni/net.d/10-bridge.conflist
COPY default-storage.yaml /kind/manifests/default-storage.yaml
COPY agent-registry-runc {NODE_RUNTIME}
COPY bin/ /usr/bin/
RUN chmod 0755 /usr/local/bin/entrypoint /kind/bin/*.sh {NODE_RUNTIME} /usr/bin/kubelet /usr/bin/kubeadm \\
      /usr/bin/kubectl /usr/bin/crictl \\
 && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \\
 && systemctl mask systemd-binfmt.service \\
 && mkdir -p /etc/kubernetes/manifests \\
 && echo "{build.KUBERNETES_VERSION}" > /kind/version
RUN --mount=type=bind,source=.,target=/kind/build \
    sh /kind/build/import-images.sh /kind/build/images.tar /kind/build/tags
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
"""


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _node_recipe(debian_id: str, parts: list[Component], runtime: str, dockerfile: str) -> str:
    """Everything the node image is made of, as text to hash into its tag."""
    pieces = [
        f"revision {NODE_REVISION}",
        f"base {debian_id}",
        f"binaries {build.bin_dir()} {build.node_bin_dir()} kind {build.KIND_VERSION}",
        dockerfile,
        _CONTAINERD_CONFIG,
        json.dumps(_CNI_CONFIG, sort_keys=True),
        _STORAGE_MANIFEST,
        _IMPORT_SCRIPT,
        runtime,
        *(f"{c.kubeadm_ref}\n{c.dockerfile}" for c in parts),
    ]
    return "\n\0".join(pieces)


def ensure_node_image(engine: Engine, report: BuildReport | None = None) -> str:
    """The kind node image for ``build.KUBERNETES_VERSION``, building what is missing."""
    report = report or BuildReport()
    with report.step("go binaries"):
        control = build.ensure_built()
        node = build.ensure_node_built()
        build.ensure_kind_built()
    debian = ensure_debian_base(engine, report)
    parts = components(debian, iptables_mode())
    runtime = runtime_wrapper("/usr/sbin/runc", missing_capabilities(), "/usr/bin/python3")
    dockerfile = node_dockerfile(debian)
    recipe = _node_recipe(engine.image_id(debian), parts, runtime, dockerfile)
    ref = f"{NODE_REPOSITORY}:{build.KUBERNETES_VERSION}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    work = build.cache_root() / "kind"
    work.mkdir(parents=True, exist_ok=True)
    # One build at a time per cache: a second session waits, then finds the image.
    with report.step("node image"), (work / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if engine.image_exists(ref):
            report.cached.add("node image")
            return ref
        with tempfile.TemporaryDirectory(prefix="node-build-", dir=work) as scratch:
            context = Path(scratch)
            _build_components(engine, parts, context / "components", work)
            archive = context / "images.tar"
            log(f"saving {len(parts)} component images for the node")
            run_logged(
                [engine.cli, "save", "-o", str(archive), *(c.local_ref for c in parts)],
                work / "save.log",
                "docker save",
                env=engine.env(),
            )
            (context / "tags").write_text("".join(f"{c.local_ref} {c.kubeadm_ref}\n" for c in parts))
            files = kind_base_files()
            for name in KIND_FILES:
                _link_or_copy(files / name, context / "kind-files" / name)
            (context / "Dockerfile").write_text(dockerfile)
            (context / "containerd-config.toml").write_text(_CONTAINERD_CONFIG)
            (context / "10-bridge.conflist").write_text(json.dumps(_CNI_CONFIG, indent=2) + "\n")
            (context / "default-storage.yaml").write_text(_STORAGE_MANIFEST)
            (context / "import-images.sh").write_text(_IMPORT_SCRIPT)
            (context / "agent-registry-runc").write_text(runtime)
            for binary in (node.kubelet, node.kubeadm, control.kubectl, node.crictl):
                _link_or_copy(binary, context / "bin" / binary.name)
            log(f"building {ref}")
            run_logged(
                [engine.cli, "build", "--progress=plain", "-t", ref, str(context)],
                work / "node-image.log",
                f"docker build {ref}",
                env=engine.env(),
            )
        # The node holds them now; in Docker they would only take space.
        engine.run("rmi", *(part.local_ref for part in parts), check=False)
        _remove_older_tags(engine, ref)
    return ref


def _build_components(engine: Engine, parts: list[Component], context: Path, work: Path) -> None:
    for part in parts:
        if engine.image_exists(part.local_ref):
            continue
        directory = context / part.name
        _link_or_copy(part.binary, directory / part.binary.name)
        (directory / "Dockerfile").write_text(part.dockerfile)
        log(f"building {part.local_ref}")
        run_logged(
            [engine.cli, "build", "--progress=plain", "-t", part.local_ref, str(directory)],
            work / f"{part.name}.log",
            f"docker build {part.local_ref}",
            env=engine.env(),
        )


def _remove_older_tags(engine: Engine, keep: str) -> None:
    """Earlier node images: each recipe change would otherwise leave a gigabyte behind."""
    listed = engine.run("images", NODE_REPOSITORY, "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    older = [ref for ref in listed if ref != keep and not ref.endswith(":<none>")]
    if older:
        engine.run("rmi", *older, check=False)


# -- clusters ------------------------------------------------------------------------------


def cluster_config() -> str:
    """kind's configuration for our node image: a single node, our CNI, this machine's cgroups."""
    return f"""\
# Written by agent_registry.localcluster.kind.
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  # kindnetd cannot be pulled; the node image has a bridge CNI configuration instead
  disableDefaultCNI: true
  podSubnet: "{POD_SUBNET}"
nodes:
  - role: control-plane
kubeadmConfigPatches:
  - |
    kind: ClusterConfiguration
    etcd:
      local:
        imageTag: "{ETCD_TAG}"
  - |
    kind: KubeletConfiguration
    # this machine has cgroup v1: say it is fine, though 1.34's default already does,
    # since newer kubelets refuse cgroup v1 unless told otherwise
    failCgroupV1: false
"""


class KindError(RuntimeError):
    """A kind or kubectl command failed; the message holds its output."""


@dataclasses.dataclass
class KindCluster:
    """One kind cluster, driven through the kind CLI and kubectl on the engine's daemon."""

    name: str
    engine: Engine
    kind: Path = dataclasses.field(default_factory=build.kind_binary)
    kubectl_binary: Path = dataclasses.field(default_factory=lambda: build.binaries().kubectl)

    @property
    def workdir(self) -> Path:
        return build.cache_root() / "kind" / "clusters" / self.name

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def env(self) -> dict[str, str]:
        env = self.engine.env()
        # kind calls `docker` from PATH: make it the CLI that talks to our engine.
        env["PATH"] = os.pathsep.join([str(Path(self.engine.cli).parent), env.get("PATH", os.defpath)])
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def _run(self, argv: list[str], timeout: float, input: str | None = None) -> str:
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, env=self.env(), check=False
        )
        if result.returncode != 0:
            raise KindError(f"{' '.join(argv)} exited with {result.returncode}:\n{result.stderr}{result.stdout}")
        return result.stdout

    def kind_cli(self, *args: str, timeout: float = 600.0) -> str:
        return self._run([str(self.kind), *args], timeout)

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120.0) -> str:
        return self._run([str(self.kubectl_binary), f"--kubeconfig={self.kubeconfig}", *args], timeout, input)

    def exists(self) -> bool:
        return self.name in self.kind_cli("get", "clusters", timeout=60).split()

    def create(self, image: str, config: str | None = None, retain: bool = False) -> None:
        """``kind create cluster``; with ``retain`` a failed node is kept to be looked into."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "kind-config.yaml"
        config_path.write_text(config if config is not None else cluster_config())
        log(f"creating kind cluster {self.name} from {image}")
        args = ["create", "cluster", "--name", self.name, "--image", image, "--config", str(config_path)]
        args += ["--kubeconfig", str(self.kubeconfig), "--verbosity", "1"]
        self.kind_cli(*args, *(["--retain"] if retain else []))

    def delete(self) -> None:
        log(f"deleting kind cluster {self.name}")
        self.kind_cli("delete", "cluster", "--name", self.name, "--kubeconfig", str(self.kubeconfig))

    def load_image(self, *refs: str) -> None:
        """``kind load docker-image``: several at once share one ``docker save`` of their common layers."""
        self.kind_cli("load", "docker-image", "--name", self.name, *refs)

    def wait_node_ready(self, timeout: float = 180.0) -> None:
        self.kubectl(
            "wait", "--for=condition=Ready", "node", "--all", f"--timeout={timeout:.0f}s", timeout=timeout + 30.0
        )

    def node_logs(self) -> str:
        """The node's kubelet and containerd journals, for a report of why a cluster failed."""
        node = f"{self.name}-control-plane"
        out = self.engine.run(
            "exec", node, "journalctl", "--no-pager", "-n", "80", "-u", "kubelet", "-u", "containerd", check=False
        )
        return out.stdout + out.stderr


@dataclasses.dataclass(frozen=True)
class HostState:
    """What a kind cluster changes outside its containers, to be put back when it is gone."""

    sysctls: dict[str, str]
    modules_missing: bool

    @classmethod
    def capture(cls) -> HostState:
        sysctls = {}
        for name in KUBELET_SYSCTLS:
            with contextlib.suppress(OSError):
                sysctls[name] = Path("/proc/sys", *name.split(".")).read_text().strip()
        return cls(sysctls, not HOST_MODULES.exists())

    def restore(self) -> list[str]:
        """Undo what changed; a description of each thing undone."""
        undone = []
        for name, value in self.sysctls.items():
            path = Path("/proc/sys", *name.split("."))
            with contextlib.suppress(OSError):
                if path.read_text().strip() != value:
                    path.write_text(value)
                    undone.append(f"{name}={value}")
        if self.modules_missing and HOST_MODULES.is_dir():
            # only while empty: another cluster of ours may still be using it
            with contextlib.suppress(OSError):
                HOST_MODULES.rmdir()
                undone.append(f"removed the empty {HOST_MODULES}")
        return undone


@contextlib.contextmanager
def kind_cluster(
    engine: Engine,
    image: str,
    name: str = "agent-registry",
    retain: bool = False,
    report: BuildReport | None = None,
) -> Iterator[KindCluster]:
    """A cluster that exists for the ``with`` block (a leftover of the same name is replaced).

    With ``retain`` it is left behind, failed or not, to be looked into (``kind delete
    cluster --name NAME`` removes it).
    """
    report = report or BuildReport()
    cluster = KindCluster(name, engine)
    host = HostState.capture()
    try:
        with report.step("kind create"):
            if cluster.exists():
                cluster.delete()
            cluster.create(image, retain=retain)
        yield cluster
    finally:
        if not retain:
            with report.step("kind delete"):
                cluster.delete()
            undone = host.restore()
            if undone:
                log(f"put back what the cluster changed on this machine: {', '.join(undone)}")


# -- the smoke test ------------------------------------------------------------------------


def smoke_pod(image: str) -> str:
    """A pod of the project image, run as the chart runs it: non-root, read-only root."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "smoke", "namespace": "default"},
        "spec": {
            "containers": [
                {
                    "name": "registry",
                    "image": image,
                    # loaded with `kind load`; there is no registry to pull from
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "agent-registry-operator --help >/dev/null && exec sleep infinity"],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
            "terminationGracePeriodSeconds": 1,
        },
    }
    return json.dumps(pod)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_registry.localcluster.kind", description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the checkout whose image to run (default: .)")
    parser.add_argument("--name", default="agent-registry-smoke", help="the throwaway cluster's name")
    parser.add_argument("--build-only", action="store_true", help="build the images and the kind CLI, then exit")
    parser.add_argument("--retain", action="store_true", help="keep the cluster (even a failed one) to look into")
    args = parser.parse_args(argv)
    report = BuildReport()
    try:
        with LocalDocker() as docker:
            engine = docker.engine
            failure = engine.privileged_failure()
            if failure is not None:
                raise DockerUnavailableError(failure)
            images = ensure_images(engine, args.repo.resolve(), report)
            node_image = ensure_node_image(engine, report)
            log(f"node image {node_image}: {engine.image_size(node_image) / 1e6:.0f} MB")
            if args.build_only:
                log(f"built: {report.summary()}")
                return 0
            with kind_cluster(engine, node_image, args.name, args.retain, report) as cluster:
                try:
                    with report.step("node ready"):
                        cluster.wait_node_ready()
                    with report.step("kind load"):
                        cluster.load_image(images.registry)
                    with report.step("pod running"):
                        cluster.kubectl("apply", "-f", "-", input=smoke_pod(images.registry))
                        cluster.kubectl("wait", "--for=condition=Ready", "pod/smoke", "--timeout=120s", timeout=150)
                    print(cluster.kubectl("get", "nodes,pods", "-A", "-o", "wide"))
                except KindError:
                    print(cluster.node_logs(), file=sys.stderr)
                    raise
    except (DockerUnavailableError, ImageBuildError, KindError) as error:
        print(f"kind smoke test failed: {error}", file=sys.stderr)
        return 1
    log(f"kind smoke test passed: {report.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
