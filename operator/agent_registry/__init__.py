"""Agent Registry for Kubernetes: Agent custom resources, their operator and REST facade."""

__version__ = "0.1.0"
