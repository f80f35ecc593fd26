"""An agent's Lease as pure functions: its name, label, owner, renewal (no cluster)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from agent_registry.schema import constants as c
from agent_registry.schema import lease

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def test_the_lease_is_named_after_the_agent() -> None:
    assert lease.lease_name("cost-1") == "agent-cost-1"


def test_a_name_too_long_is_shortened_to_a_valid_unique_name() -> None:
    long_a = "a" * 240 + ".b-" + "c" * 10
    long_b = "a" * 240 + ".b-" + "d" * 10
    for name in (long_a, long_b, "x" * 253, "y" * 241 + "." + "z" * 11):
        shortened = lease.lease_name(name)
        assert len(shortened) <= 253 and DNS_SUBDOMAIN.match(shortened), shortened
    assert lease.lease_name(long_a) != lease.lease_name(long_b)


def test_the_label_value_is_the_name_when_it_fits_a_label() -> None:
    assert lease.label_value("cost-1") == "cost-1"
    hashed = lease.label_value("a" * 64)
    assert len(hashed) <= 63 and hashed != "a" * 63


def test_a_new_lease_is_owned_by_the_agent_and_names_its_creator() -> None:
    spec = lease.renewal("sidecar/pod-1", 45, datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC))
    assert spec == {
        "holderIdentity": "sidecar/pod-1",
        "leaseDurationSeconds": 45,
        "renewTime": "2026-12-01T12:00:00.123456Z",
    }
    body = lease.build_lease("ns", "cost-1", "uid-1", spec, "system:serviceaccount:ns:cost")
    assert body["metadata"]["labels"] == {c.AGENT_LEASE_LABEL: "cost-1"}
    assert body["metadata"]["annotations"] == {c.REGISTERED_BY_ANNOTATION: "system:serviceaccount:ns:cost"}
    assert lease.owning_agent(body) == ("cost-1", "uid-1")
    assert lease.owning_agent({"metadata": {"ownerReferences": [{"kind": "Pod", "apiVersion": "v1"}]}}) is None


def test_a_renewal_carries_the_owner_so_an_old_lease_changes_hands() -> None:
    patch = lease.renewal_patch("cost-1", "uid-2", {"renewTime": "t"})
    assert lease.owning_agent(patch) == ("cost-1", "uid-2")
    assert patch["spec"] == {"renewTime": "t"}


def test_the_signature_changes_with_each_renewal_only() -> None:
    first = {"metadata": {"resourceVersion": "1"}, "spec": {"holderIdentity": "h", "renewTime": "t1"}}
    relisted = {"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}, "spec": dict(first["spec"])}
    renewed = {"metadata": {"resourceVersion": "2"}, "spec": {"holderIdentity": "h", "renewTime": "t2"}}
    assert lease.renewal_signature(first) == lease.renewal_signature(relisted)
    assert lease.renewal_signature(first) != lease.renewal_signature(renewed)


def test_the_duration_is_whole_seconds_and_at_least_one() -> None:
    assert lease.duration_seconds(44.2) == 45
    assert lease.duration_seconds(0) == 1
