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
- name: ROUTER_STATE_STORE
  value: {{ include "image-router.stateStore" . | quote }}
- name: ROUTER_STATE_DIR
  value: {{ .Values.state.sqlite.path | quote }}
{{- with .Values.gateway.configEnv }}
{{- $names := list }}
{{- range . }}{{ $names = append $names .name }}{{ end }}
# the operator's list: routes.yaml may read these, and its own env: list no others
- name: ROUTER_CONFIG_ENV
  value: {{ join "," $names | quote }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "image-router.tenantsName" -}}{{ include "image-router.fullname" . }}-tenants{{- end }}

{{/* routes.yaml's directory, /etc/router: the routes ConfigMap and, with
gateway.tenants.file, the Secret holding tenants.yaml, in one projected volume. The
kubelet swaps both behind one `..data` symlink, and the tenants file lies in the
gateway's default secret directory (routes.yaml's own). Args: root, configMap, secret. */}}
{{- define "image-router.routesVolume" -}}
- name: routes
{{- if .root.Values.gateway.tenants.file }}
  projected:
    sources:
      - configMap: {name: {{ .configMap }}}
      - secret: {name: {{ .secret }}}
{{- else }}
  configMap:
    name: {{ .configMap }}
{{- end }}
{{- end }}

{{/* gateway.tenants.keysSecret, read-only at keysPath (the gateway and the hook). */}}
{{- define "image-router.tenantKeysMount" -}}
{{- with .Values.gateway.tenants }}{{ if .keysSecret }}
- name: tenant-keys
  mountPath: {{ .keysPath }}
  readOnly: true
{{- end }}{{ end }}
{{- end }}

{{- define "image-router.tenantKeysVolume" -}}
{{- with .Values.gateway.tenants }}{{ if .keysSecret }}
- name: tenant-keys
  secret:
    secretName: {{ .keysSecret }}
    defaultMode: 288  # 0440: the pod's group (fsGroup) reads the keys, no one else
{{- end }}{{ end }}
{{- end }}

{{/* A path as routes.yaml gives it, resolved as the gateway resolves it: relative to
routes.yaml's directory, /etc/router. */}}
{{- define "image-router.routesPath" -}}
{{- if isAbs . }}{{ clean . }}{{ else }}{{ clean (printf "/etc/router/%s" .) }}{{ end }}
{{- end }}

{{/* "true" when path (resolved) lies in one of dirs (resolved). Args: path, dirs. */}}
{{- define "image-router.inDirs" -}}
{{- $path := .path }}
{{- range .dirs }}{{ if or (eq . $path) (hasPrefix (printf "%s/" (trimSuffix "/" .)) $path) }}true{{ end }}{{ end }}
{{- end }}

{{/* The tenants values and routes.yaml must agree, or every pod would refuse the routes
(the gateway reads secret files only under routes' secret_dirs; default: /etc/router):
gateway.tenants.file is /etc/router/tenants.yaml, which routes name as their tenants
file, and keysPath must be one of routes' secret_dirs. */}}
{{- define "image-router.checkTenants" -}}
{{- $routes := fromYaml .Values.routes }}
{{- $values := .Values.gateway.tenants }}
{{- $dirs := list }}
{{- range (get $routes "secret_dirs" | default list) }}
{{- $dirs = append $dirs (include "image-router.routesPath" (toString .)) }}
{{- end }}
{{- $ref := get $routes "tenants" }}
{{- $named := "" }}
{{- if and (kindIs "map" $ref) (hasKey $ref "file") }}
{{- $named = include "image-router.routesPath" (toString (get $ref "file")) }}
{{- end }}
{{- if $values.file }}
{{- $parsed := fromYaml $values.file }}
{{- if or (hasKey $parsed "Error") (not (or (hasKey $parsed "tenants") (hasKey $parsed "mode"))) }}
{{- fail "gateway.tenants.file: expected the content of tenants.yaml (a mapping with mode and tenants), verbatim" }}
{{- end }}
{{- if ne $named "/etc/router/tenants.yaml" }}
{{- fail "gateway.tenants.file is mounted at /etc/router/tenants.yaml: routes must read it with `tenants: {file: tenants.yaml}`" }}
{{- end }}
{{- if and $dirs (not (include "image-router.inDirs" (dict "path" "/etc/router" "dirs" $dirs))) }}
{{- fail "routes: secret_dirs must include routes.yaml's own directory (.) for the gateway to read gateway.tenants.file" }}
{{- end }}
{{- else if eq $named "/etc/router/tenants.yaml" }}
{{- fail "routes read tenants.yaml beside routes.yaml: set gateway.tenants.file to its content" }}
{{- end }}
{{- if $values.keysSecret }}
{{- $keys := include "image-router.routesPath" $values.keysPath }}
{{- if not (include "image-router.inDirs" (dict "path" $keys "dirs" $dirs)) }}
{{- fail (printf "gateway.tenants.keysSecret is mounted at %s: routes must list it in secret_dirs (secret_dirs: [., %s])" $keys $keys) }}
{{- end }}
{{- end }}
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
{{- if and $rollout (eq .Values.state.store "sqlite") (or (gt (int .Values.gateway.replicaCount) 1) .Values.gateway.autoscaling.enabled) }}
{{- fail "routes: a canary rollout with more than one gateway pod needs state.store: redis (with sqlite every pod would run a rollout of its own)" }}
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
{{ include "image-router.chartRedisURL" (include "image-router.redisName" .) }}
{{- else -}}
{{ fail "cache.store is redis: set cache.redis.url to an existing Redis, or cache.redis.deploy: true" }}
{{- end -}}
{{- else -}}
disk://{{ .Values.cache.disk.path }}
{{- end -}}
{{- end }}

{{- define "image-router.stateRedisName" -}}{{ include "image-router.fullname" . }}-state-redis{{- end }}

{{- define "image-router.redisSecretName" -}}
{{- default (printf "%s-redis" (include "image-router.fullname" .)) .Values.redisAuth.existingSecret }}
{{- end }}

{{/* "true" (or empty) when the chart runs the cache's Redis. */}}
{{- define "image-router.deploysCacheRedis" -}}
{{- if and (eq .Values.cache.store "redis") .Values.cache.redis.deploy (not .Values.cache.redis.url) }}true{{ end }}
{{- end }}

{{/* "true" when state lives in the chart's cache Redis (then run as noeviction). */}}
{{- define "image-router.sharesCacheRedis" -}}
{{- if and (eq .Values.state.store "redis") .Values.state.redis.useCacheRedis }}
{{- if not (include "image-router.deploysCacheRedis" .) }}
{{- fail "state.redis.useCacheRedis needs the chart's cache Redis (cache.store: redis, cache.redis.deploy: true)" }}
{{- end }}true
{{- end }}
{{- end }}

{{/* "true" when the chart runs a Redis of its own for state. */}}
{{- define "image-router.deploysStateRedis" -}}
{{- if and (eq .Values.state.store "redis") .Values.state.redis.deploy (not .Values.state.redis.url) (not .Values.state.redis.useCacheRedis) }}true{{ end }}
{{- end }}

{{/* The URL of a Redis this chart runs: its password from the env var the gateway gets
from the Secret (Kubernetes expands $(VAR) in env values). */}}
{{- define "image-router.chartRedisURL" -}}
redis://:$(ROUTER_REDIS_PASSWORD)@{{ . }}:6379/0
{{- end }}

{{/* The state store URL the gateway gets as ROUTER_STATE_STORE. */}}
{{- define "image-router.stateStore" -}}
{{- if eq .Values.state.store "redis" -}}
{{- if .Values.state.redis.url -}}
{{ .Values.state.redis.url }}
{{- else if include "image-router.sharesCacheRedis" . -}}
{{ include "image-router.chartRedisURL" (include "image-router.redisName" .) }}
{{- else if .Values.state.redis.deploy -}}
{{ include "image-router.chartRedisURL" (include "image-router.stateRedisName" .) }}
{{- else -}}
{{ fail "state.store is redis: set state.redis.url (a Redis with maxmemory-policy noeviction), state.redis.deploy: true, or state.redis.useCacheRedis: true" }}
{{- end -}}
{{- else -}}
sqlite://{{ .Values.state.sqlite.path }}/state.db
{{- end -}}
{{- end }}

{{/* One Redis Deployment + Service. durable: noeviction + appendonly (a state store);
else allkeys-lru without persistence (a cache). */}}
{{- define "image-router.redisPod" -}}
{{- $root := .root }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .name }}
  labels:
    {{- include "image-router.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  replicas: 1
  strategy: {type: Recreate}
  selector:
    matchLabels:
      {{- include "image-router.selector" (dict "root" $root "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "image-router.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
    spec:
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 999
        runAsGroup: 999
        fsGroup: 999
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: redis
          image: "{{ $root.Values.cache.redis.image.repository }}:{{ $root.Values.cache.redis.image.tag }}"
          imagePullPolicy: {{ $root.Values.cache.redis.image.pullPolicy }}
          env:
            # redis-cli (the probe) reads REDISCLI_AUTH; the server gets it as --requirepass
            - name: REDISCLI_AUTH
              valueFrom:
                secretKeyRef:
                  name: {{ include "image-router.redisSecretName" $root }}
                  key: redis-password
          {{- if eq .durable "true" }}
          args: ["--requirepass", "$(REDISCLI_AUTH)", "--protected-mode", "yes",
                 "--maxmemory", {{ .maxmemory | quote }}, "--maxmemory-policy", "noeviction",
                 "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
          {{- else }}
          args: ["--requirepass", "$(REDISCLI_AUTH)", "--protected-mode", "yes",
                 "--maxmemory", {{ .maxmemory | quote }}, "--maxmemory-policy", "allkeys-lru",
                 "--appendonly", "no", "--save", ""]
          {{- end }}
          ports:
            - {name: redis, containerPort: 6379, protocol: TCP}
          readinessProbe:
            exec: {command: ["redis-cli", "ping"]}
            periodSeconds: 5
          livenessProbe:
            tcpSocket: {port: redis}
            periodSeconds: 10
          resources:
            {{- toYaml .resources | nindent 12 }}
          securityContext:
            {{- include "image-router.containerSecurity" $root | nindent 12 }}
          volumeMounts:
            - {name: data, mountPath: /data}
      volumes:
        - name: data
          {{- if .claim }}
          persistentVolumeClaim:
            claimName: {{ .claim }}
          {{- else }}
          emptyDir: {}
          {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .name }}
  labels:
    {{- include "image-router.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  selector:
    {{- include "image-router.selector" (dict "root" $root "component" .component) | nindent 4 }}
  ports:
    - {name: redis, port: 6379, targetPort: redis, protocol: TCP}
{{- end }}
