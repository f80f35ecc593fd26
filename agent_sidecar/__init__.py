"""The agent side of the registry: the sidecar that heartbeats into an Agent object, and
the ``AgentRegistration`` client library for agents that speak the REST API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_sidecar.client import AgentRegistration, RegistryClient

__all__ = ["AgentRegistration", "RegistryClient"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the sidecar process never needs httpx, and its memory budget is small.
    if name in __all__:
        from agent_sidecar import client  # noqa: PLC0415 - lazy on purpose

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
