"""The agent side of the registry: the sidecar that heartbeats into an Agent object, and
the ``AgentRegistration`` client library for agents that speak the REST API."""
