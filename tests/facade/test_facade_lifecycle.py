"""The facade as a process: graceful shutdown (in-flight requests finish, exit 0), secure
defaults, and clear failures for bad settings."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.localcluster.launcher import FacadeProcess
from agent_registry.localcluster.process import wait_for
from facade_harness import facade_for_test, registration
from operator_harness import Agents


def run_facade(env: dict[str, str] | None, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "agent_registry.facade", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def in_flight(facade: FacadeProcess) -> float:
    for line in facade.metrics().splitlines():
        if line.startswith("agent_registry_facade_requests_in_flight "):
            return float(line.split()[1])
    return 0.0


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_sigterm_lets_an_in_flight_request_finish_then_exits_0(facade: FacadeProcess, agents: Agents) -> None:
    body = json.dumps(registration("late-agent")).encode()
    head = (
        "POST /agents/register HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", facade.port), timeout=30) as conn:
        # Half a request: the application is already handling it, waiting for the rest of the body.
        conn.sendall(head + body[:20])
        wait_for("the request to be in flight", lambda: in_flight(facade) >= 1)  # metrics have their own port

        facade.send_signal(signal.SIGTERM)
        wait_for("the listener to close", lambda: refuses_connections(facade.port))
        assert facade.running  # still finishing the request

        conn.sendall(body[20:])
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 201 Created", answer[:300]
    assert facade.wait(timeout=30) == 0
    assert agents.get("late-agent") is not None
    assert "facade stopped" in facade.logs()


def test_sigterm_and_sigint_when_idle_exit_0(make_facade: Callable[..., FacadeProcess]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        facade = make_facade()
        facade.send_signal(sig)
        assert facade.wait(timeout=20) == 0, facade.logs()[-2000:]


def test_authentication_is_on_by_default_and_off_is_loud(
    controlplane: LocalControlPlane, namespace: str, redis_url: str, tmp_path: Path
) -> None:
    default = facade_for_test(controlplane.kubeconfig, namespace, redis_url, tmp_path, name="default", auth=None)
    try:
        default.start()
        assert httpx.get(f"{default.url}/agents").status_code == 401
        assert "AUTHENTICATION IS DISABLED" not in default.logs()
    finally:
        default.stop()
    open_facade = facade_for_test(controlplane.kubeconfig, namespace, redis_url, tmp_path, name="open", auth=False)
    try:
        open_facade.start()
        assert httpx.get(f"{open_facade.url}/agents").status_code == 200
        assert "WARNING" in open_facade.logs() and "AUTHENTICATION IS DISABLED" in open_facade.logs()
    finally:
        open_facade.stop()


def test_bad_settings_fail_at_start_naming_them(
    controlplane: LocalControlPlane, namespace: str, redis_url: str, tmp_path: Path
) -> None:
    facade = facade_for_test(controlplane.kubeconfig, namespace, redis_url, tmp_path)
    facade.env["AGENT_REGISTRY_FACADE_PORT"] = "not-a-port"
    result = run_facade(facade.env)
    assert result.returncode == 2
    assert "port" in result.stderr


def test_inconsistent_heartbeat_settings_are_refused(
    controlplane: LocalControlPlane, namespace: str, redis_url: str, tmp_path: Path
) -> None:
    facade = facade_for_test(
        controlplane.kubeconfig,
        namespace,
        redis_url,
        tmp_path,
        heartbeat_interval_seconds="60",
        unreachable_after_seconds="30",
    )
    result = run_facade(facade.env)
    assert result.returncode == 2
    assert "unreachable_after_seconds must be greater than heartbeat_interval_seconds" in result.stderr


def test_help() -> None:
    result = run_facade(None, "--help")
    assert result.returncode == 0
    assert "AGENT_REGISTRY_FACADE_" in result.stdout
