"""``AsyncAgentRegistration``: ``AgentRegistration`` for asyncio agents.

The same requests and answers (``RegistrationProtocol``); calls are coroutines and the
heartbeats run as a task on the agent's event loop::

    async with AsyncAgentRegistration("perf-1", "performance", "10.0.0.8", 8002, ["latency"],
                                      orchestrator_url="http://agent-registry") as registration:
        await serve()

``AsyncRegistryClient`` is ``RegistryClient`` for asyncio orchestrators: ``await route(...)``,
``async for event in watch(...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any

import httpx

from agent_registry.schema.card import AgentCard
from agent_sidecar import watching
from agent_sidecar.client import (
    DEFAULT_ORCHESTRATOR_URL,
    DEFAULT_TIMEOUT_SECONDS,
    DEFAULT_VERSION,
    CapabilityProvider,
    CapabilityStatus,
    LoadProvider,
    LoadReport,
    Outcome,
    RegistrationError,
    RegistrationProtocol,
    RegistryConnection,
    StatusProvider,
    _check_watch_answer,
    _error_text,
)

logger = logging.getLogger(__name__)


class _AsyncRoute(RegistryConnection):
    _client: httpx.AsyncClient

    async def route(
        self,
        agent_type: str,
        capabilities: Iterable[str] = (),
        *,
        key: str | None = None,
        version: str | None = None,
        namespace: str | None = None,
    ) -> dict[str, Any] | None:
        """``GET /agents/route``, as ``RegistryClient.route``: the picked REST ``Agent``, or None."""
        params = self._route_params(agent_type, capabilities, key, version, namespace)
        try:
            response = await self._client.get(self._url("/agents/route"), params=params, headers=self._headers())
        except (httpx.HTTPError, OSError) as exc:
            raise self._unanswered(exc) from exc
        return self._route_answer(response)

    async def watch(
        self,
        agent_type: str | None = None,
        capabilities: Iterable[str] = (),
        *,
        status: str | None = None,
        skills: Iterable[str] = (),
        namespace: str | None = None,
        since: str | None = None,
        idle_timeout: float = watching.IDLE_TIMEOUT_SECONDS,
    ) -> AsyncIterator[watching.WatchEvent]:
        """``GET /agents/watch`` as ``RegistryClient.watch``: ``async for event in client.watch(...)``."""
        params = watching.watch_params(agent_type, capabilities, status, skills, namespace or self.namespace)
        resumption = watching.Resumption(since)
        timeout = httpx.Timeout(self.timeout, read=idle_timeout)
        while True:
            headers = resumption.headers(self._headers())
            try:
                async with self._client.stream(
                    "GET", self._url("/agents/watch"), params=params, headers=headers, timeout=timeout
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        _check_watch_answer(response)
                        resumption.failed()
                    else:
                        resumption.stream_opened()
                        async for line in response.aiter_lines():
                            if (event := resumption.line(line)) is not None:
                                yield event
                        resumption.stream_ended()
            except (httpx.HTTPError, OSError) as exc:
                resumption.failed(exc)
            await asyncio.sleep(resumption.delay())


class AsyncRegistryClient(_AsyncRoute):
    """``RegistryClient`` for asyncio callers; ``async with`` closes it."""

    def __init__(
        self,
        orchestrator_url: str = DEFAULT_ORCHESTRATOR_URL,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(orchestrator_url, token=token, token_file=token_file, namespace=namespace, timeout=timeout)
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncRegistryClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncAgentRegistration(RegistrationProtocol, _AsyncRoute):
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
        transport: httpx.AsyncBaseTransport | None = None,
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
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def register(self) -> bool:
        async with self._lock:
            try:
                response = await self._client.post(
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
        """Start the heartbeat task on the running event loop."""
        if self._task is not None and not self._task.done():
            return
        self.running = True
        self._task = asyncio.get_running_loop().create_task(
            self._heartbeat_loop(), name=f"agent-heartbeat-{self.agent_name}"
        )

    async def stop_heartbeat_loop(self) -> None:
        self.running = False
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def unregister(self) -> bool:
        await self.stop_heartbeat_loop()
        agent_id = self.agent_id
        if agent_id is None:
            return False
        try:
            response = await self._client.post(
                self._url(f"/agents/{agent_id}/unregister"), params=self._params(), headers=self._headers()
            )
        except (httpx.HTTPError, OSError) as exc:
            logger.error("unregistering %s failed: %s", self.agent_name, exc)
            return False
        if response.status_code in (200, 404):
            self.agent_id = None
            return True
        logger.error(
            "unregistering %s failed: HTTP %s %s", self.agent_name, response.status_code, _error_text(response)
        )
        return False

    async def send_heartbeat(
        self,
        status: str = "healthy",
        metadata: Mapping[str, Any] | None = None,
        *,
        load: LoadReport | None = None,
        capabilities: Mapping[str, CapabilityStatus] | None = None,
    ) -> bool:
        """As ``AgentRegistration.send_heartbeat``: ``ValueError`` naming the field, nothing sent, for a bad report."""
        body = self._heartbeat_body(status, metadata, load, capabilities)
        return await self._heartbeat_once(body) is Outcome.OK

    async def aclose(self) -> None:
        await self.stop_heartbeat_loop()
        await self._client.aclose()

    async def __aenter__(self) -> AsyncAgentRegistration:
        if not await self.register():
            raise RegistrationError(f"could not register {self.agent_name} with {self.orchestrator_url}")
        self.start_heartbeat()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.unregister()
        finally:
            await self.aclose()

    async def _heartbeat_once(self, body: dict[str, Any]) -> Outcome:
        agent_id = self.agent_id
        if agent_id is None:
            return Outcome.GONE
        try:
            response = await self._client.post(
                self._url(f"/agents/{agent_id}/heartbeat"),
                json=body,
                params=self._params(),
                headers=self._headers(),
            )
        except (httpx.HTTPError, OSError) as exc:
            logger.warning("heartbeat of %s failed: %s", self.agent_name, exc)
            return Outcome.FAILED
        return self._heartbeat_outcome(response)

    async def _heartbeat_loop(self) -> None:
        failures = 0
        delay = 0.0
        while True:
            await asyncio.sleep(delay)
            try:
                outcome = await self._heartbeat_once(self._current_heartbeat())
                if outcome is Outcome.GONE:
                    outcome = Outcome.OK if await self.register() else Outcome.FAILED
            except Exception:
                logger.exception("heartbeat of %s failed unexpectedly", self.agent_name)
                outcome = Outcome.FAILED
            failures = 0 if outcome is Outcome.OK else failures + 1
            delay = self._delay(outcome, failures)
