{{/*
Names, labels and shared snippets. Every object name starts with "agent-registry.fullname".
*/}}

{{- define "agent-registry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>", or just "<release>" when it already contains the chart name. */}}
{{- define "agent-registry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "agent-registry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "agent-registry.labels" -}}
helm.sh/chart: {{ include "agent-registry.chart" . }}
app.kubernetes.io/name: {{ include "agent-registry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agent-registry
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "operator"). */}}
{{- define "agent-registry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent-registry.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's objects: (dict "root" $ "component" "operator"). */}}
{{- define "agent-registry.componentLabels" -}}
{{ include "agent-registry.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "agent-registry.operator.fullname" -}}
{{- printf "%s-operator" (include "agent-registry.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agent-registry.facade.fullname" -}}
{{- printf "%s-facade" (include "agent-registry.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agent-registry.redis.fullname" -}}
{{- printf "%s-redis" (include "agent-registry.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agent-registry.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "agent-registry.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "agent-registry.facade.serviceAccountName" -}}
{{- if .Values.facade.serviceAccount.create }}
{{- default (include "agent-registry.facade.fullname" .) .Values.facade.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.facade.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The registry image, by digest when one is given. */}}
{{- define "agent-registry.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The namespace REST registrations go to. */}}
{{- define "agent-registry.facade.namespace" -}}
{{- default .Release.Namespace .Values.facade.defaultNamespace }}
{{- end }}

{{/* Whether the registry serves every namespace (ClusterRoles) or a list (Roles). */}}
{{- define "agent-registry.clusterwide" -}}
{{- if not .Values.watchNamespaces }}true{{- end }}
{{- end }}

{{/* The Redis URL as a container env entry; from a Secret when one is named. */}}
{{- define "agent-registry.redisUrlEnv" -}}
{{- $redis := .Values.redis -}}
- name: AGENT_REGISTRY_REDIS_URL
{{- if $redis.bundled.enabled }}
  value: {{ printf "redis://%s.%s.svc:6379/0" (include "agent-registry.redis.fullname" .) .Release.Namespace | quote }}
{{- else if $redis.external.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ $redis.external.existingSecret }}
      key: {{ $redis.external.existingSecretKey }}
{{- else }}
  value: {{ required "redis.external.url or redis.external.existingSecret is required when redis.bundled.enabled is false" $redis.external.url | quote }}
{{- end }}
- name: AGENT_REGISTRY_REDIS_KEY_PREFIX
  value: {{ $redis.keyPrefix | quote }}
{{- end }}

{{/* Pod anti-affinity from a preset: (dict "root" $ "component" "operator" "preset" "soft"). */}}
{{- define "agent-registry.podAntiAffinity" -}}
{{- if eq .preset "soft" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "agent-registry.selectorLabels" . | nindent 12 }}
{{- else if eq .preset "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "agent-registry.selectorLabels" . | nindent 10 }}
{{- end }}
{{- end }}

{{/* Cross-field checks that values.schema.json cannot express; rendered by every Deployment. */}}
{{- define "agent-registry.validate" -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled: without a Lease every replica would act" }}
{{- end }}
{{- if le (float64 .Values.operator.leaderElection.leaseDurationSeconds) (float64 .Values.operator.leaderElection.renewSeconds) }}
{{- fail "operator.leaderElection.leaseDurationSeconds must exceed renewSeconds" }}
{{- end }}
{{- if ge (float64 .Values.operator.shutdownTimeoutSeconds) (float64 .Values.operator.terminationGracePeriodSeconds) }}
{{- fail "operator.shutdownTimeoutSeconds must be below operator.terminationGracePeriodSeconds, or the kubelet kills the operator before it releases the Lease" }}
{{- end }}
{{- if le (int .Values.facade.heartbeat.unreachableAfterSeconds) (int .Values.facade.heartbeat.intervalSeconds) }}
{{- fail "facade.heartbeat.unreachableAfterSeconds must exceed facade.heartbeat.intervalSeconds" }}
{{- end }}
{{- if eq (int .Values.facade.metricsPort) (int .Values.facade.port) }}
{{- fail "facade.metricsPort must differ from facade.port (0 serves /metrics on the API port, behind auth)" }}
{{- end }}
{{- if ge (float64 .Values.facade.shutdownTimeoutSeconds) (float64 .Values.facade.terminationGracePeriodSeconds) }}
{{- fail "facade.shutdownTimeoutSeconds must be below facade.terminationGracePeriodSeconds, or the kubelet kills requests in flight" }}
{{- end }}
{{- if and .Values.watchNamespaces .Values.facade.enabled }}
{{- if not (has (include "agent-registry.facade.namespace" .) .Values.watchNamespaces) }}
{{- fail (printf "facade.defaultNamespace (%s) must be one of watchNamespaces %v" (include "agent-registry.facade.namespace" .) .Values.watchNamespaces) }}
{{- end }}
{{- end }}
{{- end }}
