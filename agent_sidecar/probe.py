"""Probe the agent's health endpoint the way a kubelet httpGet probe does.

* ``healthy``: a 2xx answer within the slow threshold;
* ``degraded``: a 2xx that took longer, or any other status (redirects are not followed);
* ``unhealthy``: no answer: refused, reset, or nothing within the timeout.

A fresh connection per probe, no proxies: the question is whether the agent accepts
connections now, not whether a pooled one still works.
"""

from __future__ import annotations

import dataclasses
import http.client
import ssl
import time
from urllib.parse import urlsplit

from agent_registry.schema.agent import ReportedStatus

# Enough of the body to let the agent finish writing it; health bodies are small.
_MAX_BODY = 64 * 1024


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    status: ReportedStatus
    reason: str
    """Short and stable (``ok``, ``slow``, ``http-500``, ``no-answer``): a change of it is worth a log line."""
    detail: str
    elapsed_seconds: float


def probe(url: str, timeout: float, slow_after: float) -> ProbeResult:
    """GET ``url`` once and classify the answer."""
    parts = urlsplit(url)
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        # Like the kubelet's probes: the agent's certificate is not what is being checked.
        context = ssl._create_unverified_context()
        connection = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    started = time.monotonic()
    try:
        connection.request("GET", target, headers={"User-Agent": "agent-sidecar-probe", "Accept": "*/*"})
        response = connection.getresponse()
        response.read(_MAX_BODY)
    except (OSError, http.client.HTTPException) as error:
        elapsed = time.monotonic() - started
        detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        return ProbeResult(ReportedStatus.UNHEALTHY, "no-answer", detail, elapsed)
    finally:
        connection.close()
    elapsed = time.monotonic() - started
    if not 200 <= response.status < 300:
        detail = f"HTTP {response.status} {response.reason}".strip()
        return ProbeResult(ReportedStatus.DEGRADED, f"http-{response.status}", detail, elapsed)
    if elapsed > slow_after:
        detail = f"answered in {elapsed:.2f}s, slower than {slow_after:g}s"
        return ProbeResult(ReportedStatus.DEGRADED, "slow", detail, elapsed)
    return ProbeResult(ReportedStatus.HEALTHY, "ok", f"HTTP {response.status}", elapsed)
