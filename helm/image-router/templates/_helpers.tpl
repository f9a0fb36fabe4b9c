{{/* Chart name, truncated to the 63 characters Kubernetes allows in names. */}}
{{- define "image-router.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart, unless the release already contains it. */}}
{{- define "image-router.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "image-router.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "image-router.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "image-router.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "image-router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component (gateway or triton). */}}
{{- define "image-router.selector" -}}
app.kubernetes.io/name: {{ include "image-router.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "image-router.gatewayName" -}}{{ include "image-router.fullname" . }}-gateway{{- end }}
{{- define "image-router.tritonName" -}}{{ include "image-router.fullname" . }}-triton{{- end }}
{{- define "image-router.routesName" -}}{{ include "image-router.fullname" . }}-routes{{- end }}

{{- define "image-router.secretName" -}}
{{- default (printf "%s-admin" (include "image-router.fullname" .)) .Values.gateway.existingSecret }}
{{- end }}

{{/* What routes.yaml's ${VARS} read: the gateway and the validation hook set the same. */}}
{{- define "image-router.routesEnv" -}}
- name: TRITON_URL
  value: {{ include "image-router.tritonURL" . | quote }}
- name: TRITON_GRPC_URL
  value: {{ printf "%s:%v" (include "image-router.tritonName" .) .Values.triton.ports.grpc | quote }}
- name: ROUTER_CACHE_STORE
  value: {{ include "image-router.cacheStore" . | quote }}
{{- end }}

{{/* routes must at least be a YAML mapping: a file that does not parse fails the render
(the pre-upgrade hook then runs `router validate` on everything else). */}}
{{- define "image-router.checkRoutes" -}}
{{- $parsed := fromYaml .Values.routes }}
{{- if hasKey $parsed "Error" }}
{{- fail (printf "routes: not valid YAML: %s" (get $parsed "Error")) }}
{{- end }}
{{- if not (or (hasKey $parsed "default_route") (hasKey $parsed "routes") (hasKey $parsed "models")) }}
{{- fail "routes: expected a routes.yaml mapping (models, routes, default_route)" }}
{{- end }}
{{- $rollout := false }}
{{- range $route := (get $parsed "routes" | default list) }}
{{- if kindIs "map" $route }}
{{- range $arm := (get $route "split" | default list) }}
{{- if and (kindIs "map" $arm) (hasKey $arm "rollout") }}{{- $rollout = true }}{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $rollout (eq .Values.cache.store "disk") (or (gt (int .Values.gateway.replicaCount) 1) .Values.gateway.autoscaling.enabled) }}
{{- fail "routes: a canary rollout with more than one gateway pod needs cache.store: redis (on disk every pod would run a rollout of its own)" }}
{{- end }}
{{- end }}

{{/* The headless Service: one address per ready pod (routes discover them). */}}
{{- define "image-router.tritonURL" -}}
http://{{ include "image-router.tritonName" . }}-headless:{{ .Values.triton.ports.http }}
{{- end }}

{{/* A restricted-profile security context for containers. */}}
{{- define "image-router.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "image-router.redisName" -}}{{ include "image-router.fullname" . }}-redis{{- end }}

{{/* The cache store URL the gateway gets as ROUTER_CACHE_STORE. */}}
{{- define "image-router.cacheStore" -}}
{{- if eq .Values.cache.store "redis" -}}
{{- if .Values.cache.redis.url -}}
{{ .Values.cache.redis.url }}
{{- else if .Values.cache.redis.deploy -}}
redis://{{ include "image-router.redisName" . }}:6379/0
{{- else -}}
{{ fail "cache.store is redis: set cache.redis.url to an existing Redis, or cache.redis.deploy: true" }}
{{- end -}}
{{- else -}}
disk://{{ .Values.cache.disk.path }}
{{- end -}}
{{- end }}
