"""The one error hierarchy for every call to the Kubernetes API server.

Callers decide what a status means (a 404 on lookup is "unknown agent", a 409 on a
precondition delete is "a heartbeat won the race"), so every answer reaches them as a
typed error; which HTTP library produced it never does.

    ApiError                      status None when nothing answered
    ├── Unavailable               no answer, a timeout, 5xx: try again later
    │   └── TooManyRequests       429, with the server's Retry-After
    └── StatusError               the API server answered 4xx with a Status
        ├── BadRequest (400)  ├── Unauthorized (401)  ├── Forbidden (403)
        ├── NotFound (404)    ├── Conflict (409)      ├── Gone (410)
        └── Invalid (422)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    def __init__(
        self,
        status: int | None,
        reason: str,
        message: str,
        causes: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status if status is not None else 'no answer'} {reason}: {message}".rstrip(": "))
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes or []
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """Worth retrying unchanged: no answer, too many requests, or a server-side error."""
        return self.status is None or self.status == 429 or self.status >= 500

    def describe(self) -> str:
        """The causes, field by field, when the API server named them; else its message."""
        if not self.causes:
            return self.message
        return "; ".join(f"{cause.get('field', '')}: {cause.get('message', '')}".lstrip(": ") for cause in self.causes)


class Unavailable(ApiError):  # noqa: N818 - names the condition callers handle
    """Nothing useful came back: no connection, a timeout, or a 5xx."""


class TooManyRequests(Unavailable):
    """429: the request was not processed; any verb may be repeated after ``retry_after``."""


class StatusError(ApiError):
    """The API server answered with an error Status (4xx)."""


class BadRequest(StatusError):  # noqa: N818
    pass


class Unauthorized(StatusError):  # noqa: N818
    pass


class Forbidden(StatusError):  # noqa: N818
    pass


class NotFound(StatusError):  # noqa: N818
    pass


class Conflict(StatusError):  # noqa: N818
    """Already exists, or a precondition / resourceVersion no longer holds."""


class Gone(StatusError):  # noqa: N818
    """410: e.g. a watch's resourceVersion is too old."""


class Invalid(StatusError):  # noqa: N818
    """422: the object breaks the schema or a validation rule; ``causes`` name the fields."""


_BY_STATUS: dict[int, type[StatusError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
}


def no_answer(what: str) -> Unavailable:
    return Unavailable(None, "NoAnswer", what)


def from_response(status: int, body: bytes | str, retry_after: str | None = None) -> ApiError:
    """The error for an HTTP answer of ``status`` >= 400, from its (Status) body."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        parsed = {}
    document: Mapping[str, Any] = parsed if isinstance(parsed, dict) else {}
    reason = str(document.get("reason", ""))
    message = str(document.get("message", "")) or text[:500]
    causes = list((document.get("details") or {}).get("causes") or [])
    if status == 429:
        return TooManyRequests(status, reason or "TooManyRequests", message, causes, _seconds(retry_after))
    if status >= 500:
        return Unavailable(status, reason or "ServerError", message, causes, _seconds(retry_after))
    return _BY_STATUS.get(status, StatusError)(status, reason, message, causes)


def _seconds(header: str | None) -> float | None:
    if header is None:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        return None
