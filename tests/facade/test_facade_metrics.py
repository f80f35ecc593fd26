"""The facade's metrics live in a registry of their own, like the operator's (no cluster)."""

from __future__ import annotations

import prometheus_client

from agent_registry.facade import metrics


def test_the_facade_s_series_are_in_its_own_registry_only() -> None:
    metrics.OPERATIONS.labels(operation="register", outcome="created").inc()
    body, content_type = metrics.render()
    text = body.decode()
    assert 'agent_registry_facade_operations_total{operation="register",outcome="created"}' in text
    assert content_type == prometheus_client.CONTENT_TYPE_LATEST
    assert "agent_registry_facade_" not in prometheus_client.generate_latest().decode()


def test_the_process_series_are_still_scraped() -> None:
    text = metrics.render()[0].decode()
    for series in ("process_resident_memory_bytes", "python_gc_objects_collected_total", "python_info"):
        assert series in text
