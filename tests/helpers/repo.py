"""Where the repository's own files are, for the tests that read them.

Computed once here: a test module's own ``__file__`` says how deep it sits in ``tests/``,
which changes whenever the tests are rearranged.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / "crds"
CHART_DIR = REPO_ROOT / "helm" / "agent-registry"
SIDECAR_ROLE = REPO_ROOT / "manifests" / "rbac" / "sidecar-role.yaml"
