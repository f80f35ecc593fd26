"""The benchmark harness, end to end at N = 100 with tiny durations: it runs, and its results
hold every figure the report needs. Whether the figures meet the targets is the benchmark's
business (``make bench``), not a test's: tests do not time things."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from repo import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))

from bench.report import COST_ROWS, LEASE_ROWS, TARGETS, dig

pytestmark = [pytest.mark.k8s, pytest.mark.redis, pytest.mark.timeout(900)]

SMOKE_ARGS = [
    "--agents", "100",
    "--heartbeat-seconds", "5",
    "--discovery-rate", "50",
    "--discovery-seconds", "2",
    "--saturation-seconds", "2",
    "--lease-seconds", "3",
    "--interval", "5",
    "--unreachable-after", "10",
    "--sweep-seconds", "1",
    "--sample", "3",
    "--sidecar-seconds", "6",
]  # fmt: skip


def _paths(row: str) -> list[str]:
    return [part for part in row.split("|") if not part.startswith("@")]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-results")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_REGISTRY_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *SMOKE_ARGS, "--results-dir", str(out), "--name", "smoke"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-6000:]}"
    assert (out / "smoke.md").is_file()
    data: dict[str, Any] = json.loads((out / "smoke.json").read_text())
    return data


def test_one_run_without_errors(results: dict[str, Any]) -> None:
    assert [run["agents"] for run in results["runs"]] == [100]
    run = results["runs"][0]
    assert "error" not in run, run.get("error")
    assert results["meta"]["machine"]["cpus"]


def test_every_target_has_a_value(results: dict[str, Any]) -> None:
    verdicts = results["runs"][0]["verdict"]["targets"]
    assert set(verdicts) == {target.key for target in TARGETS}
    missing = [key for key, verdict in verdicts.items() if verdict["value"] is None]
    assert not missing, f"targets without a figure: {missing}"


def test_every_figure_of_the_tables_is_there(results: dict[str, Any]) -> None:
    run = results["runs"][0]
    paths = [path for _, row in COST_ROWS for path in _paths(row)]
    paths += [path for _, cr, lease in LEASE_ROWS for row in (cr, lease) for path in _paths(row)]
    missing = [path for path in paths if dig(run, path) is None]
    assert not missing, f"figures missing from the results: {missing}"


def test_each_process_was_sampled(results: dict[str, Any]) -> None:
    run = results["runs"][0]
    sampled = run["phases"]["heartbeats"]["usage"]["processes"]
    for process in ("kube-apiserver", "etcd", "redis", "operator", "facade", "bench"):
        assert sampled[process]["rss_mb_peak"] > 0, process
    assert run["phases"]["sidecar"]["rss_mb_peak"] > 0
    assert run["phases"]["lease_path"]["etcd"]["grpc_received_bytes"] > 0


def test_the_books_balance_at_rest(results: dict[str, Any]) -> None:
    """The figures are consistent with each other (not fast: just counted right)."""
    books = results["runs"][0]["phases"]["books"]
    assert books["heartbeats_sent"] == books["heartbeats_acknowledged"] + books["heartbeats_failed"]
    assert books["heartbeats_observed_by_operator"] > 0
    unreachable = results["runs"][0]["phases"]["unreachable"]
    assert unreachable["sample"] == 3
