"""A watch stream (``GET /agents/watch``) read on a thread of its own, so a test can wait for
events with a timeout. Events are parsed by the client library's parser (``agent_sidecar.
watching.EventParser``); comments (the keep-alives) are counted apart."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from agent_sidecar.watching import EventParser, WatchEvent

_END = WatchEvent("<end of stream>")


class Stream:
    def __init__(
        self,
        base_url: str,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> None:
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=base_url, trust_env=False, timeout=httpx.Timeout(10.0, read=120.0))
        all_headers = auth | (headers or {})
        self._request = self._client.build_request("GET", "/agents/watch", params=params, headers=all_headers)
        self.events: queue.Queue[WatchEvent] = queue.Queue()
        self.seen: list[WatchEvent] = []
        self.comments = 0
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self.body = b""
        self.ended = threading.Event()
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self._opened.wait(30):
            raise AssertionError("the watch did not answer within 30 s")

    def _read(self) -> None:
        try:
            response = self._client.send(self._request, stream=True)
            self.status, self.headers = response.status_code, response.headers
            if response.status_code != 200:
                self.body = response.read()
                self._opened.set()
                return
            self._opened.set()
            parser = EventParser()
            for line in response.iter_lines():
                if line.startswith(":"):
                    self.comments += 1
                event = parser.feed(line)
                if event is not None:
                    self.events.put(event)
        except (httpx.HTTPError, OSError):
            pass
        finally:
            self._opened.set()
            self.ended.set()
            self.events.put(_END)

    def next(self, timeout: float = 30.0) -> WatchEvent:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s; seen: {self.describe()}") from None
        if event is _END:
            self.events.put(_END)
            raise AssertionError(f"the stream ended; seen: {self.describe()}")
        self.seen.append(event)
        return event

    def until(self, wanted: Callable[[WatchEvent], bool], timeout: float = 30.0) -> WatchEvent:
        """The first event from now on that ``wanted`` accepts (others are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such event within {timeout} s; seen: {self.describe()}")
            event = self.next(left)
            if wanted(event):
                return event

    def drain(self, seconds: float) -> list[WatchEvent]:
        """Every event that arrives within ``seconds``."""
        got: list[WatchEvent] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                break
            if event is _END:
                self.events.put(_END)
                break
            self.seen.append(event)
            got.append(event)
        return got

    def describe(self) -> list[tuple[str, str | None, str | None]]:
        return [(e.type, e.id, (e.agent or {}).get("name")) for e in self.seen]

    def close(self) -> None:
        self._client.close()
        self._thread.join(5)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def about(name: str, *types: str) -> Callable[[WatchEvent], bool]:
    """An event of one of ``types`` (any, when none given) about the agent called ``name``."""
    return lambda event: (not types or event.type in types) and (event.agent or {}).get("name") == name
