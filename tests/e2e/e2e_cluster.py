""" "A cluster" for the end-to-end scenarios: the local control plane, or kind.

The scenarios only use this interface, so they run unchanged on both:

* ``LocalCluster``: a fresh kube-apiserver + etcd (nothing installed, like a new kind
  cluster) with :class:`local_kubelet.LocalKubelet` running the Deployments as local
  processes; the image is "this checkout";
* ``KindCluster``: ``kind create cluster`` through the kind CLI on a node image built here
  (``localcluster.kind``), the images built from this checkout (``localcluster.images``)
  and loaded with ``kind load docker-image``; real pods, a real kubelet.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from local_kubelet import LocalKubelet, wait_ready

from agent_registry.localcluster import images, kind
from agent_registry.localcluster.build import Binaries
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.docker import Engine
from agent_registry.localcluster.images import BuildReport

REPO = Path(__file__).resolve().parents[2]
KIND_CLUSTER_NAME = os.environ.get("E2E_KIND_CLUSTER_NAME", "agent-registry-e2e")


class CommandError(RuntimeError):
    pass


def run(
    argv: list[str], *, input: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise CommandError(f"{' '.join(argv)} exited with {result.returncode}:\n{result.stderr}\n{result.stdout}")
    return result


class Cluster:
    """What the scenarios need from a cluster."""

    name = "cluster"
    image_repository = ""
    image_tag = ""

    def __init__(self, binaries: Binaries, kubeconfig: Path) -> None:
        self.binaries = binaries
        self.kubeconfig = kubeconfig

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            check=check,
            timeout=timeout,
        )

    def helm(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return run([str(self.binaries.helm), f"--kubeconfig={self.kubeconfig}", *args], check=check, timeout=timeout)

    def get_json(self, *args: str) -> Any:
        return yaml.safe_load(self.kubectl("get", *args, "-o", "json").stdout)

    def image_values(self) -> list[str]:
        return ["--set", f"image.repository={self.image_repository}", "--set", f"image.tag={self.image_tag}"]

    def image(self) -> str:
        return f"{self.image_repository}:{self.image_tag}"

    def sidecar_image(self) -> str:
        """The image of agent pods' sidecar container (its own small target on kind)."""
        return self.image()

    def wait_rollout(self, namespace: str, deployment: str, timeout: float = 120) -> None:
        raise NotImplementedError

    def pod_names(self, namespace: str, deployment: str) -> list[str]:
        raise NotImplementedError

    def logs(self, namespace: str, deployment: str, container: str | None = None) -> str:
        raise NotImplementedError

    def restarts(self, namespace: str, deployment: str) -> int:
        raise NotImplementedError

    @contextlib.contextmanager
    def service_url(self, namespace: str, service: str, port: int | str) -> Iterator[str]:
        raise NotImplementedError
        yield ""

    def freeze(self, namespace: str, deployment: str, pod: str, container: str) -> None:
        """Stop one container dead without letting it clean up (SIGSTOP): a hung or partitioned sidecar."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalCluster(Cluster):
    name = "local"
    image_repository = "local/agent-registry"
    image_tag = "checkout"

    def __init__(self) -> None:
        self.controlplane = LocalControlPlane().start()
        super().__init__(self.controlplane.binaries, self.controlplane.kubeconfig)
        self._workdir = Path(tempfile.mkdtemp(prefix="agent-registry-e2e-pods-"))
        self.kubelet = LocalKubelet(self.controlplane, self._workdir).__enter__()

    def close(self) -> None:
        try:
            self.kubelet.close()
        finally:
            self.controlplane.stop()
            shutil.rmtree(self._workdir, ignore_errors=True)

    def wait_rollout(self, namespace: str, deployment: str, timeout: float = 120) -> None:
        replicas = int(self.get_json("deployment", deployment, "-n", namespace)["spec"].get("replicas", 1))
        wait_ready(self.kubelet, namespace, deployment, replicas, timeout)

    def pod_names(self, namespace: str, deployment: str) -> list[str]:
        return [pod.name for pod in self.kubelet.pods_of(namespace, deployment)]

    def logs(self, namespace: str, deployment: str, container: str | None = None) -> str:
        return "\n".join(pod.logs(container) for pod in self.kubelet.pods_of(namespace, deployment))

    def restarts(self, namespace: str, deployment: str) -> int:
        return sum(pod.restarts for pod in self.kubelet.pods_of(namespace, deployment))

    @contextlib.contextmanager
    def service_url(self, namespace: str, service: str, port: int | str) -> Iterator[str]:
        host, target = self.kubelet.service_address(namespace, service, port)
        yield f"http://{host}:{target}"

    def freeze(self, namespace: str, deployment: str, pod: str, container: str) -> None:
        for local_pod in self.kubelet.pods_of(namespace, deployment):
            if local_pod.name == pod:
                pid = local_pod.container(container).process.pid
                assert pid is not None
                os.killpg(pid, signal.SIGSTOP)
                return
        raise LookupError(f"no pod {pod} in {namespace}/{deployment}")


class KindCluster(Cluster):
    """A throwaway kind cluster (``localcluster.kind``) on the session's Docker engine, with the
    images built from this checkout (and a Redis for the chart's bundled one) loaded into it:
    no registry is reachable, so nothing is ever pulled."""

    name = "kind"

    def __init__(self, binaries: Binaries, engine: Engine) -> None:
        self._stack = contextlib.ExitStack()
        self._forwards: list[subprocess.Popen[bytes]] = []
        report = BuildReport()
        try:
            built = images.ensure_images(engine, REPO, report)
            redis = images.ensure_redis_image(engine, report)
            node = kind.ensure_node_image(engine, report)
            self.image_repository, self.image_tag = built.registry.rsplit(":", 1)
            self.sidecar = built.sidecar
            self.redis_repository, self.redis_tag = redis.rsplit(":", 1)
            keep = bool(os.environ.get("E2E_KEEP_CLUSTER"))
            self.kind = self._stack.enter_context(kind.kind_cluster(engine, node, KIND_CLUSTER_NAME, keep, report))
            super().__init__(binaries, self.kind.kubeconfig)
            with report.step("node ready"):
                self.kind.wait_node_ready()
            with report.step("kind load"):
                # In one call: one `docker save` of the layers the three images share.
                self.kind.load_image(built.registry, built.sidecar, redis)
            print(f"kind cluster {KIND_CLUSTER_NAME} ready: {report.summary()}", flush=True)
        except BaseException:
            self.close()
            raise

    def sidecar_image(self) -> str:
        return self.sidecar

    def image_values(self) -> list[str]:
        # The images exist only inside the node: never try to pull them.
        return [
            *super().image_values(),
            "--set", "image.pullPolicy=Never",
            "--set", f"redis.bundled.image.repository={self.redis_repository}",
            "--set", f"redis.bundled.image.tag={self.redis_tag}",
            "--set", "redis.bundled.image.pullPolicy=Never",
        ]  # fmt: skip

    def close(self) -> None:
        for forward in self._forwards:
            forward.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                forward.wait(timeout=5)
        self._stack.close()

    def _selector(self, namespace: str, deployment: str) -> str:
        labels = self.get_json("deployment", deployment, "-n", namespace)["spec"]["selector"]["matchLabels"]
        return ",".join(f"{k}={v}" for k, v in labels.items())

    def wait_rollout(self, namespace: str, deployment: str, timeout: float = 180) -> None:
        self.kubectl(
            "rollout",
            "status",
            f"deployment/{deployment}",
            "-n",
            namespace,
            f"--timeout={timeout:.0f}s",
            timeout=timeout + 10,
        )

    def pod_names(self, namespace: str, deployment: str) -> list[str]:
        pods = self.get_json("pods", "-n", namespace, "-l", self._selector(namespace, deployment))["items"]
        return [p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")]

    def logs(self, namespace: str, deployment: str, container: str | None = None) -> str:
        args = ["logs", "-n", namespace, "-l", self._selector(namespace, deployment), "--tail=400", "--prefix"]
        args += ["-c", container] if container else ["--all-containers"]
        return self.kubectl(*args, check=False).stdout

    def restarts(self, namespace: str, deployment: str) -> int:
        pods = self.get_json("pods", "-n", namespace, "-l", self._selector(namespace, deployment))["items"]
        return sum(
            int(s.get("restartCount", 0)) for p in pods for s in p.get("status", {}).get("containerStatuses", [])
        )

    @contextlib.contextmanager
    def service_url(self, namespace: str, service: str, port: int | str) -> Iterator[str]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            local_port = sock.getsockname()[1]
        forward = subprocess.Popen(
            [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig}", "port-forward", "-n", namespace,
             f"service/{service}", f"{local_port}:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._forwards.append(forward)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local_port), timeout=1):
                break
            if time.monotonic() > deadline or forward.poll() is not None:
                raise RuntimeError(f"kubectl port-forward to {namespace}/{service} did not come up")
            time.sleep(0.2)
        try:
            yield f"http://127.0.0.1:{local_port}"
        finally:
            forward.terminate()
            forward.wait(timeout=5)

    def freeze(self, namespace: str, deployment: str, pod: str, container: str) -> None:
        # Needs shareProcessNamespace (the scenarios set it): the sidecar is then not PID 1,
        # and the kernel delivers SIGSTOP to it. Run from the agent container, as the same user.
        script = (
            "import os, signal\n"
            "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
            "    try: argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
            "    except OSError: continue\n"
            "    if int(pid) != os.getpid() and any(a.endswith(b'agent-sidecar') for a in argv[:2]):\n"
            "        os.kill(int(pid), signal.SIGSTOP)\n"
        )
        self.kubectl("exec", "-n", namespace, pod, "-c", "agent", "--", "python", "-c", script)
