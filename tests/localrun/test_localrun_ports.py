"""``make run``'s "is 8080 free" probe, against real sockets on loopback.

A run that has just stopped leaves its connections' server side in TIME_WAIT on the API's
port. uvicorn binds with SO_REUSEADDR and gets the port anyway; the probe must say the same,
or the next run moves the REST API to a random port.
"""

from __future__ import annotations

import socket
import time

from agent_registry.localcluster.process import LOOPBACK
from agent_registry.localrun.stack import port_is_free


def listener(port: int = 0) -> socket.socket:
    # As uvicorn (asyncio's create_server) opens its listening socket.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, port))
    sock.listen()
    return sock


def binds_without_reuse(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def port_left_in_time_wait() -> int:
    """A port whose server just stopped after serving a connection it closed first (as a
    server does when it shuts down), so its end of that connection sits in TIME_WAIT."""
    server = listener()
    port = int(server.getsockname()[1])
    client = socket.create_connection((LOOPBACK, port))
    accepted, _ = server.accept()
    accepted.close()  # the side that closes first is the one left in TIME_WAIT
    assert client.recv(1) == b""
    client.close()
    server.close()
    deadline = time.monotonic() + 5
    while binds_without_reuse(port):
        assert time.monotonic() < deadline, f"port {port} never showed TIME_WAIT"
        time.sleep(0.01)
    return port


def test_a_port_in_time_wait_after_a_run_is_free() -> None:
    port = port_left_in_time_wait()
    # A bind without SO_REUSEADDR fails here (port_left_in_time_wait checked), yet a server
    # can listen, and the probe says so.
    assert port_is_free(port)
    listener(port).close()


def test_a_port_someone_listens_on_is_busy() -> None:
    server = listener()
    try:
        assert not port_is_free(int(server.getsockname()[1]))
    finally:
        server.close()
