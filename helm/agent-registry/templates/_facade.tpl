{{/* The facade's RBAC rules and environment, kept together because both follow its code
(operator/agent_registry/facade/kube.py and settings.py). */}}

{{- define "agent-registry.facade.agentRules" -}}
# Application: register (create, or patch an existing name), unregister (delete with a
# uid precondition), and reads that fall back to the API server when the Redis index is
# unavailable (get, and list by label selector). `override`: it writes REST agents with its
# own identity and records the caller's in registered-by, which the owner rule
# (owner-restriction-policy.yaml) allows only to those who may override; it applies the
# same rule to its callers itself.
- apiGroups: ["registry.optiinfra.io"]
  resources: ["agents"]
  verbs: ["get", "list", "create", "patch", "delete", "override"]
# Application: a REST heartbeat writes the status (the same merge-patch the sidecar
# writes) when the report changes, or if Leases are refused.
- apiGroups: ["registry.optiinfra.io"]
  resources: ["agents/status"]
  verbs: ["patch"]
# Application: every other REST heartbeat renews the agent's Lease (a merge-patch, no
# read), creating it on the first heartbeat.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create", "patch"]
# Application: GET /agents/{id}/events lists the Events about one agent (the dashboard's
# detail panel), selected by the involved object; read only, for whoever may read the agent.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list"]
{{- end }}

{{- define "agent-registry.facadeEnv" -}}
{{- $facade := .Values.facade -}}
- name: AGENT_REGISTRY_FACADE_HOST
  value: "0.0.0.0"
- name: AGENT_REGISTRY_FACADE_PORT
  value: {{ $facade.port | quote }}
- name: AGENT_REGISTRY_FACADE_METRICS_PORT
  value: {{ $facade.metricsPort | quote }}
- name: AGENT_REGISTRY_FACADE_NAMESPACE
  value: {{ include "agent-registry.facade.namespace" . | quote }}
# A `namespace` query parameter may only name namespaces the operator watches.
- name: AGENT_REGISTRY_FACADE_ALLOWED_NAMESPACES
  value: {{ join "," .Values.watchNamespaces | quote }}
- name: AGENT_REGISTRY_FACADE_AUTH_ENABLED
  value: {{ $facade.auth.enabled | quote }}
- name: AGENT_REGISTRY_FACADE_AUTH_CACHE_SECONDS
  value: {{ $facade.auth.cacheSeconds | quote }}
- name: AGENT_REGISTRY_FACADE_AUTH_STALE_SECONDS
  value: {{ $facade.auth.staleSeconds | quote }}
- name: AGENT_REGISTRY_FACADE_AUTH_AUDIENCES
  value: {{ join "," $facade.auth.audiences | quote }}
- name: AGENT_REGISTRY_FACADE_HEARTBEAT_INTERVAL_SECONDS
  value: {{ $facade.heartbeat.intervalSeconds | quote }}
- name: AGENT_REGISTRY_FACADE_UNREACHABLE_AFTER_SECONDS
  value: {{ $facade.heartbeat.unreachableAfterSeconds | quote }}
- name: AGENT_REGISTRY_FACADE_GC_AFTER_SECONDS
  value: {{ $facade.heartbeat.gcAfterSeconds | quote }}
- name: AGENT_REGISTRY_FACADE_MAX_BODY_BYTES
  value: {{ $facade.maxBodyBytes | quote }}
- name: AGENT_REGISTRY_FACADE_MAX_CONCURRENT_QUERIES
  value: {{ $facade.maxConcurrentQueries | quote }}
- name: AGENT_REGISTRY_FACADE_MAX_QUEUED_QUERIES
  value: {{ $facade.maxQueuedQueries | quote }}
- name: AGENT_REGISTRY_FACADE_QUERY_QUEUE_SECONDS
  value: {{ $facade.queryQueueSeconds | quote }}
- name: AGENT_REGISTRY_FACADE_ROUTE_SEED
  value: {{ $facade.routeSeed | default "" | quote }}
- name: AGENT_REGISTRY_FACADE_WATCH_MAX_OPEN
  value: {{ $facade.watch.maxOpen | quote }}
- name: AGENT_REGISTRY_FACADE_WATCH_KEEPALIVE_SECONDS
  value: {{ $facade.watch.keepaliveSeconds | quote }}
- name: AGENT_REGISTRY_FACADE_WATCH_BUFFER_EVENTS
  value: {{ $facade.watch.bufferEvents | quote }}
- name: AGENT_REGISTRY_FACADE_WATCH_MAX_SECONDS
  value: {{ $facade.watch.maxSeconds | quote }}
- name: AGENT_REGISTRY_FACADE_REDIS_TIMEOUT_SECONDS
  value: {{ $facade.redis.timeoutSeconds | quote }}
- name: AGENT_REGISTRY_FACADE_REDIS_RETRY_SECONDS
  value: {{ $facade.redis.retrySeconds | quote }}
- name: AGENT_REGISTRY_FACADE_REDIS_MAX_CONNECTIONS
  value: {{ $facade.redis.maxConnections | quote }}
- name: AGENT_REGISTRY_FACADE_KUBE_TIMEOUT_SECONDS
  value: {{ $facade.kubeTimeoutSeconds | quote }}
- name: AGENT_REGISTRY_FACADE_READ_YOUR_WRITES_SECONDS
  value: {{ $facade.readYourWritesSeconds | quote }}
- name: AGENT_REGISTRY_FACADE_SHUTDOWN_TIMEOUT_SECONDS
  value: {{ $facade.shutdownTimeoutSeconds | quote }}
- name: AGENT_REGISTRY_FACADE_ACCESS_LOG
  value: {{ $facade.accessLog | quote }}
- name: AGENT_REGISTRY_FACADE_SERVICE_NAME
  value: {{ $facade.serviceName | quote }}
- name: AGENT_REGISTRY_FACADE_LOG_LEVEL
  value: {{ $facade.logLevel | upper | quote }}
{{ include "agent-registry.redisUrlEnv" . }}
{{- end }}
