"""A tiny HTTP agent for demos and examples: ``python -m agent_registry.localrun.demo_agent``.

It does no work; it answers what a sidecar and a human look at:

* ``GET /health``: ``{"status": "healthy"}`` (200), or a 503 after ``POST /fail``,
  so a demo can show the Agent turn Degraded and back (``POST /recover``);
* ``GET /.well-known/agent-card.json``: its A2A card, one skill per ``--skills`` id, with
  an ``ETag`` (``304`` to a matching ``If-None-Match``), for a sidecar with
  ``AGENT_CARD_URL`` to record. The card names ``/a2a`` as its JSON-RPC interface, which
  this agent does not implement: it shows what the registry stores and serves;
* ``GET /``: who it is.

Settings: ``--port`` (or ``AGENT_PORT``, default 8001), ``--host`` (default 0.0.0.0, or
``DEMO_AGENT_BIND``), ``--name`` (or ``AGENT_NAME``) and ``--skills`` (comma-separated, or
``DEMO_AGENT_SKILLS``; default ``demo``). SIGTERM and SIGINT stop it cleanly. The same
module runs in the example Deployment of ``manifests/samples/``, as the agent container
next to the sidecar, from the registry's own image.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    failing = False
    name = "demo-agent"
    card = b"{}"
    card_etag = '""'


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "demo-agent/1"

    def do_GET(self) -> None:
        if self.path == "/health":
            if self.server.failing:
                self._reply(503, {"status": "failing"})
            else:
                self._reply(200, {"status": "healthy"})
        elif self.path == CARD_PATH:
            if self.headers.get("If-None-Match") == self.server.card_etag:
                self.send_response(304)
                self.send_header("ETag", self.server.card_etag)
                self.end_headers()
            else:
                self._send(200, self.server.card, {"ETag": self.server.card_etag})
        elif self.path == "/":
            self._reply(200, {"name": self.server.name, "health": "/health", "card": CARD_PATH})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path in ("/fail", "/recover"):
            self.server.failing = self.path == "/fail"
            self._reply(200, {"failing": self.server.failing})
        else:
            self._reply(404, {"error": "not found"})

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, json.dumps(body).encode())

    def _send(self, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # Health probes every few seconds would drown everything else.
        pass


CARD_PATH = "/.well-known/agent-card.json"


def demo_card(name: str, host: str, port: int, skills: list[str]) -> dict[str, Any]:
    """The A2A card of a demo agent: who it is, and a skill per id."""
    return {
        "name": name,
        "description": f"{name}, a demo agent of the Agent Registry's `make run`; it does no work.",
        "version": "1.0.0",
        "supportedInterfaces": [
            {"url": f"http://{host}:{port}/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
        ],
        "capabilities": {"streaming": False, "pushNotifications": False},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["application/json"],
        "skills": [
            {
                "id": skill,
                "name": skill.replace("_", " "),
                "description": f"Pretends to do {skill.replace('_', ' ')}.",
                "tags": [skill, "demo"],
                "examples": [f"run {skill.replace('_', ' ')}"],
            }
            for skill in skills
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_registry.localrun.demo_agent", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("AGENT_PORT", "8001")))
    parser.add_argument("--host", default=os.environ.get("DEMO_AGENT_BIND", "0.0.0.0"))
    parser.add_argument("--name", default=os.environ.get("AGENT_NAME", "demo-agent"))
    parser.add_argument("--skills", default=os.environ.get("DEMO_AGENT_SKILLS", "demo"))
    args = parser.parse_args(argv)
    server = _Server((args.host, args.port), _Handler)
    server.name = args.name
    skills = [skill.strip() for skill in args.skills.split(",") if skill.strip()]
    advertised = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    server.card = json.dumps(demo_card(args.name, advertised, server.server_address[1], skills)).encode()
    server.card_etag = '"' + hashlib.sha256(server.card).hexdigest() + '"'

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever(), which runs on this thread: hand it off.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"demo agent {args.name} listening on {args.host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    print(f"demo agent {args.name} stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
