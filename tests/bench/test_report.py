"""The benchmark's arithmetic, without a cluster: the cost of a heartbeat by path, from a
run's figures, and the tables that show it."""

from __future__ import annotations

import sys
from typing import Any

from repo import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))

from bench.report import heartbeat_costs, judge, markdown


def _usage(seconds: float, **cores: float) -> dict[str, Any]:
    processes = {name.replace("_", "-"): {"cpu_cores_avg": cpu, "rss_mb_peak": 100.0} for name, cpu in cores.items()}
    return {"seconds": seconds, "processes": processes, "machine_busy_cores": sum(cores.values())}


def _etcd(received: float, puts: float, size: float, in_use: float, compacted: float = 0.0) -> dict[str, float]:
    return {
        "grpc_received_bytes": received,
        "puts": puts,
        "db_total_size_bytes": size,
        "db_in_use_bytes": in_use,
        "compact_revision": compacted,
    }


def _run() -> dict[str, Any]:
    """N = 1,000 at 33.3 heartbeats/s: 120 s of the new path, 60 s of the old one and the floor."""
    return {
        "agents": 1000,
        "phases": {
            "heartbeats": {
                "all": {"ok": 4000, "p50_ms": 3.0, "p99_ms": 12.0},
                "writes": {"facade": 2000, "lease": 2000, "status": 100},
                "usage": _usage(120.0, kube_apiserver=0.12, etcd=0.03, operator=0.05, facade=0.04),
                "etcd": _etcd(received=2_000_000, puts=4100, size=1_200_000, in_use=600_000),
            },
            "sidecar_lease_path": {
                "requests": {"ok": 2000, "p50_ms": 2.5, "p99_ms": 6.0},
                "writes": {"lease": 2000, "status": 40},
                "usage": _usage(60.0, kube_apiserver=0.11, etcd=0.02, operator=0.04, facade=0.001),
                "etcd": _etcd(received=1_000_000, puts=2040, size=0.0, in_use=300_000),
                "api_requests": {"PATCH leases": 2000, "PATCH agents/status": 40, "WATCH-EVENT Lease": 4000},
            },
            "cr_status_path": {
                "requests": {"ok": 2000, "p50_ms": 4.0, "p99_ms": 20.0},
                "usage": _usage(60.0, kube_apiserver=0.3, etcd=0.05, operator=0.1),
                "etcd": _etcd(received=5_600_000, puts=2000, size=9_000_000, in_use=8_000_000, compacted=50.0),
            },
            "lease_path": {
                "idle": {"usage": _usage(10.0, kube_apiserver=0.02)},
                "requests": {"ok": 2000, "p50_ms": 2.0, "p99_ms": 4.0},
                "usage": _usage(60.0, kube_apiserver=0.1, etcd=0.02),
                "etcd": _etcd(received=900_000, puts=2000, size=0.0, in_use=500_000),
            },
        },
    }


def test_cpu_per_heartbeat_is_cores_times_seconds_over_heartbeats() -> None:
    costs = heartbeat_costs(_run())
    assert costs["new"]["apiserver_cpu_ms_per_heartbeat"] == 3.6  # 0.12 x 120 s / 4,000
    assert costs["old"]["apiserver_cpu_ms_per_heartbeat"] == 9.0  # 0.3 x 60 s / 2,000
    assert costs["floor"]["apiserver_cpu_ms_per_heartbeat"] == 3.0
    assert costs["floor"]["apiserver_cpu_ms_per_heartbeat_above_idle"] == 2.4  # (0.1 - 0.02) x 60 / 2,000
    assert costs["sidecar"]["apiserver_cpu_ms_per_heartbeat"] == 3.3
    assert costs["ratios"]["apiserver_cpu_new_vs_floor"] == 1.2
    assert costs["ratios"]["apiserver_cpu_sidecar_vs_floor"] == 1.1
    assert costs["ratios"]["apiserver_cpu_old_vs_floor"] == 3.0
    assert costs["ratios"]["apiserver_cpu_new_vs_old"] == 0.4


def test_etcd_bytes_and_growth() -> None:
    costs = heartbeat_costs(_run())
    assert costs["new"]["etcd_bytes_per_heartbeat"] == 500
    assert costs["old"]["etcd_bytes_per_heartbeat"] == 2800
    assert costs["floor"]["etcd_bytes_per_heartbeat"] == 450
    assert costs["new"]["etcd_growth_mb_per_min"] == 0.6  # 1.2 MB over 2 minutes
    assert costs["new"]["etcd_in_use_growth_mb_per_min"] == 0.3
    assert costs["old"]["etcd_compacted_meanwhile"] is True
    assert costs["new"]["etcd_compacted_meanwhile"] is False
    assert costs["new"]["status_writes_per_heartbeat"] == 0.025
    assert costs["sidecar"]["status_writes_per_heartbeat"] == 0.02
    assert costs["old"]["status_writes_per_heartbeat"] is None


def test_api_requests_per_heartbeat() -> None:
    sidecar = heartbeat_costs(_run())["sidecar"]
    assert sidecar["api_requests_per_heartbeat"] == {
        "WATCH-EVENT Lease": 2.0,
        "PATCH leases": 1.0,
        "PATCH agents/status": 0.02,
    }


def test_cost_per_thousand_agents() -> None:
    per_agent = heartbeat_costs(_run())["per_1000_agents"]
    assert per_agent["apiserver_cores"] == 0.12
    assert per_agent["etcd_bytes_per_min"] == 1_000_000  # 2 MB over 2 minutes at 1,000 agents
    assert per_agent["operator_cores"] == 0.05
    assert per_agent["operator_rss_mb"] == 100.0


def test_the_floor_target_is_judged_and_shown() -> None:
    run = _run()
    run["heartbeat_cost"] = heartbeat_costs(run)
    verdict = judge(run)["targets"]["lease_cpu_vs_floor"]
    assert verdict["value"] == 1.2
    assert verdict["met"] is False
    run["verdict"] = judge(run)
    run["fleet"] = {
        "interval_seconds": 30,
        "unreachable_after_seconds": 45,
        "sweep_seconds": 5.0,
        "facade_auth": True,
        "selective_query": {"type": "cost", "capability": "c0"},
        "selective_matches": 20,
        "broad_query": {"type": "cost", "capability": "common"},
        "broad_matches": 250,
    }
    meta = {
        "started": "now",
        "command": "python -m bench",
        "machine": {"cpus": 2, "cpu_model": "x", "memory_gb": 24},
        "versions": {"kubernetes": "v1", "etcd": "v3", "python": "3.11"},
        "commit": "abc",
    }
    text = markdown({"meta": meta, "runs": [run]})
    assert "| **kube-apiserver CPU per heartbeat, ms** | 3.6 | 3.3 | 9 | 3 |" in text
    assert "| kube-apiserver CPU per heartbeat, new / floor (target ≤ 1.1) | 1.2 |" in text
    assert "| `PATCH leases` | 0 | 1 | 0 | 0 |" in text


def test_a_failed_run_has_no_costs() -> None:
    assert heartbeat_costs({"agents": 1000, "error": "TimeoutError"}) == {}
