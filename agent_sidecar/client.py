"""``AgentRegistration``: the client library for agents that talk to the registry's REST API.

The interface is the original registry's, unchanged, so existing agents drop it in::

    registration = AgentRegistration("cost-agent-1", "cost", "10.0.0.7", 8001, ["spot_migration"],
                                     orchestrator_url="http://agent-registry", version="1.0.0")
    if registration.register():
        registration.start_heartbeat()
    ...
    registration.unregister()

Beyond the original: an optional bearer token (the registry checks it against Kubernetes
RBAC), a context manager that registers on enter and unregisters on exit, a heartbeat
thread that survives transient errors and registers again when the registry answers 404
(the agent was garbage-collected while it could not heartbeat), and an asyncio variant,
``AsyncAgentRegistration`` in ``agent_sidecar.aio_client``.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx

logger = logging.getLogger(__name__)

DEFAULT_ORCHESTRATOR_URL = "http://localhost:8080"
DEFAULT_VERSION = "1.0.0"
DEFAULT_HEARTBEAT_INTERVAL_SECONDS = 30
DEFAULT_TIMEOUT_SECONDS = 10.0
# After a failed heartbeat the next one comes sooner than the interval, so that a short
# outage costs the agent little: 1 s, 2 s, 4 s ... capped at the interval.
_FIRST_RETRY_SECONDS = 1.0

HeartbeatStatus = Literal["healthy", "degraded", "unhealthy"]
StatusProvider = Callable[[], str]


class RegistrationError(RuntimeError):
    """Registration failed where failing silently is not an option (the context manager)."""


class Outcome(enum.Enum):
    OK = "ok"
    GONE = "gone"
    """The registry does not know the agent (404): it was removed, register again."""
    FAILED = "failed"


class RegistrationProtocol:
    """What the sync and async clients share: the requests and the reading of the answers."""

    def __init__(
        self,
        agent_name: str,
        agent_type: str,
        host: str,
        port: int,
        capabilities: Iterable[str],
        orchestrator_url: str = DEFAULT_ORCHESTRATOR_URL,
        version: str = DEFAULT_VERSION,
        metadata: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        status_provider: StatusProvider | None = None,
    ) -> None:
        if token and token_file:
            raise ValueError("give token or token_file, not both")
        self.agent_name = agent_name
        self.agent_type = agent_type
        self.host = host
        self.port = port
        self.capabilities = list(capabilities)
        self.orchestrator_url = orchestrator_url.rstrip("/")
        self.version = version
        self.metadata = dict(metadata) if metadata else None
        self.token = token
        self.token_file = Path(token_file) if token_file else None
        self.namespace = namespace
        self.timeout = timeout
        self.status_provider = status_provider
        self.agent_id: str | None = None
        self.registered_at: str | None = None
        self.heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL_SECONDS
        self.running = False

    # --- requests ------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.orchestrator_url}{path}"

    def _params(self) -> dict[str, str]:
        return {"namespace": self.namespace} if self.namespace else {}

    def _headers(self) -> dict[str, str]:
        # A projected service account token is rotated on disk: read it for every request.
        token = self.token_file.read_text().strip() if self.token_file else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _registration_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.agent_name,
            "type": self.agent_type,
            "host": self.host,
            "port": self.port,
            "capabilities": self.capabilities,
            "version": self.version,
        }
        if self.metadata:
            body["metadata"] = self.metadata
        return body

    def _current_status(self) -> str:
        if self.status_provider is None:
            return "healthy"
        try:
            return str(self.status_provider())
        except Exception:
            logger.exception("the status provider of %s failed; reporting unhealthy", self.agent_name)
            return "unhealthy"

    @staticmethod
    def _heartbeat_body(status: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"status": status}
        if metadata:
            body["metadata"] = dict(metadata)
        return body

    # --- answers -------------------------------------------------------------------------

    def _accept_registration(self, response: httpx.Response) -> bool:
        if response.status_code not in (200, 201):
            logger.error(
                "registering %s failed: HTTP %s %s", self.agent_name, response.status_code, _error_text(response)
            )
            return False
        try:
            body = response.json()
            self.agent_id = str(body["agent_id"])
        except (ValueError, KeyError, TypeError):
            logger.error("registering %s: unreadable answer %r", self.agent_name, response.text[:300])
            return False
        self.registered_at = body.get("registered_at")
        interval = body.get("heartbeat_interval_seconds")
        if isinstance(interval, int) and interval > 0:
            self.heartbeat_interval = interval
        logger.info(
            "registered %s as %s (heartbeat every %ss)", self.agent_name, self.agent_id, self.heartbeat_interval
        )
        return True

    def _heartbeat_outcome(self, response: httpx.Response) -> Outcome:
        if response.status_code == 200:
            try:
                interval = response.json().get("next_interval_seconds")
            except ValueError:
                interval = None
            if isinstance(interval, int) and interval > 0:
                self.heartbeat_interval = interval
            return Outcome.OK
        if response.status_code == 404:
            logger.warning("the registry no longer knows %s (%s); registering again", self.agent_name, self.agent_id)
            return Outcome.GONE
        logger.warning(
            "heartbeat of %s failed: HTTP %s %s", self.agent_name, response.status_code, _error_text(response)
        )
        return Outcome.FAILED

    def _delay(self, outcome: Outcome, failures: int) -> float:
        """Seconds until the next heartbeat: the interval after a success (a little less, so
        that jitter never makes one late), quick retries with backoff after failures."""
        if outcome is Outcome.OK:
            return self.heartbeat_interval * random.uniform(0.9, 1.0)
        backoff = _FIRST_RETRY_SECONDS * float(2 ** max(failures - 1, 0))
        return min(backoff, float(self.heartbeat_interval)) * random.uniform(0.8, 1.0)


class AgentRegistration(RegistrationProtocol):
    """Registers an agent with the registry and heartbeats from a daemon thread.

    ``register()`` returns False rather than raise, as the original did; the context manager
    raises ``RegistrationError`` instead, since the block would otherwise run unregistered.
    """

    def __init__(
        self,
        agent_name: str,
        agent_type: str,
        host: str,
        port: int,
        capabilities: Iterable[str],
        orchestrator_url: str = DEFAULT_ORCHESTRATOR_URL,
        version: str = DEFAULT_VERSION,
        metadata: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        status_provider: StatusProvider | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            agent_name,
            agent_type,
            host,
            port,
            capabilities,
            orchestrator_url,
            version,
            metadata,
            token=token,
            token_file=token_file,
            namespace=namespace,
            timeout=timeout,
            status_provider=status_provider,
        )
        self._client = httpx.Client(timeout=timeout, transport=transport)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the original interface ------------------------------------------------------------

    def register(self) -> bool:
        """POST /agents/register; keeps ``agent_id`` and the heartbeat interval. False on failure."""
        with self._lock:
            try:
                response = self._client.post(
                    self._url("/agents/register"),
                    json=self._registration_body(),
                    params=self._params(),
                    headers=self._headers(),
                )
            except (httpx.HTTPError, OSError) as exc:
                logger.error("registering %s failed: %s", self.agent_name, exc)
                return False
            return self._accept_registration(response)

    def start_heartbeat(self) -> None:
        """Heartbeat every interval from a daemon thread, until ``stop_heartbeat_loop()``."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self.running = True
        self._thread = threading.Thread(
            target=self._heartbeat_loop, name=f"agent-heartbeat-{self.agent_name}", daemon=True
        )
        self._thread.start()

    def stop_heartbeat_loop(self) -> None:
        self.running = False
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # A heartbeat in flight finishes within the request timeout.
            thread.join(timeout=self.timeout + 1)
        self._thread = None

    def unregister(self) -> bool:
        """Stop heartbeats, then POST /agents/{id}/unregister. True when the agent is gone."""
        self.stop_heartbeat_loop()
        agent_id = self.agent_id
        if agent_id is None:
            return False
        try:
            response = self._client.post(
                self._url(f"/agents/{agent_id}/unregister"), params=self._params(), headers=self._headers()
            )
        except (httpx.HTTPError, OSError) as exc:
            logger.error("unregistering %s failed: %s", self.agent_name, exc)
            return False
        if response.status_code in (200, 404):  # 404: already gone, which is what was asked
            self.agent_id = None
            logger.info("unregistered %s (%s)", self.agent_name, agent_id)
            return True
        logger.error(
            "unregistering %s failed: HTTP %s %s", self.agent_name, response.status_code, _error_text(response)
        )
        return False

    # --- beyond the original ---------------------------------------------------------------

    def send_heartbeat(self, status: str = "healthy", metadata: Mapping[str, Any] | None = None) -> bool:
        """One heartbeat now; True when the registry recorded it."""
        return self._heartbeat_once(status, metadata) is Outcome.OK

    def close(self) -> None:
        self.stop_heartbeat_loop()
        self._client.close()

    def __enter__(self) -> AgentRegistration:
        if not self.register():
            raise RegistrationError(f"could not register {self.agent_name} with {self.orchestrator_url}")
        self.start_heartbeat()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.unregister()
        finally:
            self.close()

    # --- internals ---------------------------------------------------------------------------

    def _heartbeat_once(self, status: str, metadata: Mapping[str, Any] | None) -> Outcome:
        agent_id = self.agent_id
        if agent_id is None:
            return Outcome.GONE
        try:
            response = self._client.post(
                self._url(f"/agents/{agent_id}/heartbeat"),
                json=self._heartbeat_body(status, metadata),
                params=self._params(),
                headers=self._headers(),
            )
        except (httpx.HTTPError, OSError) as exc:
            logger.warning("heartbeat of %s failed: %s", self.agent_name, exc)
            return Outcome.FAILED
        return self._heartbeat_outcome(response)

    def _heartbeat_loop(self) -> None:
        failures = 0
        delay = 0.0  # the first heartbeat goes at once
        while not self._stop.wait(delay):
            try:
                outcome = self._heartbeat_once(self._current_status(), None)
                if outcome is Outcome.GONE and not self._stop.is_set():
                    outcome = Outcome.OK if self.register() else Outcome.FAILED
            except Exception:
                # Whatever happens, the agent keeps heartbeating: a dead thread is a dead agent.
                logger.exception("heartbeat of %s failed unexpectedly", self.agent_name)
                outcome = Outcome.FAILED
            failures = 0 if outcome is Outcome.OK else failures + 1
            delay = self._delay(outcome, failures)


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("error", body)) if isinstance(body, dict) else str(body)[:300]
