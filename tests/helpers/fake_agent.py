"""A tiny real agent for tests: an HTTP server on loopback whose ``/health`` can be switched.

Modes: ``healthy`` (200 at once), ``slow`` (200 after ``slow_seconds``), ``error``
(500), ``down`` (the port is closed: connections are refused). Back up again, it listens
on the same port, as a restarted agent would. A 200 answers ``body``: any JSON value
(the sidecar's health-body report, see ``agent_sidecar.probe``), or ``bytes`` as they are.

    with FakeAgent() as agent:
        agent.url             # http://127.0.0.1:<port>/health
        agent.set_mode("slow")
        agent.body = {"status": "healthy", "load": {"in_flight": 3, "max": 10}}
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

Mode = Literal["healthy", "slow", "error", "down"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A prober that gave up on a slow answer has hung up; that is the point, not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeAgent:
    def __init__(self, slow_seconds: float = 1.0) -> None:
        self.slow_seconds = slow_seconds
        self.mode: Mode = "healthy"
        self.body: Any = {"status": "healthy"}
        self.content_type = "application/json"
        self.requests = 0
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def start(self) -> FakeAgent:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                agent.requests += 1
                if self.path != "/health":
                    self._answer(404, b'{"error": "not found"}')
                elif agent.mode == "error":
                    self._answer(500, b'{"status": "broken"}')
                else:
                    if agent.mode == "slow":
                        time.sleep(agent.slow_seconds)
                    body = agent.body
                    self._answer(200, body if isinstance(body, bytes) else json.dumps(body).encode())

            def _answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", agent.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-agent", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def set_mode(self, mode: Mode) -> None:
        """Switch what ``/health`` does; ``down`` closes the port and any other mode opens it again."""
        if mode == "down":
            self.stop()
        elif self._server is None:
            self.start()
        self.mode = mode

    def __enter__(self) -> FakeAgent:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
