"""The Docker daemon's pieces that need no daemon: the runtime wrapper, the bounding set,
stale files of a crashed daemon, and where Debian's packages come from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agent_registry.localcluster.docker import (
    clear_stale_files,
    daemon_config,
    missing_capabilities,
    mounts_under,
    runtime_wrapper,
)
from agent_registry.localcluster.images import AptSource, apt_sources, context_key, debian_mirrors, image_sources
from agent_registry.localcluster.process import wait_for

PRIVILEGED_CAPS = ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_NET_ADMIN"]


def _fake_runc(tmp_path: Path) -> Path:
    """A runc that records the arguments it was given."""
    runc = tmp_path / "runc"
    runc.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "runc-args"}\n')
    runc.chmod(0o755)
    return runc


def _wrapper(tmp_path: Path, drop: list[str]) -> Path:
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(runtime_wrapper(str(_fake_runc(tmp_path)), drop, sys.executable))
    wrapper.chmod(0o755)
    return wrapper


def _caps(names: list[str]) -> dict[str, list[str]]:
    return {kind: list(names) for kind in ("bounding", "effective", "inheritable", "permitted", "ambient")}


def test_create_loses_the_missing_capability_and_runc_gets_the_same_arguments(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    spec = {"ociVersion": "1.0.2", "process": {"args": ["sh"], "capabilities": _caps(PRIVILEGED_CAPS)}}
    (bundle / "config.json").write_text(json.dumps(spec))
    args = ["--root", "/run/runc", "--log", "/x/log.json", "--log-format", "json", "create", "--bundle", str(bundle)]
    args += ["--pid-file", "/x/pid", "container-1"]
    subprocess.run([_wrapper(tmp_path, ["CAP_SYS_RESOURCE"]), *args], check=True)
    caps = json.loads((bundle / "config.json").read_text())["process"]["capabilities"]
    assert caps == _caps(["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_NET_ADMIN"])
    assert (tmp_path / "runc-args").read_text().splitlines() == args


def test_exec_loses_it_from_the_process_file(tmp_path: Path) -> None:
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["true"], "capabilities": _caps(PRIVILEGED_CAPS)}))
    args = ["--root", "/run/runc", "exec", "--process", str(process), "--detach", "container-1"]
    subprocess.run([_wrapper(tmp_path, ["CAP_SYS_RESOURCE"]), *args], check=True)
    assert "CAP_SYS_RESOURCE" not in json.dumps(json.loads(process.read_text()))
    assert (tmp_path / "runc-args").read_text().splitlines() == args


def test_other_commands_and_unprivileged_bundles_pass_through_untouched(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    untouched = json.dumps({"process": {"capabilities": _caps(["CAP_CHOWN"])}})
    (bundle / "config.json").write_text(untouched)
    wrapper = _wrapper(tmp_path, ["CAP_SYS_RESOURCE"])
    subprocess.run([wrapper, "create", f"--bundle={bundle}", "c"], check=True)
    assert (bundle / "config.json").read_text() == untouched
    subprocess.run([wrapper, "--root", "/r", "delete", "--force", "c"], check=True)
    assert (tmp_path / "runc-args").read_text().splitlines() == ["--root", "/r", "delete", "--force", "c"]


def test_a_bad_bundle_is_left_for_runc_to_report(tmp_path: Path) -> None:
    result = subprocess.run(
        [_wrapper(tmp_path, ["CAP_SYS_RESOURCE"]), "create", "--bundle", str(tmp_path / "nowhere"), "c"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "FileNotFoundError" in result.stderr
    assert (tmp_path / "runc-args").read_text().splitlines()[-1] == "c"


def test_missing_capabilities_come_from_the_bounding_set() -> None:
    assert missing_capabilities("CapBnd:\t000001fffeffffff\n") == ["CAP_SYS_RESOURCE"]
    assert missing_capabilities("CapBnd:\t000001ffffffffff\n") == []
    # This machine's own set: whatever it lacks, the wrapper removes.
    assert all(name.startswith("CAP_") for name in missing_capabilities())


def test_the_daemon_reads_only_our_files(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, tmp_path / "wrapper")
    paths = [config["data-root"], config["exec-root"], config["pidfile"], *config["hosts"]]
    assert all(str(tmp_path) in p for p in paths)
    assert config["default-runtime"] in config["runtimes"]


def test_stale_pid_files_are_removed_and_live_ones_of_ours_kept(tmp_path: Path) -> None:
    (tmp_path / "exec" / "containerd").mkdir(parents=True)
    # Pid 1 is alive but not ours: a pid reused after a crash and a reboot.
    (tmp_path / "docker.pid").write_text("1")
    (tmp_path / "exec" / "containerd" / "containerd.pid").write_text("999999999")
    (tmp_path / "docker.sock").write_text("")
    assert sorted(clear_stale_files(tmp_path)) == ["containerd.pid", "docker.pid", "docker.sock"]
    assert not (tmp_path / "docker.pid").exists()
    # A live process whose command line names our daemon.json is a daemon of ours.
    marker = str(tmp_path / "daemon.json")
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        wait_for("the child to exec", lambda: marker in Path(f"/proc/{ours.pid}/cmdline").read_text(), timeout=10)
        (tmp_path / "docker.pid").write_text(str(ours.pid))
        assert clear_stale_files(tmp_path) == []
        assert (tmp_path / "docker.pid").exists()
    finally:
        ours.kill()
        ours.wait()


def test_debian_mirror_comes_from_this_machines_apt_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n"
    )
    (tmp_path / "sources.list").write_text("deb [arch=amd64] https://other.example/apt stable main\n")
    sources = apt_sources(tmp_path)
    assert AptSource("https://other.example/apt", ("stable",)) in sources
    assert debian_mirrors(sources) == ("http://mirror.example/debian", "http://mirror.example/security")
    assert debian_mirrors([]) == ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security")
    assert "Suites: bookworm-security" in image_sources(*debian_mirrors(sources))


def test_the_image_key_follows_the_build_context(tmp_path: Path) -> None:
    for name in ("Dockerfile", "pyproject.toml", "operator/agent_registry/a.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    key = context_key(tmp_path, "sha256:base")
    (tmp_path / "operator/agent_registry/__pycache__").mkdir()
    (tmp_path / "operator/agent_registry/__pycache__/a.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "docs.md").write_text("not in the context")
    assert context_key(tmp_path, "sha256:base") == key
    assert context_key(tmp_path, "sha256:other") != key
    (tmp_path / "operator/agent_registry/a.py").write_text("changed")
    assert context_key(tmp_path, "sha256:base") != key


def test_mounts_left_by_a_crashed_daemon_are_found_by_path(tmp_path: Path) -> None:
    root = tmp_path / "dockerd dir"
    escaped = str(root).replace(" ", "\\040")
    mountinfo = (
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        f"42 27 254:0 {escaped}/data {escaped}/data rw,relatime shared:1 - ext4 /dev/vda rw\n"
        f"51 42 0:50 / {escaped}/data/overlay2/abc/merged rw - overlay overlay rw\n"
        f"60 27 0:4 / {tmp_path}/elsewhere rw - nsfs nsfs rw\n"
    )
    assert mounts_under(root, mountinfo) == [root / "data", root / "data/overlay2/abc/merged"]
