"""``bench/lease_shapes.py`` end to end at a tiny N: every variant runs in every round and
its results hold the figures the table prints. The figures themselves are the benchmark's
business, not a test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from repo import REPO_ROOT

pytestmark = [pytest.mark.k8s, pytest.mark.redis, pytest.mark.timeout(600)]

VARIANTS = ("bare", "agent_spec_only", "agent_renewal", "agent_renewal_watched", "bare_list_probed", "bare_get_probed")


def test_every_variant_is_measured_and_reported(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_REGISTRY_")}
    args = ["--agents", "20", "--seconds", "2", "--rounds", "2", "--interval", "2"]
    proc = subprocess.run(
        [sys.executable, "bench/lease_shapes.py", *args, "--results-dir", str(tmp_path), "--name", "smoke"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["rounds"] == 2
    assert tuple(result["variants"]) == VARIANTS
    for name, figures in result["variants"].items():
        # 10 renewals a second for 2 s, in each of 2 rounds; none may fail.
        assert figures["failed"] == 0, (name, figures)
        assert figures["renewals"] >= 30, (name, figures)
        assert figures["api_requests"].get("PATCH leases", 0) >= figures["renewals"], (name, figures)
        assert figures["apiserver_cpu_ms_per_renewal"] > 0, (name, figures)
        assert figures["etcd_bytes_per_renewal"] > 0, (name, figures)
    # The agent's Lease carries its owner, label and annotation: more bytes than a bare one.
    variants = result["variants"]
    assert variants["agent_renewal"]["etcd_bytes_per_renewal"] > variants["bare"]["etcd_bytes_per_renewal"]
    table = (tmp_path / "smoke.md").read_text()
    for name in VARIANTS:
        assert f"| {name} |" in table
