"""Prometheus metrics of the operator, served on their own port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

AGENTS = Gauge(
    "agent_registry_agents",
    "Agents known to the operator, by phase and type.",
    ["phase", "type"],
    registry=REGISTRY,
)
HEARTBEATS = Counter(
    "agent_registry_heartbeats_observed_total",
    "Heartbeats observed: renewals of agents' Leases (via=lease), changes of the heartbeat "
    "fields in Agent status (via=status).",
    ["via"],
    registry=REGISTRY,
)
EVENTS_SUPPRESSED = Counter(
    "agent_registry_events_suppressed_total",
    "Events not posted because the budget for their reason was spent (Registered, when many "
    "agents register at once); summed up in one Event on the operator's Lease.",
    ["reason"],
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "agent_registry_phase_transitions_total",
    "Phase changes written by the operator.",
    ["from_phase", "to_phase"],
    registry=REGISTRY,
)
DELETIONS = Counter(
    "agent_registry_gc_deletions_total",
    "Garbage-collection outcomes: deleted, conflict (a heartbeat won the race), gone.",
    ["outcome"],
    registry=REGISTRY,
)
SELF_PRESERVATION = Gauge(
    "agent_registry_self_preservation_active",
    "1 while garbage collection is paused because too many agents went silent at once.",
    registry=REGISTRY,
)
SILENT_AGENTS = Gauge(
    "agent_registry_silent_agents",
    "Agents judged unreachable by this operator (silent past unreachable-after).",
    registry=REGISTRY,
)
BLIND = Gauge(
    "agent_registry_blind",
    "1 while the operator cannot see the API server for a scope (a namespace, or * for the "
    "cluster): nobody there is judged.",
    ["scope"],
    registry=REGISTRY,
)
BLIND_GAPS = Counter(
    "agent_registry_blind_gaps_total",
    "Times the operator saw a scope again after being blind; each gave every agent there a fresh grace period.",
    ["scope"],
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "agent_registry_redis_sync_errors_total",
    "Failed writes to the Redis index (the operator keeps reconciling and retries).",
    registry=REGISTRY,
)
REDIS_RESYNCS = Counter(
    "agent_registry_redis_full_resyncs_total",
    "Full rebuilds of the Redis index (start, Redis back, index lost).",
    registry=REGISTRY,
)
EVENT_LAG = Histogram(
    "agent_registry_event_processing_seconds",
    "Time spent handling one watch event.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
IS_LEADER = Gauge(
    "agent_registry_leader",
    "1 when this replica holds the lease and acts; 0 on a standby.",
    registry=REGISTRY,
)


def serve(port: int, host: str = "0.0.0.0") -> None:
    if port:
        start_http_server(port, addr=host, registry=REGISTRY)


def publish_counts(counts: dict[tuple[str, str], int]) -> None:
    AGENTS.clear()
    for (phase, agent_type), value in counts.items():
        AGENTS.labels(phase=phase, type=agent_type).set(value)
