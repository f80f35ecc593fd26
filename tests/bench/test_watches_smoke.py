"""``python -m bench.watches`` end to end at a tiny size: the watches open, every change
reaches every one of them, and the results hold the figures the table prints. The figures
themselves are the benchmark's business."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from repo import REPO_ROOT

pytestmark = [pytest.mark.redis, pytest.mark.k8s, pytest.mark.timeout(600)]


def test_every_change_reaches_every_watch_and_the_figures_are_recorded(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_REGISTRY_")}
    args = ["--watches", "30", "--agents", "10", "--changes", "3", "--hold", "1", "--spacing", "0.1"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.watches", *args, "--results-dir", str(tmp_path), "--name", "smoke"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "smoke.json").read_text())
    run = result["run"]
    figures = run["figures"]
    assert figures["every_change_reached_every_watch"], run["fan_out"]
    assert figures["watchers_ended"] == 0
    assert [change["received_by"] for change in run["fan_out"]["changes"]] == [30, 30, 30]
    assert figures["facade_rss_mb_idle"] and figures["facade_rss_mb_with_watches"]
    assert figures["kb_per_watch"] is not None
    assert run["facade_metrics"]["agent_registry_facade_watches_open"] == 30
    assert "| 30 | 10 |" in (tmp_path / "smoke.md").read_text()
