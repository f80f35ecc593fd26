"""What both transports share: content types, the retry rule, the answer's meaning."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from agent_registry.kubeapi import errors

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
ATTEMPTS = 3
MAX_RETRY_AFTER_SECONDS = 2.0


def retry_wait(status: int, retry_after: str | None, method: str) -> float | None:
    """Seconds to wait before sending the same request again, as client-go does, or None.

    429 means the request was not processed (overload, or a watch cache still initialising
    after a restart), so any verb may be repeated; a 5xx with Retry-After only for reads,
    since a write may have happened.
    """
    if status != 429 and not (status >= 500 and retry_after is not None and method == "GET"):
        return None
    try:
        seconds = float(retry_after) if retry_after is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.1), MAX_RETRY_AFTER_SECONDS)


def headers(authorization: str | None, content_type: str | None, user_agent: str) -> dict[str, str]:
    result = {"Accept": JSON, "User-Agent": user_agent}
    if authorization:
        result["Authorization"] = authorization
    if content_type:
        result["Content-Type"] = content_type
    return result


def target(path: str, params: Mapping[str, str] | None) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def encode(body: Any) -> bytes | None:
    return None if body is None else json.dumps(body).encode()


def answer(method: str, path: str, status: int, body: bytes, retry_after: str | None) -> dict[str, Any]:
    """The decoded JSON of a successful answer, or the typed error of a failed one."""
    if status >= 400:
        raise errors.from_response(status, body, retry_after)
    if not body:
        return {}
    try:
        decoded = json.loads(body)
    except ValueError as exc:
        raise errors.no_answer(f"unreadable answer to {method} {path}: {exc}") from exc
    return decoded if isinstance(decoded, dict) else {"value": decoded}
