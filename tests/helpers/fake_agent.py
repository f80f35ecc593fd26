"""A tiny real agent for tests: an HTTP server on loopback whose ``/health`` can be switched.

Modes: ``healthy`` (200 at once), ``slow`` (200 after ``slow_seconds``), ``error``
(500), ``down`` (the port is closed: connections are refused). Back up again, it listens
on the same port, as a restarted agent would. A 200 answers ``body``: any JSON value
(the sidecar's health-body report, see ``agent_sidecar.probe``), or ``bytes`` as they are.

``/.well-known/agent-card.json`` answers ``card`` the same way (404 while it is None), with
an ETag of its bytes that a matching ``If-None-Match`` gets a 304 for, unless
``card_etags`` is off; ``card_requests`` and ``card_not_modified`` count what it was asked.

    with FakeAgent() as agent:
        agent.url             # http://127.0.0.1:<port>/health
        agent.set_mode("slow")
        agent.body = {"status": "healthy", "load": {"in_flight": 3, "max": 10}}
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

Mode = Literal["healthy", "slow", "error", "down"]
CARD_PATH = "/.well-known/agent-card.json"


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
        self.card: Any = None
        self.card_etags = True
        self.card_requests = 0
        self.card_not_modified = 0
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    @property
    def card_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CARD_PATH}"

    def start(self) -> FakeAgent:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == CARD_PATH:
                    self._card()
                    return
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

            def _card(self) -> None:
                agent.card_requests += 1
                card = agent.card
                if card is None:
                    self._answer(404, b'{"error": "no card"}')
                    return
                body = card if isinstance(card, bytes) else json.dumps(card).encode()
                etag = '"' + hashlib.sha256(body).hexdigest() + '"'
                if agent.card_etags and self.headers.get("If-None-Match") == etag:
                    agent.card_not_modified += 1
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self._answer(200, body, {"ETag": etag} if agent.card_etags else {})

            def _answer(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
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
