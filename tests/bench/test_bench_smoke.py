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

from bench.report import (
    COST_ROWS,
    PATH_ROWS,
    PATH_ROWS_OPTIONAL,
    PATHS,
    PER_AGENT_ROWS,
    RATIO_ROWS,
    TARGETS,
    dig,
)

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
    for path in PATHS:
        paths += [
            f"heartbeat_cost.{path}.{key}"
            for _, row in PATH_ROWS
            for key in _paths(row)
            if key not in PATH_ROWS_OPTIONAL
        ]
    paths += [f"heartbeat_cost.ratios.{key}" for _, key in RATIO_ROWS]
    paths += [f"heartbeat_cost.per_1000_agents.{key}" for _, key in PER_AGENT_ROWS]
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
    # Each acknowledged heartbeat wrote once, or twice when the sidecar's status refresh was due.
    acknowledged, writes = books["heartbeats_acknowledged"], books["heartbeat_writes_acknowledged"]
    assert acknowledged <= writes <= 2 * acknowledged
    assert books["heartbeats_observed_by_operator"] > 0
    assert books["observed_as_lease_renewals"] > 0, "the operator counted no Lease renewal as a heartbeat"
    unreachable = results["runs"][0]["phases"]["unreachable"]
    assert unreachable["sample"] == 3
    assert unreachable["marked"] == 3, unreachable


def test_the_steady_heartbeats_renew_leases(results: dict[str, Any]) -> None:
    """The new path: direct heartbeats renew the agents' Leases, and so do REST heartbeats
    through the facade; every agent's Lease was created once beforehand."""
    phases = results["runs"][0]["phases"]
    assert phases["agent_leases"]["create"]["ok"] == 100
    steady = phases["heartbeats"]
    assert steady["writes"].get("lease", 0) > 0
    assert steady["writes"].get("facade", 0) > 0
    assert steady["facade_writes"]["lease"] > 0
    assert steady["facade_writes"]["lease"] >= steady["facade_writes"]["status"]
    assert steady["all"]["ok"] == steady["facade"]["ok"] + steady["direct"]["ok"]
    assert phases["sidecar_lease_path"]["writes"].get("lease", 0) > 0


def test_the_heartbeat_costs_are_sane(results: dict[str, Any]) -> None:
    """Each path's cost was measured and is a cost (positive, finite); a bare Lease and the
    new path write fewer bytes to etcd per heartbeat than whole Agent status patches (the
    objects' sizes, not timings)."""
    costs = results["runs"][0]["heartbeat_cost"]
    for path in PATHS:
        cost = costs[path]
        assert cost["heartbeats"] > 0, path
        assert 0 < cost["apiserver_cpu_ms_per_heartbeat"] < 10_000, (path, cost)
        assert cost["etcd_bytes_per_heartbeat"] > 0, (path, cost)
        assert cost["etcd_puts_per_heartbeat"] > 0, (path, cost)
        assert cost["p50_ms"] <= cost["p99_ms"], (path, cost)
    assert costs["floor"]["etcd_bytes_per_heartbeat"] < costs["old"]["etcd_bytes_per_heartbeat"]
    assert costs["new"]["etcd_bytes_per_heartbeat"] < costs["old"]["etcd_bytes_per_heartbeat"]
    assert costs["sidecar"]["etcd_bytes_per_heartbeat"] < costs["old"]["etcd_bytes_per_heartbeat"]
    assert costs["ratios"]["apiserver_cpu_new_vs_floor"] > 0
    # What the API server did: Lease renewals on the Lease paths, status patches on the old one.
    for path in ("new", "sidecar", "floor"):
        assert costs[path]["api_requests_per_heartbeat"].get("PATCH leases", 0) > 0.5, (path, costs[path])
    assert costs["old"]["api_requests_per_heartbeat"].get("PATCH agents/status", 0) > 0.5, costs["old"]
    per_agent = costs["per_1000_agents"]
    assert per_agent["operator_rss_mb"] > 0
    assert per_agent["apiserver_cores"] > 0
