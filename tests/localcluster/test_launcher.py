"""The launcher's environments and ``wait_for``, without starting anything that needs a cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent_registry.controller.settings import OperatorSettings
from agent_registry.facade.settings import FacadeSettings
from agent_registry.localcluster.launcher import (
    FacadeProcess,
    HeartbeatTimings,
    InClusterAccount,
    OperatorProcess,
    SidecarProcess,
    UnknownSettingError,
    env_name,
)
from agent_registry.localcluster.process import ManagedProcess, ProcessExitedError, WaitTimeoutError, wait_for
from agent_sidecar.config import SidecarSettings

KUBECONFIG = Path("/nowhere/kubeconfig")
LOGS = Path("/nowhere/logs")


def own_variables(process: ManagedProcess) -> dict[str, str]:
    """What the launcher set, without what the child inherits from this process."""
    assert process.env is not None
    own = ("AGENT_", "POD_", "KUBE")
    return {k: v for k, v in process.env.items() if k.startswith(own)}


def test_every_field_maps_to_the_variable_its_settings_class_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set each field through the launcher's variable and read it back through the class itself."""
    monkeypatch.setenv("AGENT_REGISTRY_SWEEP_INTERVAL_SECONDS", "7")
    assert env_name(OperatorSettings, "sweep_interval_seconds") == "AGENT_REGISTRY_SWEEP_INTERVAL_SECONDS"
    assert OperatorSettings().sweep_interval_seconds == 7
    monkeypatch.setenv(env_name(FacadeSettings, "redis_key_prefix"), "mine")
    monkeypatch.setenv("AGENT_REGISTRY_REDIS_KEY_PREFIX", "shared")
    assert FacadeSettings().redis_key_prefix == "mine"  # the facade's own variable wins
    assert env_name(SidecarSettings, "pod_name") == "POD_NAME"
    assert env_name(SidecarSettings, "heartbeat_interval_seconds") == "AGENT_HEARTBEAT_INTERVAL_SECONDS"


def test_a_misspelt_setting_fails_naming_it() -> None:
    with pytest.raises(UnknownSettingError, match="'sweep_seconds'"):
        OperatorProcess(LOGS, kubeconfig=KUBECONFIG, redis_url="redis://r", sweep_seconds=1)
    with pytest.raises(UnknownSettingError, match="FacadeSettings"):
        FacadeProcess(LOGS, kubeconfig=KUBECONFIG, redis_url="redis://r", namespace="n", auth_enable=False)


def test_operator_environment() -> None:
    operator = OperatorProcess(
        LOGS,
        kubeconfig=KUBECONFIG,
        redis_url="redis://r",
        namespaces=["a", "b"],
        redis_key_prefix="p",
        metrics_port=9999,
        liveness_port=0,
        leader_election=False,
        sweep_interval_seconds=0.5,
    )
    assert own_variables(operator) == {
        "KUBECONFIG": str(KUBECONFIG),
        "AGENT_REGISTRY_NAMESPACES": "a,b",
        "AGENT_REGISTRY_REDIS_URL": "redis://r",
        "AGENT_REGISTRY_REDIS_KEY_PREFIX": "p",
        "AGENT_REGISTRY_METRICS_HOST": "127.0.0.1",
        "AGENT_REGISTRY_METRICS_PORT": "9999",
        "AGENT_REGISTRY_LEADER_ELECTION": "false",
        "AGENT_REGISTRY_SWEEP_INTERVAL_SECONDS": "0.5",
    }


def test_facade_environment_with_timings_and_the_default_authentication() -> None:
    facade = FacadeProcess(
        LOGS,
        kubeconfig=KUBECONFIG,
        redis_url="redis://r",
        namespace="team-a",
        metrics_port=0,
        timings=HeartbeatTimings(interval_seconds=1, unreachable_after_seconds=3),
    )
    env = own_variables(facade)
    assert facade.metrics_url == f"{facade.url}/metrics"
    assert "AGENT_REGISTRY_FACADE_AUTH_ENABLED" not in env
    assert "AGENT_REGISTRY_FACADE_GC_AFTER_SECONDS" not in env
    assert env["AGENT_REGISTRY_FACADE_HEARTBEAT_INTERVAL_SECONDS"] == "1"
    assert env["AGENT_REGISTRY_FACADE_UNREACHABLE_AFTER_SECONDS"] == "3"
    assert env["AGENT_REGISTRY_FACADE_METRICS_PORT"] == "0"


def test_sidecar_environment(tmp_path: Path) -> None:
    account = InClusterAccount.mount(
        tmp_path / "sa", token="t", ca_file=Path(__file__), namespace="team-a", host="127.0.0.1", port=6443
    )
    sidecar = SidecarProcess(
        LOGS,
        agent_name="cost-1",
        agent_type="cost",
        port=8001,
        namespace=None,
        in_cluster=account,
        host=None,
        capabilities=["a", "b"],
        metadata={"gpu": False},
        pod_name="pod-1",
        base_env={},
    )
    assert sidecar.env == {
        "PYTHONUNBUFFERED": "1",
        "AGENT_SERVICE_ACCOUNT_DIR": str(tmp_path / "sa"),
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": "6443",
        "AGENT_NAME": "cost-1",
        "AGENT_TYPE": "cost",
        "AGENT_PORT": "8001",
        "AGENT_CAPABILITIES": "a,b",
        "AGENT_METADATA": '{"gpu": false}',
        "POD_NAME": "pod-1",
    }
    assert (tmp_path / "sa" / "namespace").read_text() == "team-a"


def test_nothing_of_the_callers_own_settings_leaks_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_REGISTRY_SWEEP_INTERVAL_SECONDS", "99")
    monkeypatch.setenv("AGENT_NAME", "someone-else")
    monkeypatch.setenv("KUBECONFIG", "/elsewhere")
    operator = OperatorProcess(LOGS, kubeconfig=KUBECONFIG, redis_url="redis://r")
    sidecar = SidecarProcess(LOGS, agent_name=None, agent_type="cost", port=1, namespace="n")
    assert operator.env is not None and sidecar.env is not None
    assert "AGENT_REGISTRY_SWEEP_INTERVAL_SECONDS" not in operator.env
    assert operator.env["KUBECONFIG"] == str(KUBECONFIG)
    assert "AGENT_NAME" not in sidecar.env and "KUBECONFIG" not in sidecar.env


def test_operator_ports_and_readiness() -> None:
    quiet = OperatorProcess(LOGS, kubeconfig=KUBECONFIG, redis_url="redis://r", metrics_port=0, liveness_port=0)
    assert quiet.argv[-2:] == ["--liveness", ""]
    assert quiet.ready_urls() == []
    assert quiet.env is not None and quiet.env["AGENT_REGISTRY_METRICS_PORT"] == "0"
    served = OperatorProcess(LOGS, kubeconfig=KUBECONFIG, redis_url="redis://r")
    assert served.ready_urls() == [served.metrics_url, served.liveness_url]
    assert served.argv[-2:] == ["--liveness", served.liveness_url]


def test_wait_for_returns_the_first_truthy_answer() -> None:
    answers = iter([None, 0, "found"])
    assert wait_for("an answer", lambda: next(answers), timeout=5, interval=0.01) == "found"


def test_wait_for_times_out_naming_what_and_the_last_answer() -> None:
    with pytest.raises(WaitTimeoutError, match=r"waiting for nothing \(last: 0\)"):
        wait_for("nothing", lambda: 0, timeout=0.05, interval=0.01)


def test_waiting_on_a_process_that_exits_fails_at_once(tmp_path: Path) -> None:
    process = ManagedProcess("quitter", [sys.executable, "-c", "print('bye')"], tmp_path / "quitter.log")
    process.start()
    with pytest.raises(ProcessExitedError, match="exited with code 0 before ready"):
        process.wait_until(lambda: False, timeout=30, what="ready")
    assert "bye" in process.logs()
