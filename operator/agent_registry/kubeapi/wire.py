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


def prepare(
    authorization: str | None, body: Any, content_type: str | None, user_agent: str, accept: str = JSON
) -> tuple[dict[str, str], bytes | None]:
    """The headers and the encoded body of one request (a body is JSON unless said otherwise)."""
    headers = {"Accept": accept, "User-Agent": user_agent}
    if authorization:
        headers["Authorization"] = authorization
    if body is not None:
        headers["Content-Type"] = content_type or JSON
    return headers, None if body is None else json.dumps(body).encode()


LIST_PAGE = 500
"""Items per page of a LIST, so 10,000 objects are not one response."""


def first_page(label_selector: str | None, field_selector: str | None = None) -> dict[str, str]:
    params = {"limit": str(LIST_PAGE)}
    if label_selector:
        params["labelSelector"] = label_selector
    if field_selector:
        params["fieldSelector"] = field_selector
    return params


def next_page(page: Mapping[str, Any], params: Mapping[str, str]) -> dict[str, str] | None:
    """The parameters of the page after ``page``, or None after the last."""
    token = (page.get("metadata") or {}).get("continue")
    return {**params, "continue": token} if token else None


def target(path: str, params: Mapping[str, str] | None) -> str:
    return f"{path}?{urlencode(params)}" if params else path


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
