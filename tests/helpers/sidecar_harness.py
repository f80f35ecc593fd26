"""The real sidecar as a subprocess beside a fake agent, with quick test settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent_registry.localcluster.launcher import HeartbeatTimings, SidecarProcess
from fake_agent import FakeAgent

QUICK = HeartbeatTimings(interval_seconds=1, unreachable_after_seconds=5)


def sidecar_for_test(log_dir: Path, agent: FakeAgent, *, name: str = "sidecar", **settings: Any) -> SidecarProcess:
    """A sidecar for ``agent``, with nothing from this machine but ``PATH``: ``HOME`` is
    ``log_dir``, so there is no ~/.kube/config and no in-cluster variable to fall back on.
    ``settings`` (field names, or the launcher's own arguments) override the defaults."""
    defaults: dict[str, Any] = {
        "agent_type": "cost",
        "port": agent.port,
        "health_url": agent.url,
        "timings": QUICK,
        # Generous against a busy machine: healthy is under 0.5 s, the fake's slow mode 1.5 s.
        "probe_timeout_seconds": 3,
        "probe_slow_seconds": 0.5,
        "shutdown_timeout_seconds": 10,
    }
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(log_dir)}
    return SidecarProcess(log_dir, name=name, base_env=base, cwd=log_dir, **(defaults | settings))
