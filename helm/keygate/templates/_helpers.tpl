{{/* Names and labels. */}}
{{- define "keygate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keygate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "keygate.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "keygate.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "keygate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keygate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keygate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "keygate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "keygate.secretName" -}}
{{- if .Values.secrets.existingSecret }}{{ .Values.secrets.existingSecret }}{{ else }}{{ include "keygate.fullname" . }}{{ end }}
{{- end }}

{{- define "keygate.usesSecret" -}}
{{- if or .Values.admin.enabled .Values.pepper.enabled (and (eq .Values.store.backend "redis") .Values.store.redis.auth) }}true{{ end }}
{{- end }}

{{/* The pods the Service selects: keygate's own (standalone) or the workload's (sidecar). */}}
{{- define "keygate.podSelector" -}}
{{- if eq .Values.mode "sidecar" }}
{{- if .Values.sidecar.demo.enabled }}
{{- include "keygate.selectorLabels" . }}
app.kubernetes.io/component: demo-app
{{- else }}
{{- required "sidecar.podSelector: the labels of your workload's pods" (.Values.sidecar.podSelector | default nil) | toYaml }}
{{- end }}
{{- else }}
{{- include "keygate.selectorLabels" . }}
{{- end }}
{{- end }}

{{/* A TOML value from a YAML value: maps become inline tables, lists arrays. */}}
{{- define "keygate.toml.value" -}}
{{- if kindIs "map" . -}}
{{- $parts := list -}}
{{- range $k, $v := . -}}
{{- $parts = append $parts (printf "%s = %s" (toJson $k) (include "keygate.toml.value" $v)) -}}
{{- end -}}
{ {{- join ", " $parts -}} }
{{- else if kindIs "slice" . -}}
{{- $parts := list -}}
{{- range . -}}
{{- $parts = append $parts (include "keygate.toml.value" .) -}}
{{- end -}}
[{{ join ", " $parts }}]
{{- else if kindIs "invalid" . -}}
{{- fail "config: null values have no TOML form; leave the setting out instead" -}}
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end }}

{{/* sidecar.toml: chart-managed sections, then .Values.config. */}}
{{- define "keygate.config" -}}
{{- $managed := list "environment" "listen" "ops" "admin" "upstream" "store" "keys" "authz" -}}
{{- range $k, $_ := .Values.config }}
{{- if has $k $managed }}
{{- fail (printf "config.%s is set by the chart; use the chart's own values for it" $k) }}
{{- end }}
{{- end -}}
{{- if and (eq .Values.store.backend "file") (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) (eq .Values.mode "standalone") }}
{{- fail "store.backend=file keeps keys in one pod: use store.backend=redis for more than one replica" }}
{{- end -}}
{{- if and (eq .Values.store.backend "file") (eq (dig "rate_limits" "backend" "local" .Values.config) "redis") }}
{{- fail "config.rate_limits.backend=redis needs store.backend=redis (set it to local with the file store)" }}
{{- end -}}
# Rendered by the keygate Helm chart.
environment = {{ .Values.environment | toJson }}

[listen]
address = "0.0.0.0:{{ .Values.ports.http }}"
{{- if .Values.tls.enabled }}

[listen.tls]
cert_file = "/etc/keygate/tls/tls.crt"
key_file = "/etc/keygate/tls/tls.key"
reload_interval = {{ .Values.tls.reloadInterval | toJson }}
{{- if .Values.tls.clientCASecret }}
client_ca_file = "/etc/keygate/client-ca/ca.crt"
{{- end }}
{{- end }}

[ops]
address = "0.0.0.0:{{ .Values.ports.ops }}"
{{- if not (has .Values.authz.mode (list "proxy" "authz" "both")) }}
{{- fail "authz.mode: proxy, authz or both" }}
{{- end }}
{{- if ne .Values.authz.mode "proxy" }}
{{- if not (dig "ip" "trusted_proxies" list .Values.config) }}
{{- fail "authz.mode=authz|both answers only trusted proxies: set config.ip.trusted_proxies to your ingress or mesh addresses" }}
{{- end }}

[authz]
mode = {{ .Values.authz.mode | toJson }}
address = "0.0.0.0:{{ .Values.authz.port }}"
check_path = {{ .Values.authz.checkPath | toJson }}
path_prefix = {{ .Values.authz.pathPrefix | toJson }}
{{- end }}

[admin]
address = {{ .Values.admin.address | toJson }}
{{- if .Values.admin.enabled }}
tokens_file = "/etc/keygate/secrets/admin-tokens"
{{- end }}

[upstream]
url = {{ .Values.upstream.url | toJson }}
connect_timeout = {{ .Values.upstream.connectTimeout | toJson }}
response_timeout = {{ .Values.upstream.responseTimeout | toJson }}

[store]
{{- if eq .Values.store.backend "redis" }}
backend = "redis"
url = {{ .Values.store.redis.url | toJson }}
key_prefix = {{ .Values.store.redis.keyPrefix | toJson }}
{{- if .Values.store.redis.writeReplicas }}
write_replicas = {{ .Values.store.redis.writeReplicas | int }}
{{- end }}
{{- if .Values.store.redis.auth }}
password_file = "/etc/keygate/secrets/redis-password"
{{- end }}
{{- else if eq .Values.store.backend "file" }}
backend = "file"
path = "/var/lib/keygate/keys.json"
{{- else }}
{{- fail "store.backend: file or redis" }}
{{- end }}

[keys]
{{- if .Values.pepper.enabled }}
pepper_file = "/etc/keygate/secrets/pepper"
{{- end }}
{{- range $section, $body := .Values.config }}
{{- if and (kindIs "slice" $body) }}
{{- range $body }}

[[{{ $section }}]]
{{- range $k, $v := . }}
{{ toJson $k }} = {{ include "keygate.toml.value" $v }}
{{- end }}
{{- end }}
{{- else if kindIs "map" $body }}

[{{ $section }}]
{{- range $k, $v := $body }}
{{ toJson $k }} = {{ include "keygate.toml.value" $v }}
{{- end }}
{{- else }}
{{- fail (printf "config.%s: a section (map) or, for routes, a list of maps" $section) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The keygate container. Used by the Deployment and, in sidecar mode, by your workload. */}}
{{- define "keygate.sidecar.container" -}}
- name: keygate
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["serve", "-c", "/etc/keygate/sidecar.toml"]
  ports:
    # Prefixed names: a Service's named targetPort resolves to the first container with that
    # name, and the app's own "http" must never win.
    - name: kg-http
      containerPort: {{ .Values.ports.http }}
      protocol: TCP
    - name: kg-ops
      containerPort: {{ .Values.ports.ops }}
      protocol: TCP
    {{- if ne .Values.authz.mode "proxy" }}
    - name: kg-authz
      containerPort: {{ .Values.authz.port }}
      protocol: TCP
    {{- end }}
  # Starts once the store answers; afterwards readiness only follows draining, so a store
  # outage leaves cached keys working (auth.stale_limit) instead of emptying the Service.
  startupProbe:
    httpGet: { path: /readyz, port: kg-ops }
    periodSeconds: 2
    failureThreshold: 60
  livenessProbe:
    httpGet: { path: /healthz, port: kg-ops }
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    httpGet: { path: "/readyz?store=ignore", port: kg-ops }
    periodSeconds: 5
    failureThreshold: 2
  lifecycle:
    # Keep serving while endpoints are updated, then drain on SIGTERM.
    preStop:
      sleep: { seconds: 5 }
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: keygate-config
      mountPath: /etc/keygate/sidecar.toml
      subPath: sidecar.toml
      readOnly: true
    - name: keygate-data
      mountPath: /var/lib/keygate
    {{- if include "keygate.usesSecret" . }}
    - name: keygate-secrets
      mountPath: /etc/keygate/secrets
      readOnly: true
    {{- end }}
    {{- if .Values.tls.enabled }}
    - name: keygate-tls
      mountPath: /etc/keygate/tls
      readOnly: true
    {{- if .Values.tls.clientCASecret }}
    - name: keygate-client-ca
      mountPath: /etc/keygate/client-ca
      readOnly: true
    {{- end }}
    {{- end }}
{{- end }}

{{/* The volumes the keygate container mounts. */}}
{{- define "keygate.sidecar.volumes" -}}
{{- if .Values.tls.enabled }}
- name: keygate-tls
  secret:
    secretName: {{ required "tls.secretName: a kubernetes.io/tls Secret" .Values.tls.secretName }}
    defaultMode: 0444
{{- if .Values.tls.clientCASecret }}
- name: keygate-client-ca
  secret:
    secretName: {{ .Values.tls.clientCASecret }}
    defaultMode: 0444
    items:
      - { key: ca.crt, path: ca.crt }
{{- end }}
{{- end }}
- name: keygate-config
  configMap:
    name: {{ include "keygate.fullname" . }}
- name: keygate-data
  {{- if and (eq .Values.store.backend "file") .Values.store.file.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.store.file.existingClaim }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- if include "keygate.usesSecret" . }}
- name: keygate-secrets
  secret:
    secretName: {{ include "keygate.secretName" . }}
    # Readable by keygate's uid without an fsGroup; only containers mounting it see it.
    defaultMode: 0444
    items:
      {{- if .Values.admin.enabled }}
      - { key: admin-tokens, path: admin-tokens }
      {{- end }}
      {{- if .Values.pepper.enabled }}
      - { key: pepper, path: pepper }
      {{- end }}
      {{- if and (eq .Values.store.backend "redis") .Values.store.redis.auth }}
      - { key: redis-password, path: redis-password }
      {{- end }}
{{- end }}
{{- end }}
