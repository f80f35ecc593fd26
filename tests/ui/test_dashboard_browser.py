"""The dashboard in a real browser (headless Chromium) against a real operator and facade
with authentication on: the page loads with the counts once a token is typed in, an agent
registered through REST appears without a reload, one whose heartbeats stop turns
Unreachable on the page, and its detail panel shows its A2A card and its Events. The test
saves two screenshots, the fleet and an agent's detail (``AGENT_REGISTRY_SCREENSHOT_DIR``
also gets a copy of each: docs/images/)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from accounts import READER_RULES, WRITER_RULES, Accounts
from agent_registry.localcluster.launcher import FacadeProcess, OperatorProcess
from agent_registry.localcluster.process import free_port, wait_for
from cards import a2a_card
from facade_harness import FAST_TIMINGS, registration
from operator_harness import Agents

SCREENSHOT_DIR_ENV = "AGENT_REGISTRY_SCREENSHOT_DIR"
# name -> (type, capabilities, reported status): a small fleet that stays up throughout.
FLEET = {
    "cost-optimizer": ("cost", ["rightsizing", "spot_migration"], "healthy"),
    "latency-watcher": ("performance", ["latency", "throughput"], "healthy"),
    "capacity-planner": ("resource", ["forecasting", "bin_packing"], "degraded"),
    "checkout-monitor": ("application", ["error_budget"], "healthy"),
}
SUBJECT = "billing-agent"
SOLVER_DOWN = "solver timed out"
HOSTILE = "<img src=x onerror=document.body.dataset.pwned=1>"

# Read in one go in the page, so a re-render between two reads cannot mix two tables.
ROWS_JS = """
return [...document.querySelectorAll('#agent-rows tr')].map(tr => ({
  id: tr.dataset.agentId,
  name: tr.querySelector('td.name').textContent,
  phase: tr.querySelector('td.phase-cell').dataset.phase,
  heartbeat: tr.querySelector('td.heartbeat').textContent,
}));
"""
COUNTS_JS = """
return Object.fromEntries(['total', 'healthy', 'degraded', 'unhealthy', 'unreachable']
  .map(p => [p, document.getElementById('count-' + p).textContent]));
"""


def register(http: httpx.Client, name: str, agent_type: str, capabilities: list[str], **fields: Any) -> str:
    body = registration(name, type=agent_type, capabilities=capabilities, **fields)
    response = http.post("/agents/register", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["agent_id"])


@contextmanager
def heartbeating(http: httpx.Client, beats: dict[str, dict[str, Any]], every: float = 0.5) -> Iterator[list[str]]:
    """Heartbeats ``{agent_id: body}`` from a thread, as live agents send them; yields the failures."""
    stop = threading.Event()
    failures: list[str] = []

    def run() -> None:
        while not stop.wait(every):
            for agent_id, body in beats.items():
                response = http.post(f"/agents/{agent_id}/heartbeat", json=body)
                if response.status_code != 200:
                    failures.append(f"{agent_id}: {response.status_code} {response.text}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield failures
    finally:
        stop.set()
        thread.join(timeout=10)


def event_reasons(http: httpx.Client, agent_id: str) -> list[str]:
    response = http.get(f"/agents/{agent_id}/events")
    assert response.status_code == 200, response.text
    return [event["reason"] for event in response.json()["events"]]


def until(browser: Any, what: str, probe: Callable[[], Any], timeout: float = 20.0) -> Any:
    """``wait_for`` that, when it gives up, says what the page showed. An element the page
    redrew between finding and reading it is no answer yet, not a failure."""
    from selenium.common.exceptions import StaleElementReferenceException  # noqa: PLC0415 - as the tests import it

    def steady() -> Any:
        try:
            return probe()
        except StaleElementReferenceException:
            return None

    try:
        return wait_for(what, steady, timeout=timeout)
    except Exception as exc:
        shown = {
            "status": text_of(browser, "status"),
            "error": text_of(browser, "error"),
            "counts": browser.execute_script(COUNTS_JS),
            "rows": rows(browser),
        }
        raise AssertionError(f"{what}: {exc}; the page showed {shown}") from exc


def rows(browser: Any) -> list[dict[str, str]]:
    return list(browser.execute_script(ROWS_JS))


def phase_on_page(browser: Any, agent_id: str) -> str | None:
    return next((row["phase"] for row in rows(browser) if row["id"] == agent_id), None)


def names_shown(browser: Any) -> list[str]:
    return [row["name"] for row in rows(browser)]


def set_input(browser: Any, element_id: str, value: str) -> None:
    # As typing does: the value, then the "input" event the page listens to.
    browser.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('input', {bubbles: true})); e.dispatchEvent(new Event('change', {bubbles: true}));",
        element_id,
        value,
    )


def text_of(browser: Any, element_id: str) -> str:
    return str(browser.execute_script("return document.getElementById(arguments[0]).textContent", element_id))


def save_screenshot(browser: Any, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    assert browser.save_screenshot(str(shot)), "the browser took no screenshot"
    assert shot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get(SCREENSHOT_DIR_ENV):
        target = Path(os.environ[SCREENSHOT_DIR_ENV])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target / shot.name)
    return shot


def test_the_dashboard_follows_the_fleet_live(
    operator: OperatorProcess,
    make_facade: Callable[..., FacadeProcess],
    accounts: Accounts,
    agents: Agents,
    browser: Any,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415 - the fixture skipped the test without selenium
    from selenium.webdriver.support.ui import Select  # noqa: PLC0415

    # Keep-alives (and with them the batches of heartbeat times) every second.
    facade = make_facade(auth=True, timings=FAST_TIMINGS, watch_keepalive_seconds=1)
    accounts.grant("fleet", WRITER_RULES)
    accounts.grant("platform-engineer", READER_RULES)
    with (
        facade.client(token=accounts.token("fleet")) as fleet,
        facade.client(token=accounts.token("platform-engineer")) as reader,
    ):
        # Metadata is the agent's own to write: this one's is markup, which the page must show as text.
        extra = {"checkout-monitor": {"metadata": {"note": HOSTILE}}}
        ids = {
            name: register(fleet, name, kind, caps, host=f"10.0.{n}.17", port=8080 + n, **extra.get(name, {}))
            for n, (name, (kind, caps, _)) in enumerate(FLEET.items(), start=1)
        }
        hostile = ids["checkout-monitor"]
        beats: dict[str, dict[str, Any]] = {ids[name]: {"status": status} for name, (_, _, status) in FLEET.items()}
        beats[ids["capacity-planner"]]["capabilities"] = {"bin_packing": {"status": "unhealthy", "reason": SOLVER_DOWN}}
        with heartbeating(fleet, beats) as fleet_failures:
            wait_for(
                "the fleet's phases",
                lambda: {agents.phase(name) for name in FLEET} == {"Healthy", "Degraded"},
                timeout=20,
            )

            # Without a token the API refuses, and the page says so.
            browser.get(f"{facade.url}/ui")
            until(browser, "the 401 shown", lambda: "401" in text_of(browser, "error"))
            assert "token" in text_of(browser, "error")
            # Read in one script: the page may redraw the element between a find and a read.
            state_js = "return document.getElementById('status').dataset.state"
            until(browser, "the failed state", lambda: browser.execute_script(state_js) == "failed")

            browser.find_element(By.ID, "token").send_keys(accounts.token("platform-engineer"))
            browser.find_element(By.ID, "connect").click()
            until(browser, "the page live", lambda: browser.find_element(By.ID, "status").text == "Live")
            until(
                browser,
                "the counts",
                lambda: (
                    browser.execute_script(COUNTS_JS)
                    == {"total": "4", "healthy": "3", "degraded": "1", "unhealthy": "0", "unreachable": "0"}
                ),
            )
            assert sorted(names_shown(browser)) == sorted(FLEET)
            # A capability reported unhealthy is marked on its chip, with the reason.
            chip = until(
                browser,
                "the unhealthy capability",
                lambda: browser.execute_script(
                    "const c = [...document.querySelectorAll('.chip')].find(c => c.textContent === 'bin_packing');"
                    "return c && c.classList.contains('unhealthy') ? c.title : null;"
                ),
            )
            assert SOLVER_DOWN in chip
            assert not text_of(browser, "error")
            # Whatever happens from here happens on this page: it is never loaded again.
            browser.execute_script("window.loadedOnce = true")
            # Heartbeats that change nothing else are no events, but their times reach the page in
            # batches: the column keeps up with an agent that keeps heartbeating.
            time.sleep(4)
            recent = {"0 s ago", "1 s ago", "2 s ago", "3 s ago"}
            until(browser, "recent heartbeats", lambda: {row["heartbeat"] for row in rows(browser)} <= recent)

            # An agent registered through REST appears, live.
            card = a2a_card(SUBJECT, skills=("invoice_audit",))
            subject = register(
                fleet,
                SUBJECT,
                "cost",
                ["invoicing"],
                host="10.0.9.17",
                port=8443,
                agent_card=card,
                metadata={"team": "finance", "cost_center": "cc-4471"},
            )
            with heartbeating(fleet, {subject: {"status": "healthy"}}) as subject_failures:
                until(browser, "its row, healthy", lambda: phase_on_page(browser, subject) == "healthy")
                assert browser.execute_script(COUNTS_JS)["total"] == "5"

                # The filters: by type, by capability or skill, by phase (a count is a phase filter).
                Select(browser.find_element(By.ID, "filter-type")).select_by_value("cost")
                until(browser, "the cost agents", lambda: sorted(names_shown(browser)) == [SUBJECT, "cost-optimizer"])
                Select(browser.find_element(By.ID, "filter-type")).select_by_value("")
                set_input(browser, "filter-capability", "invoice_aud")  # a skill from the card
                until(browser, "the skill's agent", lambda: names_shown(browser) == [SUBJECT])
                set_input(browser, "filter-capability", "forecast")
                until(browser, "the capability's agent", lambda: names_shown(browser) == ["capacity-planner"])
                set_input(browser, "filter-capability", "")
                browser.find_element(By.CSS_SELECTOR, '.count[data-phase="degraded"]').click()
                until(browser, "the degraded agents", lambda: names_shown(browser) == ["capacity-planner"])
                browser.find_element(By.CSS_SELECTOR, '.count[data-phase=""]').click()
                until(browser, "every agent again", lambda: len(names_shown(browser)) == 5)
            assert subject_failures == []

            # Its heartbeats stopped: Unreachable on the page, without a reload.
            until(browser, "it unreachable on the page", lambda: phase_on_page(browser, subject) == "unreachable", 30)
            assert agents.phase(SUBJECT) == "Unreachable"
            assert browser.execute_script(COUNTS_JS) == {
                "total": "5",
                "healthy": "3",
                "degraded": "1",
                "unhealthy": "0",
                "unreachable": "1",
            }
            assert browser.execute_script("return window.loadedOnce") is True
            assert {row["id"]: row["phase"] for row in rows(browser)}[ids["capacity-planner"]] == "degraded"
            save_screenshot(browser, tmp_path, "dashboard.png")

            # Its detail: the card and the Events, one click away.
            wait_for("the Unreachable Event recorded", lambda: "Unreachable" in event_reasons(reader, subject))
            browser.find_element(By.CSS_SELECTOR, f'tr[data-agent-id="{subject}"] td.name').click()
            until(browser, "the detail panel", lambda: browser.find_element(By.ID, "detail").is_displayed())
            assert text_of(browser, "detail-name") == SUBJECT
            until(browser, "the card", lambda: card["description"] in text_of(browser, "detail-card"))
            assert "invoice_audit" in text_of(browser, "detail-card")
            until(browser, "the Events", lambda: "Unreachable" in text_of(browser, "detail-events"))
            assert "Registered" in text_of(browser, "detail-events")
            assert "No heartbeat observed" in text_of(browser, "detail-events")
            assert '"cost_center": "cc-4471"' in text_of(browser, "detail-fields")

            # An agent without a card says so; its metadata, markup, is shown as the text it is and did nothing.
            browser.find_element(By.CSS_SELECTOR, f'tr[data-agent-id="{hostile}"] td.name').click()
            until(browser, "no card", lambda: "no A2A card" in text_of(browser, "detail-card"))
            assert text_of(browser, "detail-name") == "checkout-monitor"
            assert HOSTILE in text_of(browser, "detail-fields")
            assert not browser.find_elements(By.CSS_SELECTOR, "#detail img")
            assert browser.execute_script("return document.body.dataset.pwned") is None
            browser.find_element(By.CSS_SELECTOR, f'tr[data-agent-id="{subject}"] td.name').click()
            until(browser, "the card again", lambda: card["description"] in text_of(browser, "detail-card"))
            until(browser, "the Events again", lambda: "Unreachable" in text_of(browser, "detail-events"))
            save_screenshot(browser, tmp_path, "dashboard-detail.png")
        assert fleet_failures == []

    # Nothing went wrong in the page: no script error, no refused resource, no CSP violation.
    # Expected: the 401 of the first connection, without a token, and the 404 of a card that is none.
    expected = (
        ("/agents/watch", "status of 401"),
        (f"/agents/{hostile}/agent-card.json", "status of 404"),
    )
    problems = [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and not any(a in entry["message"] and b in entry["message"] for a, b in expected)
    ]
    assert problems == [], "\n".join(problems)


def watch_requests(browser: Any) -> list[dict[str, str]]:
    """The headers of each ``GET /agents/watch`` the page has sent, oldest first (Chromium's network log)."""
    sent = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] != "Network.requestWillBeSent":
            continue
        request = message["params"]["request"]
        if "/agents/watch" in request["url"]:
            sent.append({name.lower(): value for name, value in request["headers"].items()})
    return sent


def test_with_authentication_off_and_no_token_the_page_resumes_after_the_facade_restarts(
    operator: OperatorProcess, make_facade: Callable[..., FacadeProcess], agents: Agents, browser: Any
) -> None:
    port = free_port()  # the same after the restart, as a Service's address is
    facade = make_facade(port=port)  # authentication off
    with facade.client() as http:
        register(http, "stays", "cost", ["rightsizing"])
        register(http, "goes", "cost", ["rightsizing"])
    browser.get(f"{facade.url}/ui")  # connects at once, with the empty token
    until(browser, "both agents", lambda: sorted(names_shown(browser)) == ["goes", "stays"])
    assert text_of(browser, "status") == "Live"
    first = watch_requests(browser)
    assert len(first) == 1 and "authorization" not in first[0] and "last-event-id" not in first[0]
    browser.execute_script("window.loadedOnce = true")

    facade.stop()
    # The stream's end is no error; failing to reconnect is, and the page says its table may be stale.
    until(browser, "the page retrying", lambda: "Reconnecting" in text_of(browser, "status"))
    until(browser, "the failure shown", lambda: "out of date" in text_of(browser, "error"))
    assert "cannot reach the registry" in text_of(browser, "error")
    # Changes while the page is away: the operator records them in the feed the watch resumes from.
    agents.api.delete(agents.path("goes"))
    wait_for("goes deleted", lambda: agents.get("goes") is None)
    restarted = make_facade(port=port)
    with restarted.client() as http:
        register(http, "arrives", "performance", ["latency"])

    until(browser, "the changes it missed", lambda: sorted(names_shown(browser)) == ["arrives", "stays"], 30)
    until(browser, "live again", lambda: text_of(browser, "status") == "Live")
    assert not text_of(browser, "error")
    assert browser.execute_script("return window.loadedOnce") is True
    resumed = watch_requests(browser)
    assert resumed, "no new watch request"
    # Every attempt after the drop resumes from the last event the page applied.
    assert all(headers.get("last-event-id") for headers in resumed), resumed
