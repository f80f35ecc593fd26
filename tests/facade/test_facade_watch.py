"""``GET /agents/watch`` on the real stack: API server, operator, Redis and facade processes.

The snapshot, then one event per change (registered, phase, updated, removed) and none for
heartbeats alone; filters (an agent leaving the view is removed from it); resuming with
Last-Event-ID across a facade restart; relists (a position the feed does not hold, a
flushed Redis); the limits (429), bad input (400 naming the field), authorisation, keep-
alives, and a shutdown that ends the streams instead of waiting for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
import redis

from accounts import READER_RULES, Accounts
from agent_registry.localcluster.launcher import FacadeProcess, OperatorProcess
from agent_registry.localcluster.process import free_port
from agent_registry.localcluster.redis_server import LocalRedis
from facade_harness import FAST_TIMINGS, assert_error, index_built, registration
from watch_stream import Stream, about


def register(http: httpx.Client, name: str, **fields: object) -> str:
    response = http.post("/agents/register", json=registration(name, **fields))
    assert response.status_code == 201, response.text
    return str(response.json()["agent_id"])


def heartbeat(http: httpx.Client, agent_id: str, status: str = "healthy") -> None:
    response = http.post(f"/agents/{agent_id}/heartbeat", json={"status": status})
    assert response.status_code == 200, response.text


def indexed_names(http: httpx.Client) -> set[str]:
    return {agent["name"] for agent in http.get("/agents").json()["agents"]}


def wait_indexed(http: httpx.Client, *names: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not set(names) <= indexed_names(http):
        assert time.monotonic() < deadline, f"{names} not listed within {timeout} s"
        time.sleep(0.2)


def test_a_watch_sends_a_snapshot_then_each_change_and_no_event_for_heartbeats_alone(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess]
) -> None:
    facade = index_built(make_facade(timings=FAST_TIMINGS))
    with facade.client() as http:
        first = register(http, "first-agent")
        wait_indexed(http, "first-agent")
        with Stream(facade.url) as stream:
            assert stream.status == 200
            assert stream.headers is not None and stream.headers["content-type"].startswith("text/event-stream")
            snapshot = stream.next()
            assert snapshot.type == "snapshot" and snapshot.id
            assert [agent["name"] for agent in snapshot.agents] == ["first-agent"]
            assert snapshot.data["count"] == 1

            second = register(http, "second-agent")
            registered = stream.until(about("second-agent", "registered"))
            assert registered.agent is not None and registered.agent["id"] == second
            assert registered.id and registered.id > snapshot.id

            # The operator initialises the agent's status (registered_at): an update, unless it
            # did so before it first indexed the agent.
            if not registered.agent["registered_at"]:
                settled = stream.until(about("second-agent", "updated"))
                assert settled.agent is not None and settled.agent["registered_at"]
            # Heartbeats that change nothing but last_seen are not events.
            for _ in range(6):
                heartbeat(http, second)
                heartbeat(http, first)
                time.sleep(0.4)
            quiet = stream.drain(1.0)
            assert not [event for event in quiet if about("second-agent")(event)], quiet

            heartbeat(http, second, "degraded")
            degraded = stream.until(about("second-agent", "phase"))
            assert degraded.data["previous_status"] == "healthy"
            assert degraded.agent is not None and degraded.agent["status"] == "degraded"

            # Silent for longer than unreachable-after: the operator marks it Unreachable.
            unreachable = stream.until(about("second-agent", "phase"))
            assert unreachable.agent is not None and unreachable.agent["status"] == "unreachable"
            assert unreachable.data["previous_status"] == "degraded"

            assert http.post(f"/agents/{first}/unregister").status_code == 200
            removed = stream.until(about("first-agent", "removed"))
            assert removed.data["deleted"] is True
            ids = [event.id for event in stream.seen if event.id]
            assert ids == sorted(ids, key=lambda value: tuple(int(part) for part in value.split("-")))


def test_filters_apply_and_an_agent_leaving_the_view_is_removed_from_it(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess]
) -> None:
    facade = index_built(make_facade(timings=FAST_TIMINGS))
    with facade.client() as http, Stream(facade.url, {"status": "healthy", "type": "cost"}) as stream:
        assert stream.next().type == "snapshot"
        register(http, "other-type", type="performance")
        agent_id = register(http, "cost-agent")
        event = stream.until(about("cost-agent", "registered"))
        assert event.agent is not None and event.agent["status"] == "healthy"
        left = stream.until(about("cost-agent", "removed"))  # silent, so Unreachable
        assert left.data["deleted"] is False
        assert left.agent is not None and left.agent["status"] == "unreachable"
        # Back to healthy: in the view again.
        heartbeat(http, agent_id)
        back = stream.until(about("cost-agent"))
        assert back.type == "phase" and back.agent is not None and back.agent["status"] == "healthy"
        assert not [event for event in stream.seen if about("other-type")(event)]


def test_a_watch_resumes_across_a_facade_restart_with_last_event_id(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess]
) -> None:
    port = free_port()
    facade = index_built(make_facade(port=port))
    with facade.client() as http, Stream(facade.url) as stream:
        snapshot = stream.next()
        register(http, "before-restart")
        before = stream.until(about("before-restart", "registered"))
    facade.stop()
    # A change while the watch is away, recorded by the operator in the feed.
    restarted = index_built(make_facade(port=port))
    with restarted.client() as http:
        register(http, "during-restart")
        wait_indexed(http, "during-restart")
    with Stream(restarted.url, headers={"Last-Event-ID": str(before.id)}) as resumed:
        assert resumed.next().type != "snapshot"  # it resumes: no snapshot
        resumed.until(about("during-restart", "registered"))
        assert not [event for event in resumed.seen if about("before-restart", "registered")(event)]
    with Stream(restarted.url, {"since": str(snapshot.id)}) as again:
        assert about("before-restart", "registered")(again.next())


def test_a_position_the_feed_does_not_hold_and_a_flushed_redis_bring_a_relist(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess], redis_url: str
) -> None:
    facade = index_built(make_facade())
    with facade.client() as http:
        register(http, "kept-agent")
        wait_indexed(http, "kept-agent")
    with Stream(facade.url, headers={"Last-Event-ID": "99999999999999-0"}) as stream:
        relist = stream.next()
        assert relist.type == "relist" and relist.id is None
        assert "not in this change history" in relist.data["reason"]
        snapshot = stream.next()
        assert snapshot.type == "snapshot" and [a["name"] for a in snapshot.agents] == ["kept-agent"]

        redis.Redis.from_url(redis_url).flushall()
        # The operator rebuilds the index and its feed says so; the snapshot is whole again.
        stream.until(lambda event: event.type == "relist", timeout=60)
        rebuilt = stream.until(lambda event: event.type == "snapshot", timeout=60)
        assert [agent["name"] for agent in rebuilt.agents] == ["kept-agent"]


def test_bad_positions_are_400_naming_the_field_and_watches_beyond_the_limit_429(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess]
) -> None:
    facade = index_built(make_facade(watch_max_open=1))
    with facade.client() as http:
        assert_error(http.get("/agents/watch", params={"since": "yesterday"}), 400, "since")
        assert_error(http.get("/agents/watch", headers={"Last-Event-ID": "12"}), 400, "Last-Event-ID")
        assert_error(http.get("/agents/watch", params={"status": "asleep"}), 400, "status")
        with Stream(facade.url) as open_one:
            assert open_one.next().type == "snapshot"
            refused = http.get("/agents/watch")
            assert_error(refused, 429, "watch_max_open")
            assert refused.headers["retry-after"]
            assert http.get("/agents").status_code == 200  # other reads are not limited by watches
        # Closed, its place is free again.
        deadline = time.monotonic() + 10
        while True:
            with Stream(facade.url) as again:
                if again.status == 200:
                    assert again.next().type == "snapshot"
                    break
            assert time.monotonic() < deadline, "the closed watch kept its place"
            time.sleep(0.2)


def test_with_redis_down_a_new_watch_is_503_and_an_open_one_relists_when_it_returns(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess], redis_server: LocalRedis
) -> None:
    facade = index_built(make_facade(watch_keepalive_seconds=0.5))
    with facade.client() as http:
        register(http, "steady-agent")
        wait_indexed(http, "steady-agent")
        with Stream(facade.url) as stream:
            assert stream.next().type == "snapshot"
            redis_server.stop()
            try:
                assert_error(http.get("/agents/watch"), 503, "change feed")
                comments = stream.comments
                time.sleep(2)
                assert not stream.ended.is_set() and stream.comments > comments  # kept alive meanwhile
            finally:
                redis_server.start()
            # Redis came back empty: whatever happened meanwhile, the watch lists again.
            assert stream.until(lambda event: event.type == "relist", timeout=60).id is None
            snapshot = stream.until(lambda event: event.type == "snapshot", timeout=60)
            assert [agent["name"] for agent in snapshot.agents] == ["steady-agent"]


def test_a_watch_is_authorised_as_listing_agents(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess], accounts: Accounts
) -> None:
    facade = index_built(make_facade(auth=True))
    accounts.grant("watcher", READER_RULES)
    with facade.client() as http:
        assert_error(http.get("/agents/watch"), 401)
        stranger = accounts.token("stranger")
        assert_error(http.get("/agents/watch", headers={"Authorization": f"Bearer {stranger}"}), 403, "list")
    with Stream(facade.url, token=accounts.token("watcher")) as stream:
        assert stream.next().type == "snapshot"


def test_a_quiet_watch_gets_keep_alives(operator: OperatorProcess, make_facade: Callable[..., FacadeProcess]) -> None:
    facade = index_built(make_facade(watch_keepalive_seconds=0.3))
    with Stream(facade.url) as stream:
        assert stream.next().type == "snapshot"
        deadline = time.monotonic() + 10
        while stream.comments < 3:
            assert time.monotonic() < deadline, f"{stream.comments} keep-alives in 10 s"
            time.sleep(0.1)


def test_a_stream_ends_at_its_time_limit(operator: OperatorProcess, make_facade: Callable[..., FacadeProcess]) -> None:
    facade = index_built(make_facade(watch_max_seconds=1))
    with Stream(facade.url) as stream:
        assert stream.next().type == "snapshot"
        assert stream.ended.wait(10), "the stream outlived its time limit"


@pytest.mark.parametrize("open_watches", [3])
def test_shutdown_ends_open_watches_instead_of_waiting_for_them(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess], open_watches: int
) -> None:
    facade = index_built(make_facade())  # shutdown_timeout_seconds is 20 in tests
    streams = [Stream(facade.url) for _ in range(open_watches)]
    try:
        for stream in streams:
            assert stream.next().type == "snapshot"
        started = time.monotonic()
        facade.stop()
        took = time.monotonic() - started
        assert all(stream.ended.wait(5) for stream in streams)
        assert took < 10, f"the facade took {took:.1f} s to stop with {open_watches} watches open"
        assert facade.returncode == 0
    finally:
        for stream in streams:
            stream.close()


def test_heartbeat_times_come_in_batches_to_a_watch_that_asks_for_them(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess]
) -> None:
    facade = index_built(make_facade(timings=FAST_TIMINGS, watch_keepalive_seconds=0.5))
    with facade.client() as http:
        agent_id = register(http, "beating-agent")
        wait_indexed(http, "beating-agent")
        with Stream(facade.url, {"heartbeats": "true"}) as asking, Stream(facade.url) as plain:
            assert asking.next().type == "snapshot" and plain.next().type == "snapshot"
            first = asking.until(lambda event: event.type == "heartbeats")
            assert first.id is None and set(first.data["last_seen"]) == {agent_id}
            for _ in range(4):
                heartbeat(http, agent_id)
                time.sleep(0.5)
            later = asking.until(
                lambda event: (
                    event.type == "heartbeats" and event.data["last_seen"][agent_id] > first.data["last_seen"][agent_id]
                )
            )
            assert later.id is None
            assert not [event for event in plain.drain(1.0) if event.type == "heartbeats"]
            assert plain.comments > 0  # keep-alives instead
