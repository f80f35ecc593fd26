"""The chart README's RBAC table is what the templates grant: every role, resource and verb.

Rendered with helm, no cluster. The README describes a default install, plus one sidecar
binding so that the sidecar's Role is rendered too.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from agent_registry.localcluster.build import Binaries

CHART = Path(__file__).resolve().parents[2] / "helm" / "agent-registry"
RELEASE = "reg"
FULLNAME = "reg-agent-registry"  # what `<release>` stands for in the README

Grants = dict[tuple[str, str], set[tuple[str, str]]]


def rendered_grants(binaries: Binaries) -> Grants:
    args = [
        "--set",
        "sidecar.rbac.bindings[0].namespace=agents",
        "--set",
        "sidecar.rbac.bindings[0].serviceAccounts={a}",
    ]
    out = subprocess.run(
        [str(binaries.helm), "template", RELEASE, str(CHART), "--namespace", "registry", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    grants: Grants = {}
    for doc in yaml.safe_load_all(out):
        if doc and doc["kind"] in ("Role", "ClusterRole"):
            role = grants.setdefault((doc["kind"], doc["metadata"]["name"]), set())
            role |= {(r, v) for rule in doc["rules"] for r in rule["resources"] for v in rule["verbs"]}
    return grants


def readme_grants(text: str) -> Grants:
    section = text.split("## What it creates, and the permissions", 1)[1].split("\n## ", 1)[0]
    grants: Grants = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.match(r"`(Cluster)?Role ", cells[0]):
            continue
        kind, name = re.findall(r"`(\w+) ([^`]+)`", cells[0])[0]
        (resource,) = re.findall(r"`([^`]+)`", cells[1])
        role = grants.setdefault((kind, name.replace("<release>", FULLNAME)), set())
        role |= {(resource, verb.strip()) for verb in cells[2].split(",")}
    return grants


def test_the_chart_readme_lists_exactly_the_rules_the_templates_grant(binaries: Binaries) -> None:
    documented = readme_grants((CHART / "README.md").read_text())
    assert documented, "no RBAC table found in the chart README"
    rendered = rendered_grants(binaries)
    assert documented.keys() == rendered.keys(), {
        "only in the README": documented.keys() - rendered.keys(),
        "only in the templates": rendered.keys() - documented.keys(),
    }
    for role, rules in rendered.items():
        assert documented[role] == rules, {
            "role": role,
            "only in the README": documented[role] - rules,
            "only in the templates": rules - documented[role],
        }


def test_the_table_is_read_as_meant() -> None:
    text = """## What it creates, and the permissions
| role | resource | verbs | for |
| --- | --- | --- | --- |
| `ClusterRole <release>-x` (with `a.b`) | `agents` | get, list | why |
| `ClusterRole <release>-x` | `agents/status` | patch | why |
| `Deployment <release>-y` | the operator |
## Next
| `Role z` | `leases` | get | why |
"""
    assert readme_grants(text) == {
        ("ClusterRole", f"{FULLNAME}-x"): {("agents", "get"), ("agents", "list"), ("agents/status", "patch")}
    }
