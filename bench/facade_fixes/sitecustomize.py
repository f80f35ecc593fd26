"""The facade fixes the benchmark proposes, applied as monkeypatches for a before/after run.

NOT production code: ``python -m bench --facade-fixes`` puts this directory first on the
facade process's PYTHONPATH, so Python imports this module at start-up and it patches the
facade before the app is built. Each patch names the bottleneck it removes (measured with
py-spy, see docs/performance.md); the real fix belongs in the facade's own modules.

1. Read-your-writes overlay on every query (``reads.Reads.query``): each query re-validated
   every write this process made in the last ``read_your_writes_seconds`` (pydantic, per
   write, per query): O(heartbeats/s x 10 s) work per query, 58 % of a query's CPU at
   1,000 agents. A heartbeat cannot change whether an agent matches a type/capability
   query, so heartbeat writes are kept for ``GET /agents/{id}`` but left out of the
   overlay that queries walk.
2. One SubjectAccessReview per heartbeat (``auth.Authenticator.authorize``): the decision
   cache is keyed by agent name and lives 10 s, heartbeats come every 30 s, so every
   heartbeat cost an extra API-server round trip (12 % of the facade's CPU). A caller
   allowed namespace-wide is allowed for every name: ask that first (one cached decision
   per caller), and ask per name only when it is denied.
3. TLS handshakes to the API server (``kube.Kube``): 100 connections but only 20 kept
   alive, so above 20 concurrent calls each new one pays a TLS handshake. Keep them all.
"""

from __future__ import annotations

import contextvars
from typing import Any

import httpx

# --- 3. keep every connection to the API server alive ----------------------------------------
_Limits = httpx.Limits


class _KeepAllAlive(_Limits):  # type: ignore[misc,valid-type]
    def __init__(self, *, max_connections: int | None = None, max_keepalive_connections: int | None = None,
                 keepalive_expiry: float | None = 5.0) -> None:  # fmt: skip
        keep = max_connections if max_connections is not None else max_keepalive_connections
        super().__init__(
            max_connections=max_connections, max_keepalive_connections=keep, keepalive_expiry=keepalive_expiry
        )


httpx.Limits = _KeepAllAlive  # type: ignore[misc]

# --- 1. heartbeats stay out of the query overlay ----------------------------------------------
from agent_registry.facade import recent as _recent  # noqa: E402
from agent_registry.facade import writes as _writes  # noqa: E402

_in_heartbeat: contextvars.ContextVar[bool] = contextvars.ContextVar("in_heartbeat", default=False)
_heartbeat_only: set[str] = set()
_wrote = _recent.RecentWrites.wrote
_deleted = _recent.RecentWrites.deleted
_in_namespace = _recent.RecentWrites.in_namespace
_heartbeat = _writes.Writes.heartbeat


def _wrote_patched(self: Any, agent_id: str, *args: Any, **kwargs: Any) -> None:
    if _in_heartbeat.get():
        _heartbeat_only.add(agent_id)
    else:
        _heartbeat_only.discard(agent_id)
    _wrote(self, agent_id, *args, **kwargs)


def _deleted_patched(self: Any, agent_id: str, *args: Any, **kwargs: Any) -> None:
    _heartbeat_only.discard(agent_id)
    _deleted(self, agent_id, *args, **kwargs)


def _in_namespace_patched(self: Any, namespace: str) -> Any:
    return (entry for entry in _in_namespace(self, namespace) if entry.agent_id not in _heartbeat_only)


async def _heartbeat_patched(self: Any, *args: Any, **kwargs: Any) -> Any:
    token = _in_heartbeat.set(True)
    try:
        return await _heartbeat(self, *args, **kwargs)
    finally:
        _in_heartbeat.reset(token)


_recent.RecentWrites.wrote = _wrote_patched  # type: ignore[method-assign]
_recent.RecentWrites.deleted = _deleted_patched  # type: ignore[method-assign]
_recent.RecentWrites.in_namespace = _in_namespace_patched  # type: ignore[method-assign]
_writes.Writes.heartbeat = _heartbeat_patched  # type: ignore[method-assign]

# --- 2. one namespace-wide authorisation per caller -------------------------------------------
from agent_registry.facade import auth as _auth  # noqa: E402
from agent_registry.facade.errors import ApiError  # noqa: E402

_authorize = _auth.Authenticator.authorize


async def _authorize_patched(
    self: Any, caller: Any, verb: str, namespace: str, *, name: str | None = None, subresource: str | None = None
) -> None:
    if name is not None:
        try:
            await _authorize(self, caller, verb, namespace, subresource=subresource)
            return
        except ApiError as exc:
            if exc.status != 403:
                raise
    await _authorize(self, caller, verb, namespace, name=name, subresource=subresource)


_auth.Authenticator.authorize = _authorize_patched  # type: ignore[method-assign]
