"""ServiceAccounts, their tokens and their RBAC in a test's namespace, through the admin kubectl.

The identities tests act as: the facade reviews their tokens, the API server's RBAC decides.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.schema import constants as c

RBAC = "rbac.authorization.k8s.io/v1"
# What an agent registering through the facade needs, and what a read-only client needs.
WRITER_RULES = [
    {"apiGroups": [c.GROUP], "resources": ["agents"], "verbs": ["get", "list", "create", "update", "delete"]},
    {"apiGroups": [c.GROUP], "resources": ["agents/status"], "verbs": ["patch"]},
]
READER_RULES = [{"apiGroups": [c.GROUP], "resources": ["agents"], "verbs": ["get", "list"]}]


def user(namespace: str, account: str) -> str:
    """The username the API server gives a ServiceAccount's token."""
    return f"system:serviceaccount:{namespace}:{account}"


class Accounts:
    """ServiceAccounts in one namespace, their tokens and what RBAC grants them."""

    def __init__(self, controlplane: LocalControlPlane, namespace: str) -> None:
        self.cp = controlplane
        self.namespace = namespace

    def token(self, account: str, *, duration: str | None = None) -> str:
        """A fresh token for ``account`` (created if missing), from the TokenRequest API."""
        created = self.cp.kubectl("create", "serviceaccount", account, "-n", self.namespace, check=False)
        if created.returncode != 0:  # fine if it exists already (raises otherwise)
            self.cp.kubectl("get", "serviceaccount", account, "-n", self.namespace)
        lifetime = [f"--duration={duration}"] if duration else []
        return self.cp.kubectl("create", "token", account, "-n", self.namespace, *lifetime).stdout.strip()

    def grant(self, accounts: str | Sequence[str], rules: list[dict[str, Any]], role: str | None = None) -> None:
        """A Role with ``rules`` and a RoleBinding of the same name for ``accounts``. RBAC binds
        names, so the accounts may be created before or after (by :meth:`token`)."""
        names = [accounts] if isinstance(accounts, str) else list(accounts)
        role = role or f"{names[0]}-role"
        metadata = {"name": role, "namespace": self.namespace}
        subjects = [{"kind": "ServiceAccount", "name": name, "namespace": self.namespace} for name in names]
        binding = {
            "apiVersion": RBAC,
            "kind": "RoleBinding",
            "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": subjects,
        }
        items = [{"apiVersion": RBAC, "kind": "Role", "metadata": metadata, "rules": rules}, binding]
        self.cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def bind(self, account: str, kind: str, role: str) -> None:
        """Bind ``account`` to an existing Role or ClusterRole (the chart's, the sidecar's manifest)."""
        self.cp.kubectl(
            "create", "rolebinding", f"{account}-{role}"[:63], "-n", self.namespace,
            f"--{kind.lower()}={role}", f"--serviceaccount={self.namespace}:{account}",
        )  # fmt: skip
