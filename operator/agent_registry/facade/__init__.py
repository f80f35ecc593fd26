"""The HTTP facade: the original registry's REST API, translated onto Agent custom resources.

Reads come from the operator's Redis index and fall back to the API server; writes are CR
operations; callers are authenticated and authorised by the API server (TokenReview,
SubjectAccessReview). Run it with ``python -m agent_registry.facade``.
"""

from agent_registry.facade.main import create_app
from agent_registry.facade.settings import FacadeSettings

__all__ = ["FacadeSettings", "create_app"]
