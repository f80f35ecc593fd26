"""The client library's ``watch()`` (``RegistryClient`` and ``AsyncRegistryClient``) against the
real facade, API server, Redis and operator: the snapshot and the changes, resuming by itself
across a facade restart and a stream the facade ends, and the errors it raises rather than
retries. Plus the SSE parser on its own."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from accounts import READER_RULES, Accounts
from agent_registry.localcluster.launcher import FacadeProcess, OperatorProcess
from agent_registry.localcluster.process import free_port
from agent_sidecar import RegistryClient
from agent_sidecar.aio_client import AsyncRegistryClient
from agent_sidecar.client import BadQueryError, RegistryError
from agent_sidecar.watching import EventParser, WatchEvent
from facade_harness import index_built, registration


def parse(text: str) -> list[WatchEvent]:
    parser = EventParser()
    return [event for line in text.split("\n") if (event := parser.feed(line)) is not None]


def test_the_parser_reads_events_ids_multiline_data_and_skips_comments() -> None:
    events = parse(
        'retry: 1000\n\n: keep-alive\n\nevent: snapshot\nid: 5-0\ndata: {"agents": [],\ndata:  "count": 0}\n\n'
        'event: relist\ndata: {"reason": "rebuilt"}\n\nevent: odd\ndata: not json\n\n'
    )
    assert [(e.type, e.id) for e in events] == [("snapshot", "5-0"), ("relist", None)]
    assert events[0].data == {"agents": [], "count": 0} and events[0].agents == []
    assert events[1].data["reason"] == "rebuilt" and events[1].agent is None


def register(url: str, name: str) -> str:
    response = httpx.post(f"{url}/agents/register", json=registration(name), trust_env=False)
    assert response.status_code == 201, response.text
    return str(response.json()["agent_id"])


class Consumer:
    """``watch()`` iterated on a thread of its own, so the test can wait with a timeout."""

    def __init__(self, events: Iterator[WatchEvent]) -> None:
        self.events: queue.Queue[WatchEvent | BaseException] = queue.Queue()
        self._source = events
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for event in self._source:
                self.events.put(event)
        except BaseException as exc:  # handed to the test
            self.events.put(exc)

    def next(self, timeout: float = 30) -> WatchEvent:
        item = self.events.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def until_registered(self, name: str, timeout: float = 60) -> list[WatchEvent]:
        """Every event up to ``name``'s registration."""
        seen = []
        while True:
            event = self.next(timeout)
            seen.append(event)
            if event.type == "registered" and (event.agent or {}).get("name") == name:
                return seen


def test_watch_resumes_by_itself_across_a_facade_restart(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess]
) -> None:
    port = free_port()
    facade = index_built(make_facade(port=port))
    register(facade.url, "early-agent")
    client = RegistryClient(facade.url, timeout=5)
    consumer = Consumer(client.watch(agent_type="cost"))
    snapshot = consumer.next()
    assert snapshot.type == "snapshot"
    register(facade.url, "second-agent")
    consumer.until_registered("second-agent")
    facade.stop()
    restarted = index_built(make_facade(port=port))
    register(restarted.url, "while-away")
    seen = consumer.until_registered("while-away")
    # Resumed from its last event: no snapshot, unless the registry asked for a relist (the
    # operator rebuilding its index meanwhile would).
    kinds = [event.type for event in seen]
    assert all(i > 0 and kinds[i - 1] == "relist" for i, kind in enumerate(kinds) if kind == "snapshot"), kinds


def test_watch_raises_for_a_query_the_registry_refuses_and_for_a_missing_token(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess], accounts: Accounts
) -> None:
    facade = index_built(make_facade(auth=True))
    accounts.grant("watcher", READER_RULES)
    token = accounts.token("watcher")
    with RegistryClient(facade.url, token=token) as client, pytest.raises(BadQueryError, match="status"):
        next(client.watch(status="asleep"))
    with RegistryClient(facade.url) as client, pytest.raises(RegistryError) as refused:
        next(client.watch())
    assert refused.value.status == 401


def test_async_watch_carries_on_past_streams_the_facade_ends(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess]
) -> None:
    facade = index_built(make_facade(watch_max_seconds=1))

    async def scenario() -> list[str]:
        kinds: list[str] = []
        async with AsyncRegistryClient(facade.url, timeout=5) as client:
            events = client.watch()
            async with asyncio.timeout(60):
                first = await anext(events)
                kinds.append(first.type)
                await asyncio.sleep(2.5)  # the facade ends the stream meanwhile; the client resumes
                await asyncio.to_thread(register, facade.url, "async-agent")
                async for event in events:
                    kinds.append(event.type)
                    if event.type == "registered" and (event.agent or {}).get("name") == "async-agent":
                        break
            await events.aclose()
        return kinds

    kinds = asyncio.run(scenario())
    assert kinds[0] == "snapshot" and kinds[-1] == "registered"
    # Each resume carried on from its last event: a snapshot only right after a relist.
    assert all(kinds[i - 1] == "relist" for i, kind in enumerate(kinds) if kind == "snapshot" and i > 0), kinds
