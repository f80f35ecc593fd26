"""Who is calling, and may they: the API server decides, through TokenReview and SubjectAccessReview.

The facade holds no users or policies of its own. A caller presents a Kubernetes bearer
token (a service account token, typically); TokenReview says whose it is, and a
SubjectAccessReview for the ``agents`` resource, verb and namespace lets the cluster's RBAC
decide, exactly as if the caller had talked to the API server itself. A RoleBinding is all
an agent needs to be allowed to register.

Decisions are cached briefly (``auth_cache_seconds``), and while the API server is
unreachable, decisions cached within ``auth_stale_seconds`` are still honoured so that
reads served from Redis keep working for callers seen recently.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from agent_registry.facade import metrics
from agent_registry.facade.errors import ApiError, unavailable
from agent_registry.facade.kube import Kube
from agent_registry.facade.settings import FacadeSettings
from agent_registry.kubeapi import StatusError, Unavailable
from agent_registry.schema import constants as c

T = TypeVar("T")
_CACHE_ENTRIES = 10_000
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="agent-registry"'}


@dataclass(frozen=True)
class Caller:
    user: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    authenticated: bool = True


NO_AUTH_CALLER = Caller("agent-registry:auth-disabled", authenticated=False)


@dataclass
class _Entry(Generic[T]):
    value: T
    stored: float


@dataclass
class _Cache(Generic[T]):
    """A bounded cache whose entries are fresh for ``fresh`` seconds and usable in an outage for ``stale``."""

    fresh: float
    stale: float
    entries: OrderedDict[Hashable, _Entry[T]] = field(default_factory=OrderedDict)

    def get(self, key: Hashable, *, outage: bool = False) -> T | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        age = time.monotonic() - entry.stored
        if age <= self.fresh or (outage and age <= max(self.stale, self.fresh)):
            return entry.value
        if age > max(self.stale, self.fresh):
            del self.entries[key]
        return None

    def put(self, key: Hashable, value: T) -> None:
        if self.fresh <= 0 and self.stale <= 0:
            return
        self.entries[key] = _Entry(value, time.monotonic())
        self.entries.move_to_end(key)
        while len(self.entries) > _CACHE_ENTRIES:
            self.entries.popitem(last=False)


class Authenticator:
    def __init__(self, kube: Kube, settings: FacadeSettings) -> None:
        self.kube = kube
        self.enabled = settings.auth_enabled
        self.audiences = list(settings.auth_audiences)
        self._identities: _Cache[Caller] = _Cache(settings.auth_cache_seconds, settings.auth_stale_seconds)
        self._allowed: _Cache[bool] = _Cache(settings.auth_cache_seconds, settings.auth_stale_seconds)
        self._inflight: dict[Hashable, asyncio.Future[Any]] = {}

    async def authenticate(self, authorization: str | None) -> Caller:
        if not self.enabled:
            return NO_AUTH_CALLER
        if not authorization:
            metrics.AUTH.labels(result="unauthenticated").inc()
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'", _CHALLENGE)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            metrics.AUTH.labels(result="unauthenticated").inc()
            raise ApiError(401, "the Authorization header must be 'Bearer <token>'", _CHALLENGE)
        # Tokens are secrets: keep only their digest in memory.
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._identities.get(key)
        if cached is not None:
            return cached
        try:
            caller = await self._single_flight(("token", key), lambda: self._review(token))
        except Unavailable as exc:
            stale = self._identities.get(key, outage=True)
            if stale is not None:
                return stale
            metrics.AUTH.labels(result="error").inc()
            raise unavailable(
                f"cannot check the bearer token: the Kubernetes API server is unavailable ({exc})"
            ) from exc
        self._identities.put(key, caller)
        return caller

    async def authorize(
        self,
        caller: Caller,
        verb: str,
        namespace: str,
        *,
        name: str | None = None,
        subresource: str | None = None,
    ) -> None:
        """Raise 403 unless RBAC lets ``caller`` do ``verb`` on agents (``/subresource``) in ``namespace``.

        A caller allowed on every agent of the namespace is allowed on each one: that is asked
        first, one cached decision per caller and verb, rather than one review per agent name
        (heartbeats come every 30 s, past the cache, so per-name decisions cost a review per
        heartbeat). Only when the namespace-wide answer is no is the name asked about, for
        Roles that list ``resourceNames``.
        """
        if not self.enabled:
            return
        allowed, reason = await self._permitted(caller, verb, namespace, name, subresource)
        if not allowed:
            # Denials are not cached: granting a Role should take effect at once.
            metrics.AUTH.labels(result="denied").inc()
            resource = c.PLURAL + (f"/{subresource}" if subresource else "")
            target = f" {name!r}" if name else ""
            message = f"{caller.user} may not {verb} {resource}{target} in namespace {namespace!r}"
            raise ApiError(403, message + (f": {reason}" if reason else ""))

    async def may(self, caller: Caller, verb: str, namespace: str, *, name: str | None = None) -> bool:
        """Whether RBAC lets ``caller`` do ``verb`` on agents in ``namespace``, as a yes or no
        (for questions such as "may this caller override agents?" that are not themselves refusals)."""
        if not self.enabled:
            return True
        allowed, _ = await self._permitted(caller, verb, namespace, name, None)
        return allowed

    async def _permitted(
        self, caller: Caller, verb: str, namespace: str, name: str | None, subresource: str | None
    ) -> tuple[bool, str]:
        attributes: dict[str, str] = {
            "namespace": namespace,
            "verb": verb,
            "group": c.GROUP,
            "version": c.VERSION,
            "resource": c.PLURAL,
        }
        if subresource:
            attributes["subresource"] = subresource
        allowed, reason = await self._decide(caller, attributes)
        if not allowed and name:
            allowed, reason = await self._decide(caller, {**attributes, "name": name})
        return allowed, reason

    async def _decide(self, caller: Caller, attributes: dict[str, str]) -> tuple[bool, str]:
        key = (caller, tuple(sorted(attributes.items())))
        if self._allowed.get(key):
            return True, ""
        try:
            allowed, reason = await self._single_flight(("sar", key), lambda: self._access_review(caller, attributes))
        except Unavailable as exc:
            if self._allowed.get(key, outage=True):
                return True, ""
            metrics.AUTH.labels(result="error").inc()
            raise unavailable(f"cannot check permissions: the Kubernetes API server is unavailable ({exc})") from exc
        if allowed:
            metrics.AUTH.labels(result="allowed").inc()
            self._allowed.put(key, True)
        return allowed, reason

    async def _review(self, token: str) -> Caller:
        try:
            review = await self.kube.token_review(token, self.audiences)
        except StatusError as exc:
            raise unavailable(f"the registry cannot review tokens (check its RBAC for tokenreviews): {exc}") from exc
        status = review.get("status") or {}
        if not status.get("authenticated"):
            metrics.AUTH.labels(result="unauthenticated").inc()
            detail = status.get("error")
            raise ApiError(401, "the bearer token is not valid" + (f": {detail}" if detail else ""), _CHALLENGE)
        user = status.get("user") or {}
        extra = user.get("extra") or {}
        return Caller(
            user=str(user.get("username", "")),
            uid=str(user.get("uid", "")),
            groups=tuple(user.get("groups") or ()),
            extra=tuple(sorted((k, tuple(v)) for k, v in extra.items())),
        )

    async def _access_review(self, caller: Caller, attributes: dict[str, str]) -> tuple[bool, str]:
        spec: dict[str, Any] = {"user": caller.user, "groups": list(caller.groups), "resourceAttributes": attributes}
        if caller.uid:
            spec["uid"] = caller.uid
        if caller.extra:
            spec["extra"] = {k: list(v) for k, v in caller.extra}
        try:
            review = await self.kube.subject_access_review(spec)
        except StatusError as exc:
            raise unavailable(
                f"the registry cannot check permissions (check its RBAC for subjectaccessreviews): {exc}"
            ) from exc
        status = review.get("status") or {}
        return bool(status.get("allowed")) and not status.get("denied"), str(status.get("reason") or "")

    async def _single_flight(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        """Concurrent requests with the same token or question share one review.

        The review runs as its own task, so a client that hangs up does not cancel it for
        the others waiting on it.
        """
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(call())
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        result: T = await asyncio.shield(task)
        return result

    def _finished(self, key: Hashable, task: asyncio.Future[Any]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved, so an outcome nobody awaited is not logged as lost
