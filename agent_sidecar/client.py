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
(the agent was garbage-collected while it could not heartbeat), an asyncio variant,
``AsyncAgentRegistration`` in ``agent_sidecar.aio_client``, and heartbeats that report the
agent's load and the health of each capability::

    registration.send_heartbeat("healthy", load=(3, 10),
                                capabilities={"rightsizing": ("unhealthy", "pricing feed down")})

Every heartbeat is a full report: a capability it does not name is healthy, and without
``load`` the agent reports none. The heartbeat thread asks ``status_provider``,
``load_provider`` and ``capability_provider`` (constructor arguments) before each beat.

Finding an agent: ``RegistryClient(orchestrator_url).route("cost", ["rightsizing"],
key="tenant-7", version=">=1.4,<2")`` answers the REST ``Agent`` the registry picks, or
None when no agent fits; ``AgentRegistration.route`` is the same call.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx
from pydantic import ValidationError

from agent_registry.schema import constants as c
from agent_registry.schema.agent import CapabilityReport, Load, ReportedStatus
from agent_registry.schema.card import AgentCard, card_errors
from agent_sidecar import watching

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
LoadReport = Load | tuple[int, int]
"""A ``Load``, or ``(in_flight, max)``."""
CapabilityStatus = str | tuple[str, str] | CapabilityReport
"""``"degraded"``, ``("degraded", "why")`` or a ``CapabilityReport``."""
LoadProvider = Callable[[], LoadReport | None]
CapabilityProvider = Callable[[], Mapping[str, CapabilityStatus] | None]


class RegistrationError(RuntimeError):
    """Registration failed where failing silently is not an option (the context manager)."""


class RegistryError(RuntimeError):
    """A query the registry did not answer: no answer at all (``status`` None), or an HTTP error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BadQueryError(RegistryError, ValueError):
    """The registry refused the query itself (400), e.g. a version constraint it cannot read."""


class Outcome(enum.Enum):
    OK = "ok"
    GONE = "gone"
    """The registry does not know the agent (404): it was removed, register again."""
    FAILED = "failed"


class RegistryConnection:
    """Where the registry is and how to ask it, and the ``route`` query's request and answer:
    what every client here shares, sync or async, agent or orchestrator."""

    def __init__(
        self,
        orchestrator_url: str = DEFAULT_ORCHESTRATOR_URL,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        if token and token_file:
            raise ValueError("give token or token_file, not both")
        self.orchestrator_url = orchestrator_url.rstrip("/")
        self.token = token
        self.token_file = Path(token_file) if token_file else None
        self.namespace = namespace
        self.timeout = timeout

    def _url(self, path: str) -> str:
        return f"{self.orchestrator_url}{path}"

    def _params(self) -> dict[str, str]:
        return {"namespace": self.namespace} if self.namespace else {}

    def _headers(self) -> dict[str, str]:
        # A projected service account token is rotated on disk: read it for every request.
        token = self.token_file.read_text().strip() if self.token_file else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _route_params(
        self,
        agent_type: str,
        capabilities: Iterable[str],
        key: str | None,
        version: str | None,
        namespace: str | None,
    ) -> httpx.QueryParams:
        # A lone string is one capability, not the characters of one.
        wanted = [capabilities] if isinstance(capabilities, str) else list(capabilities)
        params: dict[str, str | list[str]] = {"type": agent_type, "capability": wanted}
        optional = {"key": key, "version": version, "namespace": namespace or self.namespace}
        params.update({name: value for name, value in optional.items() if value is not None})
        return httpx.QueryParams(params)

    @staticmethod
    def _route_answer(response: httpx.Response) -> dict[str, Any] | None:
        if response.status_code == 404:
            return None
        if response.status_code == 400:
            raise BadQueryError(f"the registry refused the route query: {_error_text(response)}", 400)
        if response.status_code != 200:
            message = f"route query failed: HTTP {response.status_code} {_error_text(response)}"
            raise RegistryError(message, response.status_code)
        try:
            agent = response.json()
        except ValueError:
            agent = None
        if not isinstance(agent, dict):
            raise RegistryError(f"route query: unreadable answer {response.text[:300]!r}", response.status_code)
        return agent

    @staticmethod
    def _unanswered(exc: Exception) -> RegistryError:
        return RegistryError(f"route query failed: {type(exc).__name__}: {exc}")


class RegistrationProtocol(RegistryConnection):
    """What the sync and async registration clients share: the requests and the reading of the answers."""

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
        load_provider: LoadProvider | None = None,
        capability_provider: CapabilityProvider | None = None,
        agent_card: Mapping[str, Any] | AgentCard | None = None,
    ) -> None:
        super().__init__(orchestrator_url, token=token, token_file=token_file, namespace=namespace, timeout=timeout)
        self.agent_name = agent_name
        self.agent_type = agent_type
        self.host = host
        self.port = port
        self.capabilities = list(capabilities)
        self.version = version
        self.metadata = dict(metadata) if metadata else None
        self.status_provider = status_provider
        self.load_provider = load_provider
        self.capability_provider = capability_provider
        self.agent_card = _checked_card(agent_card)
        self.agent_id: str | None = None
        self.registered_at: str | None = None
        self.heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL_SECONDS
        self.running = False

    # --- requests ------------------------------------------------------------------------

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
        if self.agent_card is not None:
            body["agent_card"] = self.agent_card
        return body

    def _current_status(self) -> str:
        if self.status_provider is None:
            return "healthy"
        try:
            return str(self.status_provider())
        except Exception:
            logger.exception("the status provider of %s failed; reporting unhealthy", self.agent_name)
            return "unhealthy"

    def _current_load(self) -> Load | None:
        """The load provider's answer; none when it fails, since a wrong load is worse than none."""
        if self.load_provider is None:
            return None
        try:
            return load_report(self.load_provider())
        except Exception:
            logger.exception("the load provider of %s failed; reporting no load", self.agent_name)
            return None

    def _current_capabilities(self) -> dict[str, CapabilityReport] | None:
        """The capability provider's answer. When it fails, every capability is reported
        unhealthy, as a failing status provider reports the agent: nothing may be routed
        to a capability on the word of code that just broke."""
        if self.capability_provider is None:
            return None
        try:
            answer = self.capability_provider()
        except Exception as exc:
            logger.exception(
                "the capability provider of %s failed; reporting every capability unhealthy", self.agent_name
            )
            # Only the type: the reason is stored on the Agent, and an exception's text may hold anything.
            return self._all_unhealthy(f"the capability provider failed: {type(exc).__name__}")
        try:
            return capability_reports(answer, self.capabilities)
        except ValueError as exc:
            logger.error(
                "the capability provider of %s answered a bad report (%s); reporting every capability unhealthy",
                self.agent_name,
                exc,
            )
            return self._all_unhealthy(f"the capability provider's report is invalid: {exc}")

    def _all_unhealthy(self, reason: str) -> dict[str, CapabilityReport]:
        reason = reason[: c.MAX_CAPABILITY_REASON_LENGTH]
        return {name: CapabilityReport(status=ReportedStatus.UNHEALTHY, reason=reason) for name in self.capabilities}

    def _current_heartbeat(self) -> dict[str, Any]:
        """The heartbeat loop's next body, from the providers; never raises for their answers,
        since ``_current_load`` and ``_current_capabilities`` replace the ones that fail."""
        return self._heartbeat_body(self._current_status(), None, self._current_load(), self._current_capabilities())

    def _heartbeat_body(
        self,
        status: str,
        metadata: Mapping[str, Any] | None,
        load: LoadReport | None = None,
        capabilities: Mapping[str, CapabilityStatus] | None = None,
    ) -> dict[str, Any]:
        """The ``HeartbeatRequest``; ``ValueError`` naming the field for a load or capability
        report the schema refuses. ``status`` is left to the registry, as it always was."""
        checked_load = load_report(load)
        checked_capabilities = capability_reports(capabilities, self.capabilities)
        body: dict[str, Any] = {"status": status}
        if metadata:
            body["metadata"] = dict(metadata)
        if checked_capabilities:
            body["capabilities"] = {
                name: report.model_dump(mode="json", exclude_defaults=True)
                for name, report in checked_capabilities.items()
            }
        if checked_load is not None:
            body["load"] = checked_load.model_dump(mode="json")
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


def load_report(load: LoadReport | None) -> Load | None:
    """``load`` as the schema's ``Load``; ``ValueError`` naming the field when it is not one."""
    if load is None or isinstance(load, Load):
        return load
    if not isinstance(load, tuple) or len(load) != 2:
        raise ValueError(f"load: must be a Load or an (in_flight, max) tuple, not {load!r}")
    try:
        return Load(in_flight=load[0], max=load[1])
    except ValidationError as error:
        raise ValueError(_first_problem("load", error)) from None


def capability_reports(
    capabilities: Mapping[str, CapabilityStatus] | None, declared: Collection[str]
) -> dict[str, CapabilityReport] | None:
    """``capabilities`` as the schema's ``CapabilityReport`` by name, for an agent that
    declares ``declared``; ``ValueError`` naming the field for anything else."""
    if capabilities is None:
        return None
    if not isinstance(capabilities, Mapping):
        raise ValueError(f"capabilities: must map capability names to a status, not {capabilities!r}")
    reports: dict[str, CapabilityReport] = {}
    for name, given in capabilities.items():
        field = f"capabilities.{name}"
        if name not in declared:
            raise ValueError(f"{field}: not one of this agent's capabilities ({', '.join(declared) or 'none'})")
        if isinstance(given, CapabilityReport):
            reports[name] = given
            continue
        if isinstance(given, str):
            fields: dict[str, Any] = {"status": given}
        elif isinstance(given, tuple) and len(given) == 2:
            fields = {"status": given[0], "reason": given[1]}
        else:
            raise ValueError(f"{field}: must be a status, a (status, reason) tuple or a CapabilityReport")
        try:
            reports[name] = CapabilityReport.model_validate(fields)
        except ValidationError as error:
            raise ValueError(_first_problem(field, error)) from None
    return reports


def _first_problem(field: str, error: ValidationError) -> str:
    problem = error.errors(include_url=False)[0]
    where = ".".join([field, *(str(part) for part in problem["loc"])])
    return f"{where}: {problem['msg']} (got {problem['input']!r})"


class _SyncRoute(RegistryConnection):
    _client: httpx.Client

    def route(
        self,
        agent_type: str,
        capabilities: Iterable[str] = (),
        *,
        key: str | None = None,
        version: str | None = None,
        namespace: str | None = None,
    ) -> dict[str, Any] | None:
        """``GET /agents/route``: the agent the registry picks for this type and capabilities
        (the REST ``Agent``), or None when none fits.

        ``key`` makes the pick sticky (the same key, the same agent while it stays eligible);
        ``version`` is a constraint such as ``>=1.4,<2`` or ``^1.4``; ``namespace`` overrides
        the client's. Raises ``BadQueryError`` (a ``ValueError``) with the registry's message
        when it refuses the query, ``RegistryError`` when it does not answer or fails.
        """
        params = self._route_params(agent_type, capabilities, key, version, namespace)
        try:
            response = self._client.get(self._url("/agents/route"), params=params, headers=self._headers())
        except (httpx.HTTPError, OSError) as exc:
            raise self._unanswered(exc) from exc
        return self._route_answer(response)

    def watch(
        self,
        agent_type: str | None = None,
        capabilities: Iterable[str] = (),
        *,
        status: str | None = None,
        skills: Iterable[str] = (),
        namespace: str | None = None,
        since: str | None = None,
        idle_timeout: float = watching.IDLE_TIMEOUT_SECONDS,
    ) -> Iterator[watching.WatchEvent]:
        """``GET /agents/watch``: a snapshot of the agents the query matches (unless ``since``
        names an event id to resume after), then one ``WatchEvent`` per change, for as long
        as the caller iterates. Keep a map by agent id: ``removed`` takes the agent out,
        ``relist`` empties it (a snapshot follows), every other event puts ``event.agent`` in.

        Resumes by itself after a dropped connection, a stream the registry ended, 429 or
        503, from the last event delivered. Raises ``BadQueryError`` for a query the registry
        refuses (400) and ``RegistryError`` for 401, 403 and other answers that retrying
        will not change.
        """
        params = watching.watch_params(agent_type, capabilities, status, skills, namespace or self.namespace)
        resumption = watching.Resumption(since)
        timeout = httpx.Timeout(self.timeout, read=idle_timeout)
        while True:
            headers = resumption.headers(self._headers())
            try:
                with self._client.stream(
                    "GET", self._url("/agents/watch"), params=params, headers=headers, timeout=timeout
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        _check_watch_answer(response)
                        resumption.failed()
                    else:
                        resumption.stream_opened()
                        for line in response.iter_lines():
                            if (event := resumption.line(line)) is not None:
                                yield event
                        resumption.stream_ended()
            except (httpx.HTTPError, OSError) as exc:
                resumption.failed(exc)
            time.sleep(resumption.delay())


def _check_watch_answer(response: httpx.Response) -> None:
    """Raise for an answer to a watch that retrying will not change; return for one it may (429, 5xx)."""
    status = response.status_code
    if watching.retryable(status):
        logger.warning("watch: HTTP %d %s; retrying", status, _error_text(response))
        return
    message = f"watch refused: HTTP {status} {_error_text(response)}"
    if status == 400:
        raise BadQueryError(message, 400)
    raise RegistryError(message, status)


class RegistryClient(_SyncRoute):
    """Asks the registry for agents, for callers that are not agents themselves (an orchestrator)::

    with RegistryClient("http://agent-registry", token_file="/var/run/secrets/tokens/registry") as registry:
        agent = registry.route("cost", ["rightsizing"], key=tenant_id)
    """

    def __init__(
        self,
        orchestrator_url: str = DEFAULT_ORCHESTRATOR_URL,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(orchestrator_url, token=token, token_file=token_file, namespace=namespace, timeout=timeout)
        self._client = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AgentRegistration(RegistrationProtocol, _SyncRoute):
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
        load_provider: LoadProvider | None = None,
        capability_provider: CapabilityProvider | None = None,
        agent_card: Mapping[str, Any] | AgentCard | None = None,
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
            load_provider=load_provider,
            capability_provider=capability_provider,
            agent_card=agent_card,
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

    def send_heartbeat(
        self,
        status: str = "healthy",
        metadata: Mapping[str, Any] | None = None,
        *,
        load: LoadReport | None = None,
        capabilities: Mapping[str, CapabilityStatus] | None = None,
    ) -> bool:
        """One heartbeat now; True when the registry recorded it.

        A full report: capabilities not named are healthy, no ``load`` is no load. Raises
        ``ValueError`` naming the field, and sends nothing, for a load or capability report
        the schema refuses (a capability the agent did not register included)."""
        body = self._heartbeat_body(status, metadata, load, capabilities)
        return self._heartbeat_once(body) is Outcome.OK

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

    def _heartbeat_once(self, body: dict[str, Any]) -> Outcome:
        agent_id = self.agent_id
        if agent_id is None:
            return Outcome.GONE
        try:
            response = self._client.post(
                self._url(f"/agents/{agent_id}/heartbeat"),
                json=body,
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
                outcome = self._heartbeat_once(self._current_heartbeat())
                if outcome is Outcome.GONE and not self._stop.is_set():
                    outcome = Outcome.OK if self.register() else Outcome.FAILED
            except Exception:
                # Whatever happens, the agent keeps heartbeating: a dead thread is a dead agent.
                logger.exception("heartbeat of %s failed unexpectedly", self.agent_name)
                outcome = Outcome.FAILED
            failures = 0 if outcome is Outcome.OK else failures + 1
            delay = self._delay(outcome, failures)


def _checked_card(card: Mapping[str, Any] | AgentCard | None) -> dict[str, Any] | None:
    """The A2A card a registration carries, checked as the registry will check it: a
    ValueError naming the field (``agent_card.skills[0].tags: ...``), and nothing sent."""
    if card is None:
        return None
    try:
        checked = card if isinstance(card, AgentCard) else AgentCard.model_validate(card)
    except ValidationError as exc:
        raise ValueError("; ".join(f"agent_card.{line}" for line in card_errors(exc))) from None
    return checked.to_json()


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("error", body)) if isinstance(body, dict) else str(body)[:300]
