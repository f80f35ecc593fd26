"""``python -m bench.routing`` and ``python -m bench.route_script`` end to end at a tiny size:
both modes of every series run, the results hold the figures the tables print, and the
picks under load follow the load. The figures themselves are the benchmarks' business."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from repo import REPO_ROOT

pytestmark = [pytest.mark.redis, pytest.mark.timeout(900)]

AGENTS = 40
OPEN_RATE, SECONDS = 100, 2


@pytest.mark.k8s
def test_both_modes_are_measured_and_load_steers_the_picks(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_REGISTRY_")}
    args = ["--agents", str(AGENTS), "--seconds", str(SECONDS), "--rounds", "1", "--rate", str(OPEN_RATE)]
    args += ["--fleet", "4", "--fleet-seconds", "5"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.routing", *args, "--results-dir", str(tmp_path), "--name", "smoke"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["meta"]["machine"]["cpus"] and result["meta"]["commit"]

    [run] = result["routes"]
    by_mode = {entry["mode"]: entry for entry in run["rounds"]}
    assert set(by_mode) == {"rr", "load"}
    for mode, entry in by_mode.items():
        for side in ("closed_loop", "open_loop"):
            series = entry[side]
            assert series["ok"] > 0 and not series["errors"], (mode, side, series)
            assert series["redis_us_per_script"] > 0, (mode, side, series)
            assert not series["picks"]["odd_answers"], (mode, side, series["picks"])
    # Round robin: every agent in turn. By load: the agents that reported less got more.
    rr, load = by_mode["rr"]["open_loop"]["picks"], by_mode["load"]["open_loop"]["picks"]
    assert rr["most_picks_of_one_agent"] <= OPEN_RATE * SECONDS // AGENTS + 1, rr
    assert load["picked_in_flight_mean"] < load["fleet_in_flight_mean"], load
    ratio = run["figures"]["load_vs_rr"]
    assert ratio["throughput"] and ratio["open_p99"] and len(ratio["by_round"]) == 1, ratio
    assert run["sticky"]["consistent"] is True
    assert run["sticky"]["closed_loop"]["ok"] > 0

    fleet = result["fleet"]
    phases = {phase["mode"]: phase for phase in fleet["phases"]}
    assert set(phases) == {"rr", "load"}
    for mode, phase in phases.items():
        assert phase["tasks"] > 0 and phase["completed"] == phase["tasks"], (mode, phase)
        assert not phase["failed"] and phase["heartbeats"]["failed"] == 0, (mode, phase)
    # Slow workers fill up and report it: under load the fast ones take more of the tasks.
    assert phases["load"]["fast_share"] > phases["rr"]["fast_share"], phases
    assert fleet["figures"]["load_vs_rr"]["p99_ms"] is not None

    table = (tmp_path / "smoke.md").read_text()
    assert f"| {AGENTS} | 1 | rr |" in table and f"| {AGENTS} | 1 | load |" in table
    assert "## A fleet of two speeds" in table


def test_the_route_script_alone_is_timed_in_both_modes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_REGISTRY_")}
    args = ["--agents", "50", "--calls", "50", "--rounds", "1", "--results-dir", str(tmp_path), "--name", "script"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.route_script", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = json.loads((tmp_path / "script.json").read_text())["runs"]
    assert [s["mode"] for s in run["series"]] == ["rr", "load"]
    for series in run["series"]:
        assert series["us_per_call"] > 0 and "sinter" in series["commands_us_per_call"], series
    assert "hincrby" in run["series"][1]["commands_us_per_call"]  # the load pick counts itself
    assert run["load_vs_rr"] is not None
