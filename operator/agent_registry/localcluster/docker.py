"""A Docker engine for the image and kind tests: the machine's own, or a dockerd of ours.

When a Docker daemon already answers (``DOCKER_HOST``, else ``/var/run/docker.sock``), it
is used as it is. Otherwise we start Debian's ``dockerd`` (``hack/ensure-docker.sh``
installs it) with everything of its own under the cache, keyed by the daemon's version:

    <cache>/docker/dockerd-<version>/
        daemon.json         the only configuration it reads (never /etc/docker)
        docker.sock         clients use it through DOCKER_HOST=unix://...
        docker.pid, data/, exec/, dockerd.log, client/ (DOCKER_CONFIG), agent-registry-runc

A daemon of ours that already answers on that socket (another test session, or
``python -m agent_registry.localcluster.docker``) is reused and left running; one we start
stops with us, and a crashed one leaves only files that the next start clears.

Privileged containers (kind's nodes) fail here with "unable to apply caps: operation not
permitted": a capability such as CAP_SYS_RESOURCE is missing from this machine's bounding
set, and runc cannot grant what the kernel will not give. So our daemon's default OCI
runtime is a small wrapper around runc that removes every capability the bounding set
lacks from the container's ``config.json`` on ``create`` and from the ``--process`` file on
``exec``, then runs runc itself.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import io
import json
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tarfile
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from agent_registry.localcluster.build import cache_root
from agent_registry.localcluster.process import ManagedProcess, ProcessExitedError, WaitTimeoutError, log

MACHINE_SOCKET = Path("/var/run/docker.sock")
INSTALL_HINT = "run hack/ensure-docker.sh (Debian's docker.io)"
RUNTIME_NAME = "agent-registry-runc"
# A static binary every docker.io install has (it is dockerd's --init), so the check image
# needs no registry and no base image.
CHECK_IMAGE = "agent-registry.local/check-tini:1"
_CHECK_BINARIES = ("docker-init", "tini-static")
# sun_path holds 108 bytes; containerd's socket under exec/ is the longest path we make.
_MAX_SOCKET_PATH = 100
_LOG_ROTATE_BYTES = 8 * 1024 * 1024
# Client settings that would point a docker CLI elsewhere than the engine's DOCKER_HOST.
_CLIENT_SETTINGS = ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
# Names of the capability bits (linux/capability.h), for the ones a bounding set may lack.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip


class DockerUnavailableError(RuntimeError):
    """Docker cannot be had here; the message says why, precisely enough to be a skip reason."""


@dataclasses.dataclass(frozen=True)
class Engine:
    """A Docker daemon and a CLI to drive it."""

    host: str
    """``DOCKER_HOST`` for every client: ``unix:///...``."""
    cli: str
    """A docker CLI that can build with BuildKit (``RUN --mount``, ``--secret``)."""
    ours: bool
    """Whether the daemon is the one under the cache (with the runtime wrapper) or the machine's."""
    config_dir: Path | None = None
    """``DOCKER_CONFIG`` for our daemon's clients, so no user's ~/.docker settings apply."""

    def env(self) -> dict[str, str]:
        """The environment for any Docker client (docker, kind) that should use this engine."""
        env = {k: v for k, v in os.environ.items() if k not in _CLIENT_SETTINGS}
        env["DOCKER_HOST"] = self.host
        env["DOCKER_BUILDKIT"] = "1"
        if self.config_dir is not None:
            env["DOCKER_CONFIG"] = str(self.config_dir)
        return env

    def run(
        self, *args: str, input: bytes | None = None, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS``; on failure (with ``check``) a RuntimeError carrying docker's own words."""
        result = subprocess.run(
            [self.cli, *args], input=input, capture_output=True, timeout=timeout, env=self.env(), check=False
        )
        stdout, stderr = (stream.decode(errors="replace") for stream in (result.stdout, result.stderr))
        out = subprocess.CompletedProcess(result.args, result.returncode, stdout, stderr)
        if check and out.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} exited with {out.returncode}:\n{out.stderr}{out.stdout}")
        return out

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "inspect", "--format", "{{.Id}}", ref, check=False).returncode == 0

    def image_size(self, ref: str) -> int:
        """Bytes of the image as ``docker images`` counts them (all layers, uncompressed)."""
        return int(self.run("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())

    def image_id(self, ref: str) -> str:
        return self.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()

    def privileged_failure(self) -> str | None:
        """Why ``docker run --privileged`` fails on this engine (kind's nodes need it), or None."""
        if not self.image_exists(CHECK_IMAGE):
            self.run("import", "-", CHECK_IMAGE, input=_check_image_tar())
        result = self.run("run", "--rm", "--privileged", CHECK_IMAGE, "/tini", "--version", check=False, timeout=60)
        if result.returncode == 0 and "tini version" in result.stdout:
            return None
        return f"docker run --privileged fails on {self.host}: {(result.stderr or result.stdout).strip()}"


# -- the pieces of our daemon --------------------------------------------------------------


def dockerd_version(dockerd: str) -> str:
    """``20.10.24+dfsg1`` from ``Docker version 20.10.24+dfsg1, build 5d6db84``."""
    out = subprocess.run([dockerd, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    match = re.search(r"version\s+([^\s,]+)", out)
    return match.group(1) if match else "unknown"


def daemon_dir(version: str) -> Path:
    return cache_root() / "docker" / f"dockerd-{re.sub(r'[^A-Za-z0-9.+_-]', '_', version)}"


def missing_capabilities(status: str | None = None) -> list[str]:
    """``CAP_*`` names of the known capabilities this process's bounding set lacks."""
    text = status if status is not None else Path("/proc/self/status").read_text()
    match = re.search(r"^CapBnd:\s*([0-9a-fA-F]+)$", text, re.M)
    if match is None:
        return []
    bounding = int(match.group(1), 16)
    return [f"CAP_{name}" for bit, name in enumerate(CAPABILITIES) if not bounding & (1 << bit)]


_WRAPPER = """#!$python
# runc, minus the capabilities this machine's bounding set lacks. Written by
# agent_registry.localcluster.docker and rewritten on every start of the daemon.
import json, os, sys

RUNC = $runc
DROP = frozenset($drop)
# runc's global options that take a value; the first other word is the command.
GLOBAL_WITH_VALUE = {"--root", "--log", "--log-format", "--criu", "--rootless"}


def option(args, names):
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None


def strip(path, key):
    with open(path) as f:
        doc = json.load(f)
    process = doc.get(key) if key else doc
    caps = (process or {}).get("capabilities") or {}
    changed = False
    for kind, names in caps.items():
        if isinstance(names, list) and DROP.intersection(names):
            caps[kind] = [n for n in names if n not in DROP]
            changed = True
    if changed:
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f)
        os.replace(path + ".tmp", path)


def main(args):
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in GLOBAL_WITH_VALUE else 1
    if i < len(args) and DROP:
        command, rest = args[i], args[i + 1:]
        if command in ("create", "run"):
            strip(os.path.join(option(rest, ("--bundle", "-b")) or ".", "config.json"), "process")
        elif command == "exec":
            process = option(rest, ("--process", "-p"))
            if process:
                strip(process, None)


try:
    main(sys.argv[1:])
except Exception as error:  # runc itself then says what is wrong with the bundle
    print(f"{sys.argv[0]}: {type(error).__name__}: {error}", file=sys.stderr)
os.execv(RUNC, [RUNC, *sys.argv[1:]])
"""


def runtime_wrapper(runc: str, drop: list[str], python: str) -> str:
    """The OCI runtime dockerd runs instead of runc (see the module's docstring)."""
    return string.Template(_WRAPPER).substitute(python=python, runc=repr(runc), drop=repr(sorted(drop)))


def daemon_config(workdir: Path, wrapper: Path) -> dict[str, Any]:
    return {
        "hosts": [f"unix://{workdir / 'docker.sock'}"],
        "data-root": str(workdir / "data"),
        "exec-root": str(workdir / "exec"),
        "pidfile": str(workdir / "docker.pid"),
        "runtimes": {RUNTIME_NAME: {"path": str(wrapper)}},
        "default-runtime": RUNTIME_NAME,
        "features": {"buildkit": True},
        # The build cache of every image the tests build; without a bound it grows forever.
        "builder": {"gc": {"enabled": True, "defaultKeepStorage": "10GB"}},
    }


def _check_image_tar() -> bytes:
    """A one-file root filesystem: the static tini that docker.io ships as /tini."""
    found = next((p for p in map(shutil.which, _CHECK_BINARIES) if p), None)
    if found is None:
        raise DockerUnavailableError(f"none of {', '.join(_CHECK_BINARIES)} is on PATH; {INSTALL_HINT}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(os.path.realpath(found), arcname="tini")
    return buffer.getvalue()


def _pings(sock: Path) -> bool:
    """Whether a Docker daemon answers ``GET /_ping`` on the socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(3.0)
            conn.connect(str(sock))
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = conn.recv(4096)
    except OSError:
        return False
    return answer.startswith(b"HTTP/1.") and b" 200 " in answer.split(b"\r\n", 1)[0]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def mounts_under(directory: Path, mountinfo: str | None = None) -> list[Path]:
    """Mount points at or below ``directory`` (from /proc/self/mountinfo, octal escapes undone)."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
            if point == directory or directory in point.parents:
                found.append(point)
    return found


def clear_stale_files(workdir: Path) -> list[str]:
    """Remove what a crashed daemon of ours left behind (pid files, socket, mounts); what was removed.

    dockerd refuses to start while its pid file names a live process, and reuses the
    containerd that its containerd pid file names: after a crash and a reboot, either pid may
    belong to anything. A pid file is kept only while its process is still ours (its
    command line names our files).
    """
    removed = []
    checks = (
        (workdir / "docker.pid", str(workdir / "daemon.json")),
        (workdir / "exec" / "containerd" / "containerd.pid", str(workdir / "exec")),
    )
    for pid_file, marker in checks:
        pid = _pid_in(pid_file)
        if pid_file.exists() and (pid is None or marker not in _cmdline(pid)):
            pid_file.unlink(missing_ok=True)
            removed.append(pid_file.name)
    if not (workdir / "docker.pid").exists():
        # dockerd makes its data root a shared bind mount of itself and undoes that (and its
        # containers' overlay and netns mounts) only on a clean shutdown: after a crash they stay.
        for mount_point in sorted(mounts_under(workdir), key=lambda p: len(p.parts), reverse=True):
            if subprocess.run(["umount", str(mount_point)], capture_output=True, check=False).returncode == 0:
                removed.append(f"mount {mount_point.relative_to(workdir)}")
    sock = workdir / "docker.sock"
    if sock.exists() and not _pings(sock):
        sock.unlink(missing_ok=True)
        removed.append(sock.name)
    return removed


def _cli_can_build(cli: str) -> bool:
    """BuildKit from this CLI: through the buildx plugin, or built in (before Docker 23)."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        if subprocess.run([cli, "buildx", "version"], capture_output=True, timeout=30, check=False).returncode == 0:
            return True
        out = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
        match = re.search(r"version\s+(\d+)\.", out)
        return match is not None and int(match.group(1)) < 23
    return False


def find_cli() -> str:
    """A docker CLI on PATH that can build with BuildKit.

    Docker 23 and later builds through the buildx plugin only; Debian's docker.io (20.10)
    has BuildKit built in. The first CLI on PATH may be either.
    """
    seen = []
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = shutil.which("docker", path=directory)
        if candidate is None or os.path.realpath(candidate) in seen:
            continue
        seen.append(os.path.realpath(candidate))
        if _cli_can_build(candidate):
            return candidate
    if not seen:
        raise DockerUnavailableError(f"no docker CLI on PATH; {INSTALL_HINT}")
    raise DockerUnavailableError(
        f"no docker CLI on PATH can build with BuildKit ({', '.join(seen)}: Docker 23 or later without the "
        f"buildx plugin); {INSTALL_HINT} for one that can"
    )


def _machine_host() -> str | None:
    """The machine's daemon, when one answers: DOCKER_HOST (unix sockets only) or the default socket."""
    configured = os.environ.get("DOCKER_HOST", "")
    if configured:
        if configured.startswith("unix://") and _pings(Path(configured.removeprefix("unix://"))):
            return configured
        return None
    return f"unix://{MACHINE_SOCKET}" if _pings(MACHINE_SOCKET) else None


class LocalDocker:
    """``with LocalDocker() as docker: docker.engine.run("ps")``"""

    def __init__(self, startup_timeout: float = 90.0, use_machine_daemon: bool = True) -> None:
        self.startup_timeout = startup_timeout
        self.use_machine_daemon = use_machine_daemon
        self._engine: Engine | None = None
        self._process: ManagedProcess | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("LocalDocker is not started")
        return self._engine

    @property
    def started_here(self) -> bool:
        """Whether this object started the daemon (and will stop it)."""
        return self._process is not None and self._process.running

    def start(self) -> Self:
        """Find or start a daemon; :class:`DockerUnavailableError` says why there is none."""
        if self._engine is not None:
            return self
        cli = find_cli()
        dockerd = shutil.which("dockerd")
        workdir = daemon_dir(dockerd_version(dockerd)) if dockerd else None
        machine = _machine_host() if self.use_machine_daemon else None
        # DOCKER_HOST may name our own socket (exported from `python -m ...docker`): that is ours.
        if machine is not None and (workdir is None or machine != f"unix://{workdir / 'docker.sock'}"):
            log(f"using the machine's Docker daemon at {machine}")
            self._engine = Engine(host=machine, cli=cli, ours=False)
            return self
        if dockerd is None or workdir is None:
            raise DockerUnavailableError(f"no Docker daemon answers and dockerd is not installed; {INSTALL_HINT}")
        if os.geteuid() != 0:
            raise DockerUnavailableError(
                f"no Docker daemon answers and dockerd needs root to start (running as uid {os.geteuid()})"
            )
        sock = workdir / "docker.sock"
        if len(str(workdir / "exec" / "containerd" / "containerd.sock")) > _MAX_SOCKET_PATH:
            raise DockerUnavailableError(
                f"the cache path {workdir} is too long for dockerd's sockets; set AGENT_REGISTRY_CACHE to a shorter one"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        self._write_runtime(workdir)
        # One start at a time per cache: a second session waits, then finds the daemon answering.
        with (workdir / "start.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _pings(sock):
                self._start_dockerd(dockerd, workdir)
            else:
                log(f"reusing our Docker daemon at unix://{sock}")
        self._engine = Engine(host=f"unix://{sock}", cli=cli, ours=True, config_dir=workdir / "client")
        return self

    def _write_runtime(self, workdir: Path) -> None:
        """The runtime wrapper and daemon.json, rewritten atomically: a running daemon of ours
        runs the wrapper anew for every container, and this machine's needs may have changed."""
        runc = shutil.which("runc")
        if runc is None:
            raise DockerUnavailableError(f"runc is not on PATH; {INSTALL_HINT}")
        wrapper = workdir / RUNTIME_NAME
        text = runtime_wrapper(runc, missing_capabilities(), _wrapper_python())
        _write_atomically(wrapper, text, mode=0o755)
        _write_atomically(workdir / "daemon.json", json.dumps(daemon_config(workdir, wrapper), indent=2) + "\n")
        (workdir / "client").mkdir(exist_ok=True)

    def _start_dockerd(self, dockerd: str, workdir: Path) -> None:
        removed = clear_stale_files(workdir)
        if removed:
            log(f"removed stale {', '.join(removed)} from {workdir}")
        log_path = workdir / "dockerd.log"
        if log_path.exists() and log_path.stat().st_size > _LOG_ROTATE_BYTES:
            log_path.replace(log_path.with_suffix(".log.old"))
        argv = [dockerd, "--config-file", str(workdir / "daemon.json")]
        # Shutting down stops running containers, which get 10 s each to exit.
        process = ManagedProcess("dockerd", argv, log_path, stop_grace_seconds=30.0)
        log(f"starting dockerd under {workdir}")
        process.start()
        sock = workdir / "docker.sock"
        try:
            process.wait_until(lambda: _pings(sock), self.startup_timeout, "its socket answers /_ping")
        except (ProcessExitedError, WaitTimeoutError) as error:
            process.stop()
            raise DockerUnavailableError(f"dockerd cannot start: {error}") from None
        except BaseException:
            process.stop()
            raise
        self._process = process
        log(f"dockerd ready at unix://{sock}")

    def close(self) -> None:
        """Stop the daemon if this object started it. Safe to call more than once."""
        if self._process is not None:
            self._process.stop()
            self._process = None
        self._engine = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _wrapper_python() -> str:
    """The system's Python when there is one, else this interpreter itself (not a virtualenv's
    link to it): the wrapper in the cache outlives checkouts and their virtualenvs."""
    system = Path("/usr/bin/python3")
    return str(system) if os.access(system, os.X_OK) else os.path.realpath(sys.executable)


def _write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent_registry.localcluster.docker",
        description="Start (or find) the tests' Docker daemon and keep it up until Ctrl-C.",
    )
    parser.add_argument("--check", action="store_true", help="also run a privileged container, then exit")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        docker = LocalDocker().start()
    except DockerUnavailableError as error:
        print(f"Docker unavailable: {error}", file=sys.stderr)
        return 1
    with docker, contextlib.suppress(KeyboardInterrupt):
        print(f"export DOCKER_HOST={docker.engine.host}", flush=True)
        if args.check:
            failure = docker.engine.privileged_failure()
            print(failure or "docker run --privileged works", file=sys.stderr)
            return 1 if failure else 0
        if not docker.started_here:
            print("[localcluster] the daemon was already running; it keeps running", file=sys.stderr)
            return 0
        print("[localcluster] running; Ctrl-C to stop", file=sys.stderr, flush=True)
        while True:
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
