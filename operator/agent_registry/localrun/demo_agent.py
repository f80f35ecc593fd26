"""A tiny HTTP agent for demos and examples: ``python -m agent_registry.localrun.demo_agent``.

It does no work; it answers what a sidecar and a human look at:

* ``GET /health``: ``{"status": "healthy"}`` (200), or a 503 after ``POST /fail``,
  so a demo can show the Agent turn Degraded and back (``POST /recover``);
* ``GET /``: who it is.

Settings: ``--port`` (or ``AGENT_PORT``, default 8001), ``--host`` (default 0.0.0.0, or
``DEMO_AGENT_BIND``) and ``--name`` (or ``AGENT_NAME``). SIGTERM and SIGINT stop it
cleanly. The same module runs in the example Deployment of ``manifests/samples/``, as the
agent container next to the sidecar, from the registry's own image.
"""

from __future__ import annotations

import argparse
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


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "demo-agent/1"

    def do_GET(self) -> None:
        if self.path == "/health":
            if self.server.failing:
                self._reply(503, {"status": "failing"})
            else:
                self._reply(200, {"status": "healthy"})
        elif self.path == "/":
            self._reply(200, {"name": self.server.name, "health": "/health"})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path in ("/fail", "/recover"):
            self.server.failing = self.path == "/fail"
            self._reply(200, {"failing": self.server.failing})
        else:
            self._reply(404, {"error": "not found"})

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # Health probes every few seconds would drown everything else.
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_registry.localrun.demo_agent", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("AGENT_PORT", "8001")))
    parser.add_argument("--host", default=os.environ.get("DEMO_AGENT_BIND", "0.0.0.0"))
    parser.add_argument("--name", default=os.environ.get("AGENT_NAME", "demo-agent"))
    args = parser.parse_args(argv)
    server = _Server((args.host, args.port), _Handler)
    server.name = args.name

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
