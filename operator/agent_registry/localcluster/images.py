"""The registry's images, built here without any container registry.

No registry is reachable from the build machines, so nothing is pulled:

1. a Debian base: ``debootstrap --variant=minbase`` into a directory, slimmed (no
   documentation, manuals or translations; no apt lists or package files), then
   ``tar -C DIR -c . | docker import - NAME``;
2. a Python base on top of it (``python3``, ``python3-venv``, ``python-is-python3`` from
   Debian's mirror, which containers on the default bridge reach);
3. the project's images from the repository's Dockerfile with ``PYTHON_IMAGE`` set to that
   base: the full image (operator, facade, sidecar) and the ``sidecar`` target alone.

The mirror is the one this machine's apt uses. pip in the build stages reaches PyPI through
TLS that only this machine's CA bundle trusts (the one its pip configuration names), so the
bundle is handed to the build as a BuildKit secret: it never lands in a layer.

The bases are tagged by Debian suite and recipe revision (bump ``BASE_REVISION`` when the
recipe changes); the project images by a hash of the build context and the base, so an
unchanged checkout finds its images and builds nothing.

Run as ``python -m agent_registry.localcluster.images``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from agent_registry.localcluster.build import cache_root
from agent_registry.localcluster.docker import DockerUnavailableError, Engine, LocalDocker
from agent_registry.localcluster.process import log

DEBIAN_SUITE = "bookworm"
BASE_REVISION = 1
DEBIAN_IMAGE = f"agent-registry.local/debian:{DEBIAN_SUITE}-r{BASE_REVISION}"
PYTHON_IMAGE = f"agent-registry.local/python:{DEBIAN_SUITE}-r{BASE_REVISION}"
PYTHON_PACKAGES = ("python3", "python3-venv", "python-is-python3")
# The chart's bundled Redis (docker.io/library/redis) cannot be pulled here: Debian's instead.
REDIS_IMAGE = f"agent-registry.local/redis:{DEBIAN_SUITE}-r{BASE_REVISION}"
REGISTRY_REPOSITORY = "agent-registry.local/agent-registry"
SIDECAR_REPOSITORY = "agent-registry.local/agent-sidecar"
SIDECAR_TARGET = "sidecar"
SIDECAR_MAX_BYTES = 150 * 1000 * 1000
"""An agent pod pulls the sidecar's image; 150 MB as ``docker images`` counts (10^6 bytes)."""

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# What the Dockerfile's .dockerignore lets into the build context: the image's content key.
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")
CONTEXT_DIRS = ("operator", "agent_sidecar")
_IGNORED_PARTS = frozenset({"__pycache__"})

_DPKG_EXCLUDES = """\
# Written by agent_registry.localcluster.images: images carry no documentation, manuals or
# translations (copyright files stay).
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
"""
_APT_SETTINGS = """\
// Written by agent_registry.localcluster.images: small images.
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
"""
_PYTHON_DOCKERFILE = f"""\
FROM {DEBIAN_IMAGE}
LABEL org.opencontainers.image.title="agent-registry python base" \\
      org.opencontainers.image.description="Debian {DEBIAN_SUITE} minbase with {", ".join(PYTHON_PACKAGES)}"
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {" ".join(PYTHON_PACKAGES)} \\
 && rm -rf /var/lib/apt/lists/*
"""

# 999 is the user the chart runs Redis as (that of the official image); the chart's
# command, `redis-server`, is on PATH.
_REDIS_DOCKERFILE = f"""\
FROM {DEBIAN_IMAGE}
LABEL org.opencontainers.image.title="agent-registry redis" \\
      org.opencontainers.image.description="Debian {DEBIAN_SUITE} minbase with redis-server"
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \\
 && rm -rf /var/lib/apt/lists/*
USER 999:999
CMD ["redis-server"]
"""


class ImageBuildError(RuntimeError):
    """A build step failed; the message holds the end of its log."""


@dataclasses.dataclass(frozen=True)
class Images:
    debian: str
    python: str
    registry: str
    sidecar: str


@dataclasses.dataclass
class BuildReport:
    """Seconds each step took, and which ones found their image already built."""

    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    cached: set[str] = dataclasses.field(default_factory=set)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = time.monotonic() - started

    def summary(self) -> str:
        parts = [f"{name} {s:.1f}s{' (cached)' if name in self.cached else ''}" for name, s in self.seconds.items()]
        return ", ".join(parts)


def images_dir() -> Path:
    return cache_root() / "images"


# -- where Debian comes from ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]


def apt_sources(root: Path = Path("/etc/apt")) -> list[AptSource]:
    """The ``deb`` sources this machine's apt uses: one-line ``.list`` and deb822 ``.sources`` files."""
    found: list[AptSource] = []
    files = [root / "sources.list", *sorted((root / "sources.list.d").glob("*.list"))]
    for path in files:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    found.append(AptSource(words[1], (words[2],)))
    for path in sorted((root / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in re.split(r"\n\s*\n", path.read_text()):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                    continue
                found.extend(AptSource(uri, tuple(fields.get("suites", "").split())) for uri in fields["uris"].split())
    return found


def debian_mirrors(sources: list[AptSource] | None = None, suite: str = DEBIAN_SUITE) -> tuple[str, str]:
    """The machine's mirror for ``suite`` and for its security updates (Debian's own when none is set)."""
    sources = apt_sources() if sources is None else sources
    web = [s for s in sources if s.uri.startswith(("http://", "https://"))]
    mirror = next((s.uri for s in web if suite in s.suites), DEFAULT_MIRROR)
    security = next((s.uri for s in web if f"{suite}-security" in s.suites), DEFAULT_SECURITY_MIRROR)
    return mirror.rstrip("/"), security.rstrip("/")


def image_sources(mirror: str, security: str, suite: str = DEBIAN_SUITE) -> str:
    """The images' own apt sources: the release, its updates and its security updates."""
    return (
        f"Types: deb\nURIs: {mirror}\nSuites: {suite} {suite}-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {security}\nSuites: {suite}-security\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


# -- the bases -----------------------------------------------------------------------------


def run_logged(
    argv: list[str],
    log_path: Path,
    what: str,
    env: dict[str, str] | None = None,
    stdin: IO[bytes] | None = None,
    input: bytes | None = None,
) -> None:
    """Run a build step with its output in ``log_path``; ImageBuildError with the log's end if it fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as out:
        if input is not None:
            result = subprocess.run(argv, input=input, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
        else:
            result = subprocess.run(argv, stdin=stdin, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise ImageBuildError(f"{what} failed (exit {result.returncode}); last lines of {log_path}:\n{tail}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def slim_rootfs(rootfs: Path, sources: str) -> None:
    """What debootstrap leaves that no image needs, and settings that keep later installs small."""
    for pattern in ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
        for path in rootfs.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
    for directory in ("usr/share/man", "usr/share/info", "usr/share/locale"):
        for path in (rootfs / directory).glob("*"):
            _remove(path)
    for package_docs in (rootfs / "usr/share/doc").glob("*"):
        if package_docs.is_dir() and not package_docs.is_symlink():
            for path in package_docs.iterdir():
                if path.name != "copyright":
                    _remove(path)
    # debootstrap copies the host's; Docker provides both to every container.
    for name in ("etc/resolv.conf", "etc/hostname"):
        (rootfs / name).unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(sources)
    (rootfs / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/dpkg/dpkg.cfg.d/agent-registry-slim").write_text(_DPKG_EXCLUDES)
    (rootfs / "etc/apt/apt.conf.d/90agent-registry").write_text(_APT_SETTINGS)


def ensure_debian_base(engine: Engine, report: BuildReport | None = None) -> str:
    """``DEBIAN_IMAGE``, from debootstrap, unless the engine has it already."""
    report = report or BuildReport()
    with report.step("debian base"):
        if engine.image_exists(DEBIAN_IMAGE):
            report.cached.add("debian base")
            return DEBIAN_IMAGE
        debootstrap = shutil.which("debootstrap")
        if debootstrap is None:
            raise DockerUnavailableError("debootstrap is not installed; run hack/ensure-docker.sh")
        if os.geteuid() != 0:
            raise DockerUnavailableError(f"debootstrap needs root (running as uid {os.geteuid()})")
        mirror, security = debian_mirrors()
        work = images_dir()
        work.mkdir(parents=True, exist_ok=True)
        log(f"building {DEBIAN_IMAGE}: debootstrap --variant=minbase {DEBIAN_SUITE} from {mirror}")
        # Under the cache, not /tmp: the same filesystem as the daemon's data, and no tmpfs limits.
        with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=work) as scratch:
            rootfs = Path(scratch) / "rootfs"
            run_logged(
                [debootstrap, "--variant=minbase", "--components=main", DEBIAN_SUITE, str(rootfs), mirror],
                work / "debootstrap.log",
                "debootstrap",
            )
            slim_rootfs(rootfs, image_sources(mirror, security))
            _import(engine, rootfs, DEBIAN_IMAGE, work / "import.log")
    return DEBIAN_IMAGE


def _import(engine: Engine, rootfs: Path, ref: str, log_path: Path) -> None:
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-c", "."],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        run_logged(
            [engine.cli, "import", "--change", 'CMD ["/bin/bash"]', "-", ref],
            log_path,
            f"docker import {ref}",
            env=engine.env(),
            stdin=tar.stdout,
        )
    finally:
        if tar.stdout is not None:
            tar.stdout.close()
        tar.wait()
    if tar.returncode != 0:
        raise ImageBuildError(f"tar of {rootfs} exited with {tar.returncode}")


def _ensure_on_debian(
    engine: Engine, report: BuildReport | None, ref: str, step: str, what: str, dockerfile: str, log_name: str
) -> str:
    """``ref`` built from ``dockerfile`` on the Debian base, unless the engine has it already."""
    report = report or BuildReport()
    ensure_debian_base(engine, report)
    with report.step(step):
        if engine.image_exists(ref):
            report.cached.add(step)
            return ref
        log(f"building {ref}: {what} from Debian")
        run_logged(
            [engine.cli, "build", "--progress=plain", "-t", ref, "-"],
            images_dir() / log_name,
            f"docker build {ref}",
            env=engine.env(),
            input=dockerfile.encode(),
        )
    return ref


def ensure_python_base(engine: Engine, report: BuildReport | None = None) -> str:
    """``PYTHON_IMAGE`` on top of the Debian base, unless the engine has it already."""
    what = " ".join(PYTHON_PACKAGES)
    return _ensure_on_debian(engine, report, PYTHON_IMAGE, "python base", what, _PYTHON_DOCKERFILE, "python-base.log")


def ensure_redis_image(engine: Engine, report: BuildReport | None = None) -> str:
    """``REDIS_IMAGE`` on top of the Debian base, for the chart's bundled Redis in a kind cluster."""
    return _ensure_on_debian(engine, report, REDIS_IMAGE, "redis image", "redis-server", _REDIS_DOCKERFILE, "redis.log")


# -- the project's images ------------------------------------------------------------------


def _context_files(repo: Path) -> list[Path]:
    files = [repo / name for name in CONTEXT_FILES if (repo / name).is_file()]
    for directory in CONTEXT_DIRS:
        for path in sorted((repo / directory).rglob("*")):
            if path.is_file() and not _IGNORED_PARTS.intersection(path.parts) and path.suffix != ".pyc":
                files.append(path)
    return files


def context_key(repo: Path, base_id: str) -> str:
    """A short hash of everything the build sees: the context's files and the base image."""
    digest = hashlib.sha256(base_id.encode())
    for path in _context_files(repo):
        digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def pip_ca_bundle() -> Path | None:
    """The CA bundle this machine's pip trusts (``PIP_CERT``, else ``pip config``), if it names one."""
    configured = os.environ.get("PIP_CERT")
    if not configured:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
        match = re.search(r"^[\w:.-]*\.cert='([^']+)'$", out, re.M)
        configured = match.group(1) if match else ""
    path = Path(configured) if configured else None
    return path if path is not None and path.is_file() else None


def _build_target(engine: Engine, repo: Path, target: str, ref: str, base: str) -> None:
    argv = [engine.cli, "build", "--progress=plain", "--build-arg", f"PYTHON_IMAGE={base}", "--target", target]
    bundle = pip_ca_bundle()
    if bundle is not None:
        argv += ["--secret", f"id=pip-ca,src={bundle}"]
    argv += ["-t", ref, str(repo)]
    log(f"building {ref} (Dockerfile target {target})")
    run_logged(argv, images_dir() / f"{target}.log", f"docker build --target {target}", env=engine.env())


def _remove_older_tags(engine: Engine, repository: str, keep: str) -> None:
    """Earlier builds of a repository: each code change would otherwise leave one behind."""
    listed = engine.run("images", repository, "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    older = [ref for ref in listed if ref != keep and not ref.endswith(":<none>")]
    if older:
        engine.run("rmi", *older, check=False)


def ensure_images(engine: Engine, repo: Path, report: BuildReport | None = None) -> Images:
    """Every image, building only what the engine lacks; one build at a time per cache."""
    report = report or BuildReport()
    images_dir().mkdir(parents=True, exist_ok=True)
    with (images_dir() / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        python = ensure_python_base(engine, report)
        key = context_key(repo, engine.image_id(python))
        built = {}
        for name, target, repository in (
            ("registry image", "runtime", REGISTRY_REPOSITORY),
            ("sidecar image", SIDECAR_TARGET, SIDECAR_REPOSITORY),
        ):
            ref = f"{repository}:{key}"
            with report.step(name):
                if engine.image_exists(ref):
                    report.cached.add(name)
                else:
                    _build_target(engine, repo, target, ref, python)
                    _remove_older_tags(engine, repository, ref)
            built[name] = ref
    return Images(DEBIAN_IMAGE, python, built["registry image"], built["sidecar image"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_registry.localcluster.images", description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the checkout to build (default: .)")
    args = parser.parse_args(argv)
    report = BuildReport()
    try:
        with LocalDocker() as docker:
            images = ensure_images(docker.engine, args.repo.resolve(), report)
            for ref in dataclasses.astuple(images):
                print(f"{ref}\t{docker.engine.image_size(ref) / 1e6:.0f} MB")
    except DockerUnavailableError as error:
        print(f"Docker unavailable: {error}", file=sys.stderr)
        return 1
    log(f"images ready: {report.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
