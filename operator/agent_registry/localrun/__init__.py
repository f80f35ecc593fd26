"""``make run``: the whole registry on one machine, with two demo agents.

``python -m agent_registry.localrun`` starts, in order: a cluster (the embedded
kube-apiserver, etcd and kube-controller-manager that the tests use, or the cluster
``KUBECONFIG`` names), the Agent CRD, Redis, the operator, the REST facade, and two demo
agents each with a sidecar, all as child processes on loopback. It prints where the API is
and which kubeconfig to use with ``kubectl get agents``, then waits; Ctrl-C stops
everything, sidecars first so they deregister their agents.
"""

from agent_registry.localrun.stack import RunOptions, Stack

__all__ = ["RunOptions", "Stack"]
