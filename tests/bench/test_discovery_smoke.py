"""``python -m bench.discovery`` end to end at a tiny N: every series runs and its results
hold the figures the table prints. The figures themselves are the benchmark's business."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from repo import REPO_ROOT

pytestmark = [pytest.mark.k8s, pytest.mark.redis, pytest.mark.timeout(600)]

READS = ("by_id", "type", "all", "filtered", "route")


def test_every_series_is_measured_and_reported(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_REGISTRY_")}
    args = ["--agents", "40", "--seconds", "1", "--interval", "5", "--rate", "50", "--registration-rate", "5"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.discovery", *args, "--results-dir", str(tmp_path), "--name", "smoke"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "smoke.json").read_text())
    for name in READS:
        for side in ("closed_loop", "floor"):
            series = result[side][name]
            assert series["ok"] > 0 and not series["errors"], (side, name, series)
        assert result["figures"]["p50_vs_floor"][name] is not None
    for name in ("filtered", "route"):
        assert result["open_loop"][name]["ok"] > 0 and not result["open_loop"][name]["errors"]
    for phase in ("idle", "storm"):
        assert result[phase]["heartbeats_facade"]["ok"] > 0, phase
        assert result[phase]["registrations"]["ok"] > 0 and not result[phase]["registrations"]["errors"], phase
    assert result["storm"]["load"]["offered_per_s"] > 0
    assert result["unreachable_transitions"] == 0
    assert result["facade_rss_mb_peak"] > 0
    table = (tmp_path / "smoke.md").read_text()
    for name in READS:
        assert f"| {name} |" in table
