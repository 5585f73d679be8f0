{{/*
Names, labels and derived settings shared by the templates.
*/}}

{{/* The chart name, overridable; cut to 63 characters (a DNS label). */}}
{{- define "scalechat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: <release>-<chart>, or the release name when it
already contains the chart name; cut to 63 characters because some fields are DNS labels.
*/}}
{{- define "scalechat.fullname" -}}
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

{{/* name-version, as the helm.sh/chart label wants it. */}}
{{- define "scalechat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "scalechat.labels" -}}
helm.sh/chart: {{ include "scalechat.chart" . }}
{{ include "scalechat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: scalechat
{{- end }}

{{/* Labels that select this release's pods; each workload adds app.kubernetes.io/component. */}}
{{- define "scalechat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scalechat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image reference of every scalechat container. */}}
{{- define "scalechat.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Name of the in-chart Redis StatefulSet and its headless Service. */}}
{{- define "scalechat.redisName" -}}
{{- printf "%s-redis" (include "scalechat.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the operator's objects. */}}
{{- define "scalechat.operatorName" -}}
{{- printf "%s-operator" (include "scalechat.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "scalechat.operatorServiceAccountName" -}}
{{- default (include "scalechat.operatorName" .) .Values.operator.serviceAccount.name }}
{{- end }}

{{/* "true" when more than one chat pod may run (replicas > 1 or an HPA allowing it). */}}
{{- define "scalechat.multiPod" -}}
{{- if or (gt (int .Values.chat.replicas) 1) (and .Values.autoscaling.enabled (gt (int .Values.autoscaling.maxReplicas) 1)) }}true{{ end }}
{{- end }}

{{/* "true" when an external Redis is configured. */}}
{{- define "scalechat.externalRedis" -}}
{{- $e := .Values.redis.external }}
{{- if or $e.url $e.urls $e.existingSecret }}true{{ end }}
{{- end }}

{{/* The external Redis given in values (not existingSecret): its shards' URLs comma-separated, in order. */}}
{{- define "scalechat.externalRedisUrls" -}}
{{- if .Values.redis.external.urls }}{{ join "," .Values.redis.external.urls }}{{ else }}{{ .Values.redis.external.url }}{{ end }}
{{- end }}

{{/*
The broker the chat pods use: memory or redis. Refuses (fail) more than one pod
with the memory broker: each pod would hold its own rooms, and members of one
room on two pods would never see each other's messages.
*/}}
{{- define "scalechat.broker" -}}
{{- $multi := include "scalechat.multiPod" . }}
{{- if eq .Values.chat.broker "memory" }}
{{- if $multi }}
{{- fail "chat.broker=memory keeps rooms inside one process: it cannot serve chat.replicas > 1 or an autoscaler with maxReplicas > 1. Use chat.broker=redis (or auto)." }}
{{- end }}
{{- print "memory" }}
{{- else if or (eq .Values.chat.broker "redis") $multi (include "scalechat.externalRedis" .) }}
{{- print "redis" }}
{{- else }}
{{- print "memory" }}
{{- end }}
{{- end }}

{{/* "true" when the operator stores results in the chart's Redis (no operator.redisUrl). */}}
{{- define "scalechat.operatorUsesChartRedis" -}}
{{- if and .Values.operator.enabled (not .Values.operator.redisUrl) }}true{{ end }}
{{- end }}

{{/*
"true" when the chart runs its own Redis: for the redis broker, or for the
operator's results, unless redis.external names one.
*/}}
{{- define "scalechat.inChartRedis" -}}
{{- if and (or (eq (include "scalechat.broker" .) "redis") (include "scalechat.operatorUsesChartRedis" .)) (not (include "scalechat.externalRedis" .)) }}true{{ end }}
{{- end }}

{{/*
Host of in-chart Redis shard .shard: the StatefulSet pod's own DNS name through the
headless Service (the Service's name alone resolves to every shard's pod).
*/}}
{{- define "scalechat.inChartRedisHost" -}}
{{- $name := include "scalechat.redisName" .root }}
{{- printf "%s-%d.%s.%s.svc" $name (int .shard) $name .root.Release.Namespace }}
{{- end }}

{{/* URL of in-chart Redis shard .shard; database 0 for the chat broker, 1 for load test results. */}}
{{- define "scalechat.inChartRedisUrl" -}}
{{- printf "redis://%s:6379/%d" (include "scalechat.inChartRedisHost" .) (int .db) }}
{{- end }}

{{/* Every in-chart shard's URL on database .db, comma-separated, shard 0 first: the chat pods' list. */}}
{{- define "scalechat.inChartRedisUrls" -}}
{{- $urls := list }}
{{- range $shard := until (int .root.Values.redis.shards) }}
{{- $urls = append $urls (include "scalechat.inChartRedisUrl" (dict "root" $.root "db" $.db "shard" $shard)) }}
{{- end }}
{{- join "," $urls }}
{{- end }}

{{/* Seconds the kubelet waits after the preStop hook starts before SIGKILL. */}}
{{- define "scalechat.terminationGracePeriodSeconds" -}}
{{- add (int (ceil (float64 .Values.chat.settings.graceSeconds))) (int .Values.chat.preStopSleepSeconds) (int .Values.chat.terminationMarginSeconds) }}
{{- end }}

{{/* Restricted pod security context: numeric non-root uid, RuntimeDefault seccomp. */}}
{{- define "scalechat.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Restricted container security context: read-only root, no privilege escalation, no capabilities. */}}
{{- define "scalechat.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/*
stringData of the chat Secret (SCALECHAT_REDIS_URL, SCALECHAT_AUTH_SECRET); empty
when nothing secret is set here (values from existing Secrets are referenced instead).
*/}}
{{- define "scalechat.secretData" -}}
{{- if eq (include "scalechat.broker" .) "redis" }}
{{- if include "scalechat.inChartRedis" . }}
SCALECHAT_REDIS_URL: {{ include "scalechat.inChartRedisUrls" (dict "root" . "db" 0) | quote }}
{{- else if not .Values.redis.external.existingSecret }}
SCALECHAT_REDIS_URL: {{ include "scalechat.externalRedisUrls" . | quote }}
{{- end }}
{{- end }}
{{- if and .Values.chat.auth.secret (not .Values.chat.auth.existingSecret) }}
SCALECHAT_AUTH_SECRET: {{ .Values.chat.auth.secret | quote }}
{{- end }}
{{- end }}

{{/* A setting as the server parses it: whole numbers without an exponent (1048576, not 1.048576e+06). */}}
{{- define "scalechat.settingValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}{{ int64 . }}{{ else }}{{ toString . }}{{ end }}
{{- end }}

{{/* Rules values.schema.json cannot state; included once, by configmap.yaml. */}}
{{- define "scalechat.validate" -}}
{{- $s := .Values.chat.settings }}
{{- if gt (int $s.historyOnJoin) (int $s.historySize) }}
{{- fail (printf "chat.settings.historyOnJoin (%v) must be <= chat.settings.historySize (%v)" $s.historyOnJoin $s.historySize) }}
{{- end }}
{{- if eq (int .Values.chat.ports.http) (int .Values.chat.ports.metrics) }}
{{- fail "chat.ports.http and chat.ports.metrics must differ" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must be <= autoscaling.maxReplicas" }}
{{- end }}
{{- $e := .Values.redis.external }}
{{- if gt (len (compact (list $e.url (join "," $e.urls) $e.existingSecret))) 1 }}
{{- fail "set one of redis.external.url, redis.external.urls and redis.external.existingSecret, not several" }}
{{- end }}
{{- if and (gt (int .Values.redis.shards) 1) (include "scalechat.externalRedis" .) }}
{{- fail "redis.shards sizes the in-chart Redis; an external Redis lists its shards in redis.external.urls (or comma-separated in redis.external.existingSecret)" }}
{{- end }}
{{- end }}

{{/*
stringData of the operator's Secret: the results Redis URL (unless it comes from
redis.external.existingSecret). One Redis even when rooms are sharded: shard 0.
*/}}
{{- define "scalechat.operatorSecretData" -}}
{{- if .Values.operator.redisUrl }}
SCALECHAT_OPERATOR_REDIS_URL: {{ .Values.operator.redisUrl | quote }}
{{- else if include "scalechat.inChartRedis" . }}
SCALECHAT_OPERATOR_REDIS_URL: {{ include "scalechat.inChartRedisUrl" (dict "root" . "db" 1 "shard" 0) | quote }}
{{- else if not .Values.redis.external.existingSecret }}
SCALECHAT_OPERATOR_REDIS_URL: {{ first (splitList "," (include "scalechat.externalRedisUrls" .)) | quote }}
{{- end }}
{{- end }}
