"""The kind node's recipe, checked without Docker: what kubeadm, kind and containerd read."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from agent_registry.localcluster import build, kind
from agent_registry.localcluster.docker import runtime_wrapper

BASE = "agent-registry.local/debian:bookworm-r1"


def test_containerd_runs_the_wrapper_and_the_pause_image_kubeadm_names() -> None:
    config = tomllib.loads(kind._CONTAINERD_CONFIG)
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    pause = next(c for c in kind.components(BASE, "nft") if c.name == "pause")
    assert cri["sandbox_image"] == pause.kubeadm_ref == "registry.k8s.io/pause:3.10.1"
    # `kind load docker-image` reads the snapshotter from this key of a version 2 config
    assert config["version"] == 2 and cri["containerd"]["snapshotter"] == "overlayfs"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["BinaryName"] == kind.NODE_RUNTIME


def test_cluster_config_names_our_etcd_and_leaves_out_kindnet() -> None:
    config = yaml.safe_load(kind.cluster_config())
    assert config["networking"]["disableDefaultCNI"] is True
    patches = {patch["kind"]: patch for patch in map(yaml.safe_load, config["kubeadmConfigPatches"])}
    etcd = next(c for c in kind.components(BASE, "nft") if c.name == "etcd")
    assert etcd.kubeadm_ref == f"registry.k8s.io/etcd:{patches['ClusterConfiguration']['etcd']['local']['imageTag']}"
    assert patches["KubeletConfiguration"]["failCgroupV1"] is False


def test_the_bridge_hands_out_the_node_s_share_of_the_pod_subnet() -> None:
    bridge, _portmap = json.loads(json.dumps(kind._CNI_CONFIG))["plugins"]
    subnet = ipaddress.IPv4Network(bridge["ipam"]["ranges"][0][0]["subnet"])
    assert subnet.subnet_of(ipaddress.IPv4Network(kind.POD_SUBNET))


@pytest.mark.skipif(not build.node_binaries().kubeadm.exists(), reason="kubeadm is not built yet")
def test_the_node_holds_every_image_kubeadm_asks_for() -> None:
    kubeadm = build.node_binaries().kubeadm
    argv = [str(kubeadm), "config", "images", "list", "--kubernetes-version", build.KUBERNETES_VERSION]
    listed = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    ours = {c.kubeadm_ref for c in kind.components(BASE, "nft")}
    # etcd is ours at its own version; the cluster configuration names its tag
    assert {ref for ref in listed if "/etcd:" not in ref} <= ours
    assert any(ref.startswith("registry.k8s.io/etcd:") for ref in ours)


def test_the_wrapper_strips_caps_from_what_containerd_s_shim_asks(tmp_path: Path) -> None:
    runc = tmp_path / "runc"
    runc.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "args"}\n')
    runc.chmod(0o755)
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(runtime_wrapper(str(runc), ["CAP_SYS_RESOURCE"], sys.executable))
    wrapper.chmod(0o755)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    caps = {kind: ["CAP_SYS_ADMIN", "CAP_SYS_RESOURCE"] for kind in ("bounding", "effective", "permitted")}
    (bundle / "config.json").write_text(json.dumps({"process": {"capabilities": caps}}))
    # the argv of containerd-shim-runc-v2 with SystemdCgroup = true
    argv = ["--root", "/run/containerd/runc/k8s.io", "--log", str(tmp_path / "log.json"), "--log-format", "json"]
    argv += ["--systemd-cgroup", "create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "c1"]
    subprocess.run([str(wrapper), *argv], check=True)
    stripped = json.loads((bundle / "config.json").read_text())["process"]["capabilities"]
    assert all(names == ["CAP_SYS_ADMIN"] for names in stripped.values())
    assert (tmp_path / "args").read_text().split() == argv


def test_the_node_image_tag_follows_its_recipe() -> None:
    parts = kind.components(BASE, "nft")
    dockerfile = kind.node_dockerfile(BASE)
    one = kind._node_recipe("sha256:a", parts, "wrapper", dockerfile)
    assert one == kind._node_recipe("sha256:a", parts, "wrapper", dockerfile)
    assert one != kind._node_recipe("sha256:b", parts, "wrapper", dockerfile)
    assert one != kind._node_recipe("sha256:a", kind.components(BASE, "legacy"), "wrapper", dockerfile)
