"""Probe the agent's health endpoint the way a kubelet httpGet probe does.

* ``healthy``: a 2xx answer within the slow threshold;
* ``degraded``: a 2xx that took longer, or any other status (redirects are not followed);
* ``unhealthy``: no answer: refused, reset, or nothing within the timeout.

A 2xx may carry a JSON object that says more; every key is optional, and keys other
than these three are ignored::

    {"status": "healthy" | "degraded" | "unhealthy",
     "capabilities": {"<capability>": {"status": "healthy" | "degraded" | "unhealthy",
                                       "reason": "at most 256 characters"}},
     "load": {"in_flight": 3, "max": 10}}

* ``status`` can only make the answer worse: a slow 2xx saying ``healthy`` is still
  ``degraded``, a quick one saying ``unhealthy`` is ``unhealthy``.
* ``capabilities`` names only capabilities the agent declares (``AGENT_CAPABILITIES``);
  one left out is healthy, so leaving the key out means all are.
* ``load``: whole numbers, ``in_flight`` >= 0 and ``max`` >= 1; left out, no load is reported.

A plain 2xx (empty, text, or JSON that is not an object, without a JSON content type)
says nothing beyond its status. A body that breaks these rules is ignored as a whole, as
if it said nothing, and the problems come back in ``ProbeResult.problems`` for the
caller to log: a health body is the agent's own code, and a bug in it must not stop its
heartbeats. Non-2xx bodies are never read as reports: an error page is not a health body.

A fresh connection per probe, no proxies: the question is whether the agent accepts
connections now, not whether a pooled one still works.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import ssl
import time
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from agent_registry.schema.agent import CapabilityReport, Load, ReportedStatus

# Enough of the body to let the agent finish writing it; health bodies are small.
_MAX_BODY = 64 * 1024
_OBJECT_ERRORS = frozenset({"model_type", "model_attributes_type", "dict_type"})
_SEVERITY = {ReportedStatus.HEALTHY: 0, ReportedStatus.DEGRADED: 1, ReportedStatus.UNHEALTHY: 2}


@dataclasses.dataclass(frozen=True)
class BodyProblem:
    """Why a health body was ignored: the field (``load.max``, ``capabilities.gpu``) and the rule it breaks."""

    field: str
    rule: str


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    status: ReportedStatus
    reason: str
    """Short and stable (``ok``, ``slow``, ``http-500``, ``no-answer``, ``reported-degraded``):
    a change of it is worth a log line."""
    detail: str
    elapsed_seconds: float
    capabilities: Mapping[str, CapabilityReport] = dataclasses.field(default_factory=dict)
    """What the body reported per capability; the capabilities not in it are healthy."""
    load: Load | None = None
    problems: tuple[BodyProblem, ...] = ()
    """Why the body was ignored; empty when it was used or said nothing."""


class HealthBody(BaseModel):
    # Health endpoints often add their own keys (uptime, version): those are not a mistake.
    model_config = ConfigDict(extra="ignore")

    status: ReportedStatus | None = None
    capabilities: dict[str, CapabilityReport] | None = None
    load: Load | None = None


def agent_connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A fresh connection to an endpoint of the agent's own (``url``), and the request target.

    HTTPS is not verified, like the kubelet's probes: the agent's certificate is not what is
    being checked, and the agent in its pod is not a peer to authenticate."""
    parts = urlsplit(url)
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl._create_unverified_context()
        connection = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    return connection, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def failure_detail(error: BaseException) -> str:
    """A request that got no answer, in a few words (some errors have no message)."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def probe(url: str, timeout: float, slow_after: float, capabilities: Collection[str] = ()) -> ProbeResult:
    """GET ``url`` once and classify the answer; ``capabilities`` are those the agent declares."""
    connection, target = agent_connection(url, timeout)
    started = time.monotonic()
    try:
        connection.request("GET", target, headers={"User-Agent": "agent-sidecar-probe", "Accept": "*/*"})
        response = connection.getresponse()
        body = response.read(_MAX_BODY)
    except (OSError, http.client.HTTPException) as error:
        elapsed = time.monotonic() - started
        return ProbeResult(ReportedStatus.UNHEALTHY, "no-answer", failure_detail(error), elapsed)
    finally:
        connection.close()
    elapsed = time.monotonic() - started
    if not 200 <= response.status < 300:
        detail = f"HTTP {response.status} {response.reason}".strip()
        return ProbeResult(ReportedStatus.DEGRADED, f"http-{response.status}", detail, elapsed)
    if elapsed > slow_after:
        status, reason = ReportedStatus.DEGRADED, "slow"
        detail = f"answered in {elapsed:.2f}s, slower than {slow_after:g}s"
    else:
        status, reason, detail = ReportedStatus.HEALTHY, "ok", f"HTTP {response.status}"
    report, problems = read_health_body(body, response.getheader("Content-Type") or "", capabilities)
    if report is None:
        return ProbeResult(status, reason, detail, elapsed, problems=problems)
    if report.status is not None and _SEVERITY[report.status] > _SEVERITY[status]:
        status, reason = report.status, f"reported-{report.status.value}"
        detail = f"HTTP {response.status}, the health body says {report.status.value}"
    return ProbeResult(status, reason, detail, elapsed, report.capabilities or {}, report.load)


def read_health_body(
    body: bytes, content_type: str, capabilities: Collection[str]
) -> tuple[HealthBody | None, tuple[BodyProblem, ...]]:
    """The report in a 2xx body, or None and why not (no problems: the body says nothing)."""
    is_json = "json" in content_type.lower()
    try:
        data: Any = json.loads(body) if body.strip() else None
    except ValueError:
        if not is_json:
            return None, ()
        detail = "must be valid JSON (and at most 64 KiB)" if len(body) >= _MAX_BODY else "must be valid JSON"
        return None, (BodyProblem("body", detail),)
    if not isinstance(data, dict):
        if is_json and data is not None:
            return None, (BodyProblem("body", "must be a JSON object"),)
        return None, ()
    problems: list[BodyProblem] = []
    report: HealthBody | None = None
    try:
        report = HealthBody.model_validate(data)
    except ValidationError as error:
        problems.extend(_problem(entry) for entry in error.errors(include_url=False))
    # Checked on the raw body too, so that one look at the log shows every problem at once.
    named = data.get("capabilities")
    if isinstance(named, dict):
        declared = ", ".join(capabilities) or "none"
        rule = f"is not a capability the agent declares (AGENT_CAPABILITIES: {declared})"
        problems.extend(BodyProblem(f"capabilities.{name}", rule) for name in sorted(set(named) - set(capabilities)))
    return (None, tuple(problems)) if problems else (report, ())


def _problem(entry: Mapping[str, Any]) -> BodyProblem:
    field = ".".join(str(part) for part in entry.get("loc", ()))
    # pydantic's own wording for these names a Python class the agent's author never saw.
    rule = "must be a JSON object" if entry.get("type") in _OBJECT_ERRORS else str(entry.get("msg", "is invalid"))
    return BodyProblem(field or "body", rule)
