"""The images built from this checkout, run the way the chart runs them: as user 65532 with
a read-only root filesystem, in real containers.

The images come from agent_registry.localcluster.images (no registry: debootstrap bases,
then the Dockerfile) and are cached; a warm cache builds nothing. Without Docker the tests
skip, saying why.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent_registry.localcluster.docker import Engine
from agent_registry.localcluster.images import SIDECAR_MAX_BYTES, BuildReport, Images, ensure_images, pip_ca_bundle
from repo import REPO_ROOT

# A cold cache runs debootstrap and pip installs: minutes, not the default five.
pytestmark = pytest.mark.timeout(1200)

AS_THE_CHART_RUNS_IT = ("--read-only", "--user", "65532:65532")
COMMANDS = ("agent-registry-operator", "agent-registry-facade", "agent-sidecar")
KUBECONFIG_IN_CONTAINER = "/etc/agent-registry/kubeconfig"
# Inside the container nothing listens on its own loopback: an API server and a Redis that never answer.
NOWHERE_API_SERVER = "https://127.0.0.1:1"
NOWHERE_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture(scope="module")
def say(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """A line on the terminal even while output is captured: sizes and times are results."""
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            print(f"\n[images] {line}", flush=True)

    return write


@pytest.fixture(scope="module")
def images(docker_engine: Engine, say: Callable[[str], None]) -> Images:
    report = BuildReport()
    started = time.monotonic()
    built = ensure_images(docker_engine, REPO_ROOT, report)
    say(f"images ready in {time.monotonic() - started:.1f}s on {docker_engine.host}: {report.summary()}")
    return built


@pytest.fixture
def containers(docker_engine: Engine) -> Iterator[list[str]]:
    """Ids of the detached containers a test starts; all removed at its end."""
    started: list[str] = []
    yield started
    if started:
        docker_engine.run("rm", "--force", *started, check=False)


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    """Credentials for an API server that never answers: enough for the processes to start."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "nowhere", "cluster": {"server": NOWHERE_API_SERVER}}],
                "users": [{"name": "nobody", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "nowhere", "context": {"cluster": "nowhere", "user": "nobody"}}],
                "current-context": "nowhere",
            }
        )
    )
    path.chmod(0o644)  # the container's user 65532 reads it through the bind mount
    return path


def _logs(engine: Engine, container: str) -> str:
    result = engine.run("logs", container, check=False)
    return result.stdout + result.stderr


def _wait_for_log(engine: Engine, container: str, text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        logs = _logs(engine, container)
        if text in logs:
            return logs
        running = engine.run("inspect", "--format", "{{.State.Running}}", container).stdout.strip()
        if running != "true" or time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared in the logs (running: {running}):\n{logs}")
        time.sleep(0.5)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help_in_the_registry_image(docker_engine: Engine, images: Images, command: str) -> None:
    result = docker_engine.run("run", "--rm", *AS_THE_CHART_RUNS_IT, images.registry, command, "--help")
    assert result.stdout.startswith("usage:"), result.stdout + result.stderr


def test_the_facade_serves_health_without_an_api_server_or_redis(
    docker_engine: Engine, images: Images, kubeconfig: Path, containers: list[str]
) -> None:
    """The facade needs credentials to start (a kubeconfig or a service account), not a
    reachable API server or Redis: /health answers while both are away."""
    container = docker_engine.run(
        "run", "--detach", *AS_THE_CHART_RUNS_IT,
        "--publish", "127.0.0.1::8080",
        "--volume", f"{kubeconfig}:{KUBECONFIG_IN_CONTAINER}:ro",
        "--env", "AGENT_REGISTRY_FACADE_AUTH_ENABLED=false",
        "--env", f"AGENT_REGISTRY_FACADE_KUBECONFIG={KUBECONFIG_IN_CONTAINER}",
        "--env", f"AGENT_REGISTRY_REDIS_URL={NOWHERE_REDIS}",
        images.registry, "agent-registry-facade",
    ).stdout.strip()  # fmt: skip
    containers.append(container)
    _wait_for_log(docker_engine, container, "Application startup complete")
    address = docker_engine.run("port", container, "8080/tcp").stdout.split()[0]
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/health", timeout=5) as response:
                status, body = response.status, json.loads(response.read())
            break
        except (urllib.error.URLError, ConnectionError) as error:
            if time.monotonic() > deadline:
                raise AssertionError(f"GET /health: {error}\n{_logs(docker_engine, container)}") from None
            time.sleep(0.5)
    assert status == 200
    assert body["status"] == "healthy", body


def test_the_facade_without_credentials_exits_and_says_why(docker_engine: Engine, images: Images) -> None:
    result = docker_engine.run(
        "run", "--rm", *AS_THE_CHART_RUNS_IT,
        "--env", "AGENT_REGISTRY_FACADE_AUTH_ENABLED=false",
        images.registry, "agent-registry-facade",
        check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no Kubernetes credentials" in result.stdout + result.stderr


def test_the_sidecar_image_is_small(docker_engine: Engine, images: Images, say: Callable[[str], None]) -> None:
    sidecar, registry = docker_engine.image_size(images.sidecar), docker_engine.image_size(images.registry)
    say(f"sidecar image {images.sidecar}: {sidecar / 1e6:.1f} MB (limit {SIDECAR_MAX_BYTES / 1e6:.0f} MB)")
    say(f"registry image {images.registry}: {registry / 1e6:.1f} MB")
    assert sidecar <= SIDECAR_MAX_BYTES


def test_the_sidecar_image_answers_help(docker_engine: Engine, images: Images) -> None:
    result = docker_engine.run("run", "--rm", *AS_THE_CHART_RUNS_IT, images.sidecar, "agent-sidecar", "--help")
    assert result.stdout.startswith("usage:"), result.stdout + result.stderr
    assert "AGENT_NAME" in result.stdout


def test_the_sidecar_image_runs_the_sidecar_until_sigterm(
    docker_engine: Engine, images: Images, kubeconfig: Path, containers: list[str]
) -> None:
    """Everything the sidecar imports is in its image: it starts, retries an API server
    that never answers, and on SIGTERM (docker stop, as the kubelet sends it) exits 0."""
    container = docker_engine.run(
        "run", "--detach", *AS_THE_CHART_RUNS_IT,
        "--volume", f"{kubeconfig}:{KUBECONFIG_IN_CONTAINER}:ro",
        "--env", f"KUBECONFIG={KUBECONFIG_IN_CONTAINER}",
        "--env", "AGENT_NAME=cost-agent-1", "--env", "AGENT_TYPE=cost", "--env", "AGENT_PORT=9000",
        "--env", "AGENT_HOST=127.0.0.1", "--env", "POD_NAMESPACE=default",
        images.sidecar, "agent-sidecar",
    ).stdout.strip()  # fmt: skip
    containers.append(container)
    _wait_for_log(docker_engine, container, "retrying with backoff")
    docker_engine.run("stop", "--time", "20", container, timeout=60)
    exit_code = docker_engine.run("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip()
    logs = _logs(docker_engine, container)
    assert exit_code == "0", logs
    assert "nothing to delete" in logs, logs


def test_the_build_ca_bundle_is_in_no_image(docker_engine: Engine, images: Images) -> None:
    """The machine's own CA (what pip needed in the build stages) stays out of the images."""
    bundle = pip_ca_bundle()
    if bundle is None:
        pytest.skip("this machine's pip names no CA bundle; the builds used none")
    debian_bundle = docker_engine.run("run", "--rm", images.registry, "cat", "/etc/ssl/certs/ca-certificates.crt")
    own = set(_pem_blocks(debian_bundle.stdout))
    extra = [cert for cert in _pem_blocks(bundle.read_text()) if cert not in own]
    if not extra:
        pytest.skip(f"{bundle} holds only certificates Debian's ca-certificates has")
    # One line of base64 from the middle of a certificate only this machine trusts.
    needle = extra[0].splitlines()[len(extra[0].splitlines()) // 2]
    for image in (images.registry, images.sidecar):
        found = docker_engine.run(
            "run", "--rm", "--user", "0", image,
            "grep", "-rlF", "--exclude-dir=proc", "--exclude-dir=sys", "--exclude-dir=dev", needle, "/",
            check=False, timeout=300,
        )  # fmt: skip
        assert found.returncode == 1 and not found.stdout.strip(), f"{image}: {found.stdout}{found.stderr}"


def test_privileged_containers_run(docker_engine: Engine) -> None:
    """kind's nodes are privileged containers; on this machine they need the runtime wrapper."""
    failure = docker_engine.privileged_failure()
    if failure is not None and not docker_engine.ours:
        pytest.skip(f"the machine's own Docker daemon cannot: {failure}")
    assert failure is None


def _pem_blocks(text: str) -> list[str]:
    blocks: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if "BEGIN CERTIFICATE" in line:
            current = []
        elif "END CERTIFICATE" in line:
            blocks.append("\n".join(current))
        else:
            current.append(line.strip())
    return blocks
