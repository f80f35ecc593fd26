"""One table of Agent specs, good and bad, that drives both the pydantic models and the
real API server, so the two layers of validation cannot drift apart."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

VALID_SPEC: dict[str, Any] = {
    "type": "cost",
    "host": "10.0.0.5",
    "port": 8001,
    "capabilities": ["spot_migration", "rightsizing"],
    "version": "1.2.0",
    "metadata": {"region": "eu-west-1", "gpu": False, "cores": 8},
}


def spec_with(**changes: Any) -> dict[str, Any]:
    spec = {**VALID_SPEC, **changes}
    return {k: v for k, v in spec.items() if v is not _REMOVE}


_REMOVE = object()


@dataclasses.dataclass(frozen=True)
class BadSpec:
    name: str
    spec: dict[str, Any]
    field: str
    """The path both layers must name in their error, e.g. ``spec.port``."""
    server_rejects: bool = True
    """False for the one rule only the models can enforce (metadata bytes; see
    docs/decisions.md): the API server accepts it, and the test checks exactly that."""


BAD_SPECS = [
    BadSpec("port zero", spec_with(port=0), "spec.port"),
    BadSpec("port 70000", spec_with(port=70000), "spec.port"),
    BadSpec("port as a string", spec_with(port="8001"), "spec.port"),
    BadSpec("uppercase type", spec_with(type="Cost"), "spec.type"),
    BadSpec("empty type", spec_with(type=""), "spec.type"),
    BadSpec("missing host", spec_with(host=_REMOVE), "spec.host"),
    BadSpec("host with spaces", spec_with(host="not a host"), "spec.host"),
    BadSpec("missing port", spec_with(port=_REMOVE), "spec.port"),
    BadSpec("duplicate capability", spec_with(capabilities=["gpu", "gpu"]), "spec.capabilities"),
    BadSpec("uppercase capability", spec_with(capabilities=["Spot_Migration"]), "spec.capabilities[0]"),
    BadSpec("too many capabilities", spec_with(capabilities=[f"cap{i}" for i in range(65)]), "spec.capabilities"),
    BadSpec("too many metadata entries", spec_with(metadata={f"k{i}": i for i in range(65)}), "spec.metadata"),
    BadSpec("metadata over 16 KiB", spec_with(metadata={"blob": "x" * 17000}), "spec.metadata", server_rejects=False),
    BadSpec(
        "unreachable-after equal to interval",
        spec_with(heartbeat={"intervalSeconds": 30, "unreachableAfterSeconds": 30}),
        "spec.heartbeat.unreachableAfterSeconds",
    ),
    BadSpec(
        "interval above the default unreachable-after",
        spec_with(heartbeat={"intervalSeconds": 60}),
        "spec.heartbeat.unreachableAfterSeconds",
    ),
    BadSpec("interval zero", spec_with(heartbeat={"intervalSeconds": 0}), "spec.heartbeat.intervalSeconds"),
    BadSpec("gc-after zero", spec_with(heartbeat={"gcAfterSeconds": 0}), "spec.heartbeat.gcAfterSeconds"),
]


def names_field(text: str, field: str) -> bool:
    """Whether an error text names ``field`` (or one of its list items) as the culprit."""
    return re.search(re.escape(field) + r"(\[\d+\])?(:| in body)", text) is not None


GOOD_SPECS = {
    "full": VALID_SPEC,
    "minimal": {"type": "performance", "host": "perf-agent.default.svc", "port": 1},
    "nested metadata": {**VALID_SPEC, "metadata": {"labels": {"tier": "gold"}, "zones": ["a", "b"]}},
    "ipv6 host and unknown type": {"type": "security-audit", "host": "fd00::12", "port": 65535},
    "short heartbeat": {
        "type": "resource",
        "host": "127.0.0.1",
        "port": 9000,
        "heartbeat": {"intervalSeconds": 1, "unreachableAfterSeconds": 2, "gcAfterSeconds": 1},
    },
}
