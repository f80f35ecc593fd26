"""One agent must not speak for another: the owner rule, applied by the facade to REST callers.

The facade writes every REST agent with its own service account, which may ``override``
agents, so the chart's admission policy (templates/owner-restriction-policy.yaml) does not
stop it; it checks its callers itself, by the same rule. An Agent's registered-by
annotation names the user that registered it (the facade records the caller's TokenReview
username there). Heartbeats, re-registrations and unregisters by anyone else are refused
with 403 unless RBAC lets that caller ``override`` agents in the namespace. An Agent
without the annotation is unowned: anyone RBAC allows may write it.

Who registered an object changes only through someone allowed to override, so the answer
is kept per object uid for a few minutes: a REST agent heartbeating every 30 s costs one
read of its Agent per replica every few minutes, not one per heartbeat.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from agent_registry.facade.auth import Authenticator, Caller
from agent_registry.facade.errors import ApiError
from agent_registry.kubeapi import objects
from agent_registry.schema import constants as c

CACHE_SECONDS = 300.0
_CACHE_ENTRIES = 10_000


class Owners:
    """Who registered each Agent, by (namespace, name, uid), as recently read or written."""

    def __init__(self, auth: Authenticator, cache_seconds: float = CACHE_SECONDS) -> None:
        self.auth = auth
        self.cache_seconds = cache_seconds
        self._entries: OrderedDict[tuple[str, str, str], tuple[str, float]] = OrderedDict()

    def remember(self, resource: dict[str, Any]) -> str:
        """Note who registered ``resource`` (an Agent as the API server returned it); that owner."""
        owner = objects.registered_by(resource) or ""
        uid = objects.uid(resource)
        if uid and self.cache_seconds > 0:
            key = (objects.namespace(resource), objects.name(resource), uid)
            self._entries[key] = (owner, time.monotonic())
            self._entries.move_to_end(key)
            while len(self._entries) > _CACHE_ENTRIES:
                self._entries.popitem(last=False)
        return owner

    def known(self, namespace: str, name: str, uid: str) -> str | None:
        """The owner remembered for this object, or None when it must be read."""
        entry = self._entries.get((namespace, name, uid)) if uid else None
        if entry is None:
            return None
        owner, stored = entry
        if time.monotonic() - stored > self.cache_seconds:
            del self._entries[(namespace, name, uid)]
            return None
        return owner

    async def require(self, caller: Caller, namespace: str, name: str, owner: str, action: str) -> None:
        """Raise 403 unless ``caller`` registered the agent, it is unowned, or the caller may override."""
        if not caller.authenticated or not owner or owner == caller.user:
            return
        if await self.auth.may(caller, c.OVERRIDE_VERB, namespace, name=name):
            return
        raise ApiError(
            403,
            f"agent {name!r} in namespace {namespace!r} is registered by {owner}: only that identity, or one "
            f"allowed to {c.OVERRIDE_VERB!r} agents there, may {action} it (owner rule); {caller.user} may not",
        )
