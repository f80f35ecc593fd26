"""One error shape for everything: ``{"error": "..."}``.

Existing agents read the ``error`` string, so FastAPI's own answers (validation errors,
unknown routes, wrong methods) are rewritten into it too, and validation errors are 400,
as in the original registry, not FastAPI's 422.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent_registry.schema import card
from agent_registry.schema.rest import ErrorResponse, HeartbeatRequest, RegistrationRequest

logger = logging.getLogger(__name__)

AGENT_NOT_FOUND = "Agent not found"


class ApiError(Exception):
    """An answer other than success; raised anywhere, rendered by the handler below."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def not_found(message: str = AGENT_NOT_FOUND) -> ApiError:
    return ApiError(404, message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def unavailable(message: str) -> ApiError:
    # Clients and proxies may retry a 503; Retry-After says when it is worth it.
    return ApiError(503, message, {"Retry-After": "5"})


# A write the facade gave up on can still land: the API server keeps the request, and etcd,
# once a stall ends, commits it (seen in a test: a registration answered 503 during an etcd
# stall, and its Agent appeared when etcd resumed). A client must not read 503 as "nothing
# happened"; every write retries safely (same name, same id; a heartbeat repeats; an
# unregister already done answers 404).
MAY_HAVE_BEEN_APPLIED = "the write may still have been applied; retrying it is safe"
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


# Responses documented on every route, so the OpenAPI schema (and schemathesis) knows
# every status a route can answer.
def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": _DESCRIPTIONS.get(status, "Error")} for status in statuses}


_DESCRIPTIONS = {
    400: "Bad request: the body, a parameter or the id is invalid",
    401: "No valid bearer token",
    403: "RBAC does not allow this",
    404: "Not found",
    409: "Conflicts with the existing agent",
    413: "Request body too large",
    503: "A dependency (the Kubernetes API server, or it and Redis) is unavailable; a write answered 503 may "
    "still have been applied, and retrying it is safe",
}


# Field hints for pattern errors, taken from the models' own descriptions.
def _hints(models: Sequence[type[BaseModel]]) -> dict[str, str]:
    hints: dict[str, str] = {}
    for model in models:
        for name, field in model.model_fields.items():
            if field.description:
                hints.setdefault(name, field.description)
    return hints


_HINTS = {
    **_hints([RegistrationRequest, HeartbeatRequest]),
    "capabilities": "capabilities are lowercase letters, digits, '_', '.' and '-', starting and ending with a "
    "letter or digit",
    "agent_id": "agent ids are UUIDs such as 123e4567-e89b-12d3-a456-426614174000",
    "namespace": "a namespace is a DNS label: lowercase letters, digits and '-'",
}


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """One readable line naming every field that is wrong."""
    parts: list[str] = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        kind = error.get("type", "")
        if kind == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "malformed")
            where = f" at character {loc[1]}" if len(loc) > 1 else ""
            return f"the body is not valid JSON: {reason}{where}"
        part = _describe_body(error) if loc == ["body"] else _describe_field(loc, kind, error)
        if part not in parts:  # a parameter shared by several dependencies is reported once
            parts.append(part)
    return "; ".join(parts) or "invalid request"


def _describe_body(error: Mapping[str, Any]) -> str:
    value = error.get("input")
    if error.get("type") == "missing":
        return "a JSON object body is required"
    if isinstance(value, bytes | str):
        return _unparsed_body(value)
    return f"the body must be a JSON object, not {_json_kind(value)}"


def _describe_field(loc: Sequence[str], kind: str, error: Mapping[str, Any]) -> str:
    field = _field_name(loc)
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    value = error.get("input")
    if field.startswith("agent_card"):
        # The card's rules in the card's words (a pattern by what it means).
        message = card.error_rule(error)
    elif kind == "string_pattern_mismatch":
        head = field.split("[", 1)[0].split(".", 1)[0]
        if head == "agent_id":
            return f"agent id {value!r} is not a UUID"
        hint = _HINTS.get(head)
        if head == "name" and hint:
            return f"name: {value!r} cannot be a Kubernetes object name: {hint.split(': ', 1)[-1]}"
        return f"{field}: {value!r} is not valid" + (f": {hint}" if hint else "")
    if kind != "missing" and _echoable(value):
        message += f" (got {value!r})"
    # "metadata: metadata must ..." reads better as "metadata must ...".
    return message if message.startswith(f"{field} ") else f"{field}: {message}"


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _echoable(value: Any) -> bool:
    """Small scalars are worth repeating back; objects and long strings are not."""
    if isinstance(value, str):
        return len(value) <= 100
    return isinstance(value, int | float | bool) or value is None


def _unparsed_body(raw: bytes | str) -> str:
    try:
        json.loads(raw)
    except ValueError as exc:
        return f"the body is not valid JSON: {exc}"
    return "the body must be sent as JSON (Content-Type: application/json)"


def _field_name(loc: Sequence[str]) -> str:
    # ("body", "capabilities", "0") -> capabilities[0]; ("query", "status") -> status
    name = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or (loc[0] if loc else "request")


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    message = exc.message
    if exc.status == 503 and request.method in _WRITE_METHODS:
        message = f"{message}; {MAY_HAVE_BEEN_APPLIED}"
    return error_response(exc.status, message, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, describe_validation_errors(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, message, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error in %s %s", request.method, request.url.path)
    return error_response(500, "internal error; see the registry's log")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
