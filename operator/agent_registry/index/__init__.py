"""The Redis index of agents: one module owns its format.

The operator writes it (``IndexWriter``), the HTTP facade reads it (``IndexReader``).
Redis is a cache: the Agent custom resources are the truth, every key expires unless the
operator refreshes it, and a lost index (``IndexLost``) is rebuilt by a full resync.
See ``keys.py`` for the layout.
"""

from agent_registry.index.errors import IndexLost, IndexUnavailable
from agent_registry.index.keys import DEFAULT_PREFIX, REST_STATUSES, KeyLayout
from agent_registry.index.reader import IndexReader, connect
from agent_registry.index.record import IndexedAgent, record_from_resource
from agent_registry.index.writer import DEFAULT_TTL_SECONDS, IndexWriter, Resync

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_TTL_SECONDS",
    "REST_STATUSES",
    "IndexLost",
    "IndexReader",
    "IndexUnavailable",
    "IndexWriter",
    "IndexedAgent",
    "KeyLayout",
    "Resync",
    "connect",
    "record_from_resource",
]
