"""The one layer through which the registry talks to the Kubernetes API server.

* ``errors``: one error hierarchy (``NotFound``, ``Conflict``, ``Gone``,
  ``TooManyRequests``, ``Unavailable``, ...), whichever transport answered;
* ``credentials``: one precedence for finding the API server and authenticating;
* ``paths`` and ``objects``: the paths of the objects the registry uses and the fields
  every module reads (uid, resourceVersion, agent id);
* ``aio.AsyncApi``: the asynchronous transport (the facade, the operator's own calls);
* ``sync.SyncApi``: the synchronous one (the sidecar, tooling, tests).

kopf keeps its own watch; nothing else sends HTTP to the API server.
"""

from agent_registry.kubeapi.credentials import ConfigError, Connection, Source, connect, load, resolve
from agent_registry.kubeapi.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    StatusError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "ApiError",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "Connection",
    "Forbidden",
    "Gone",
    "Invalid",
    "NotFound",
    "Source",
    "StatusError",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "connect",
    "load",
    "resolve",
]
