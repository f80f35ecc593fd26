"""Names and defaults shared by the CRD, the operator, the facade and the sidecar."""

from __future__ import annotations

from typing import Final

GROUP: Final = "registry.optiinfra.io"
VERSION: Final = "v1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "Agent"
PLURAL: Final = "agents"
SINGULAR: Final = "agent"
SHORT_NAMES: Final = ("ag",)
CATEGORIES: Final = ("optiinfra",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# Label carrying the agent's UUID, so `-l registry.optiinfra.io/agent-id=<id>` finds it.
AGENT_ID_LABEL: Final = f"{GROUP}/agent-id"
# Label carrying spec.type, so discovery by type works with a label selector too.
AGENT_TYPE_LABEL: Final = f"{GROUP}/type"

# Annotation naming the Kubernetes user that registered the Agent (or its Lease), e.g.
# "system:serviceaccount:team-a:cost-agent". An annotation, not a label: usernames contain
# ':'. The chart's ValidatingAdmissionPolicy (templates/owner-restriction-policy.yaml)
# makes it equal the creator and lets only that user, or one allowed OVERRIDE_VERB, write
# or delete the object afterwards; the facade applies the same rule to REST callers.
REGISTERED_BY_ANNOTATION: Final = f"{GROUP}/registered-by"
# A custom RBAC verb on `agents` (like Kubernetes' own `escalate` or `approve`): whoever may
# `override` agents in a namespace may write and delete any agent there, whoever registered it.
OVERRIDE_VERB: Final = "override"
# Label on an agent's coordination.k8s.io Lease (value: the Agent's name); the owner rule
# covers Leases carrying it.
AGENT_LEASE_LABEL: Final = f"{GROUP}/agent"

# Annotation on an agent's Lease carrying the load its last renewal reported, "<in_flight>/<max>".
# On the Lease, not the Agent: load changes with every heartbeat, and a renewal is written anyway.
LOAD_ANNOTATION: Final = f"{GROUP}/load"

KNOWN_AGENT_TYPES: Final = ("cost", "performance", "resource", "application")

# Heartbeat defaults: beat every 30 s, Unreachable after 45 s of silence, deleted 5 min later.
DEFAULT_HEARTBEAT_INTERVAL_SECONDS: Final = 30
DEFAULT_UNREACHABLE_AFTER_SECONDS: Final = 45
DEFAULT_GC_AFTER_SECONDS: Final = 300

DEFAULT_AGENT_VERSION: Final = "1.0.0"

# Bounds. They are part of the CRD, so changing them changes the API.
MAX_CAPABILITIES: Final = 64
MAX_CAPABILITY_LENGTH: Final = 63
MAX_TYPE_LENGTH: Final = 63
MAX_HOST_LENGTH: Final = 253
MAX_VERSION_LENGTH: Final = 64
MAX_METADATA_ENTRIES: Final = 64
MAX_METADATA_BYTES: Final = 16 * 1024
MAX_MESSAGE_LENGTH: Final = 1024
MAX_CONDITIONS: Final = 16
MAX_CAPABILITY_REASON_LENGTH: Final = 256
MAX_LOAD: Final = 1_000_000

MIN_INTERVAL_SECONDS: Final = 1
MAX_INTERVAL_SECONDS: Final = 3600
MIN_UNREACHABLE_AFTER_SECONDS: Final = 2
MAX_UNREACHABLE_AFTER_SECONDS: Final = 86400
MIN_GC_AFTER_SECONDS: Final = 1
MAX_GC_AFTER_SECONDS: Final = 30 * 86400
