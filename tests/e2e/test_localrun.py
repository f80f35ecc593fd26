"""``make run`` (``python -m agent_registry.localrun``) as a user runs it: a subprocess, then Ctrl-C.

Up, the REST API answers and both demo agents are Healthy in ``kubectl get agents``; after
SIGINT it exits 0 and every process it started is gone, with its temporary files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_registry.localcluster.build import Binaries
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.process import wait_for
from agent_registry.localrun.stack import DEMO_AGENTS

DEMO_NAMES = sorted(agent.name for agent in DEMO_AGENTS)


class LocalRun:
    def __init__(self, tmp_path: Path, env: dict[str, str], *args: str) -> None:
        self.state_file = tmp_path / "state.json"
        self.log = tmp_path / "localrun.log"
        with self.log.open("wb") as log:
            argv = [sys.executable, "-m", "agent_registry.localrun", "--api-port", "0"]
            self.proc = subprocess.Popen(
                [*argv, "--state-file", str(self.state_file), *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_up(self, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.state_file.exists():
            assert self.proc.poll() is None, f"make run exited with {self.proc.returncode}:\n{self.output()[-4000:]}"
            assert time.monotonic() < deadline, f"make run not up after {timeout:.0f}s:\n{self.output()[-4000:]}"
            time.sleep(0.2)
        state: dict[str, Any] = json.loads(self.state_file.read_text())
        return state

    def interrupt(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            message = f"make run still running {timeout:.0f}s after Ctrl-C:\n{self.output()[-4000:]}"
            raise AssertionError(message) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "KUBECONFIG" and not k.startswith("AGENT_REGISTRY_KEEP")}


@pytest.fixture
def localrun_factory(tmp_path: Path) -> Iterator[list[LocalRun]]:
    runs: list[LocalRun] = []
    yield runs
    for run in runs:
        run.kill()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; its parent will reap it.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def agent_phases(binaries: Binaries, kubeconfig: str, namespace: str) -> dict[str, str]:
    out = subprocess.run(
        [str(binaries.kubectl), f"--kubeconfig={kubeconfig}", "get", "agents", "-n", namespace, "--no-headers",
         "-o", "custom-columns=NAME:.metadata.name,PHASE:.status.phase"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return dict(line.split() for line in out.splitlines() if line.strip())


def check_api(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as http:
        assert http.get("/health").json()["status"] == "healthy"
        listed = http.get("/agents").json()
        assert sorted(a["name"] for a in listed["agents"]) == DEMO_NAMES
        assert {a["status"] for a in listed["agents"]} == {"healthy"}
        # Each demo agent serves an A2A card, one skill per capability, which its sidecar records.
        wait_for("the demo agents' cards", lambda: http.get("/agents/cards").json()["count"] == len(DEMO_NAMES))
        cards = {entry["name"]: entry["card"] for entry in http.get("/agents/cards").json()["cards"]}
        for agent in DEMO_AGENTS:
            assert [skill["id"] for skill in cards[agent.name]["skills"]] == list(agent.capabilities)
            skill = agent.capabilities[0]
            assert [a["name"] for a in http.get("/agents", params={"skill": skill}).json()["agents"]] == [agent.name]


def check_all_stopped(run: LocalRun, state: dict[str, Any]) -> None:
    still = {name: pid for name, pid in state["pids"].items() if alive(pid)}
    assert not still, f"still running after Ctrl-C: {still}"
    assert not Path(state["workdir"]).exists(), "the run's directory was left behind"
    assert not processes_mentioning(state["workdir"])
    assert "[run] stopped" in run.output()


def test_make_run_starts_everything_and_ctrl_c_stops_everything(
    binaries: Binaries, tmp_path: Path, clean_env: dict[str, str], localrun_factory: list[LocalRun]
) -> None:
    run = LocalRun(tmp_path, clean_env)
    localrun_factory.append(run)
    state = run.wait_up()
    assert {"etcd", "kube-apiserver", "redis-server", "operator", "facade"} <= set(state["pids"])
    assert state["api_url"], "the REST API was not started"
    check_api(state["api_url"])
    assert agent_phases(binaries, state["kubeconfig"], state["namespace"]) == dict.fromkeys(DEMO_NAMES, "Healthy")
    output = run.output()
    assert "Agent Registry is running" in output and f"export KUBECONFIG={state['kubeconfig']}" in output
    assert f"dashboard    {state['api_url']}/ui" in output
    assert "1/7" in output  # progress is shown

    assert run.interrupt() == 0
    check_all_stopped(run, state)
    assert not Path(state["kubeconfig"]).exists(), "the embedded control plane's files were left behind"


def test_make_run_uses_the_cluster_kubeconfig_names(
    binaries: Binaries,
    controlplane: LocalControlPlane,
    namespace: str,
    tmp_path: Path,
    clean_env: dict[str, str],
    localrun_factory: list[LocalRun],
) -> None:
    timings = ["--heartbeat-seconds", "3", "--unreachable-after-seconds", "11", "--gc-after-seconds", "70"]
    env = {**clean_env, "KUBECONFIG": str(controlplane.kubeconfig)}
    run = LocalRun(tmp_path, env, "--namespace", namespace, *timings)
    localrun_factory.append(run)
    state = run.wait_up()
    assert "kube-apiserver" not in state["pids"], "started its own control plane despite KUBECONFIG"
    assert state["kubeconfig"] == str(controlplane.kubeconfig)
    assert agent_phases(binaries, str(controlplane.kubeconfig), namespace) == dict.fromkeys(DEMO_NAMES, "Healthy")
    check_api(state["api_url"])

    # The run's timings reach every agent it serves: the demo sidecars' and a REST agent's.
    with httpx.Client(base_url=state["api_url"], timeout=10, trust_env=False) as http:
        registered = http.post(
            "/agents/register", json={"name": "rest-agent", "type": "cost", "host": "127.0.0.1", "port": 9}
        )
        assert registered.status_code == 201, registered.text
        assert registered.json()["heartbeat_interval_seconds"] == 3
        expected = {"intervalSeconds": 3, "unreachableAfterSeconds": 11, "gcAfterSeconds": 70}
        for name in [*DEMO_NAMES, "rest-agent"]:
            agent = json.loads(controlplane.kubectl("get", "agent", name, "-n", namespace, "-o", "json").stdout)
            assert agent["spec"]["heartbeat"] == expected, name
        assert http.post(f"/agents/{registered.json()['agent_id']}/unregister").status_code == 200
        # The facade's metrics are on their own port, which the run prints; not on the API's.
        assert http.get("/metrics").status_code == 404
        assert "agent_registry_facade_requests_total" in http.get(state["facade_metrics_url"]).text

    assert run.interrupt() == 0
    check_all_stopped(run, state)
    # The sidecars deregistered their agents on the way out; the cluster itself is untouched.
    assert agent_phases(binaries, str(controlplane.kubeconfig), namespace) == {}
    controlplane.kubectl("get", "crd", "agents.registry.optiinfra.io")
