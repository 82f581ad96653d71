{{/* Chart name. */}}
{{- define "event-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release + chart, unless the release name already contains the chart name. */}}
{{- define "event-gateway.fullname" -}}
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

{{- define "event-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "event-gateway.labels" -}}
helm.sh/chart: {{ include "event-gateway.chart" . }}
{{ include "event-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: event-gateway
{{- end }}

{{- define "event-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "event-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "event-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "event-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the chart creates (JWT key and/or Redis URL). */}}
{{- define "event-gateway.secretName" -}}
{{- include "event-gateway.fullname" . }}
{{- end }}

{{/* Does the chart create a Secret at all? */}}
{{- define "event-gateway.createSecret" -}}
{{- if or (not .Values.auth.existingSecret) (not .Values.redis.existingSecret) }}true{{ end }}
{{- end }}

{{/* The gateway's port: config.server.port, 8080 by default. */}}
{{- define "event-gateway.port" -}}
{{- $server := .Values.config.server | default dict }}
{{- $server.port | default 8080 | int }}
{{- end }}

{{- define "event-gateway.shutdownTimeout" -}}
{{- $server := .Values.config.server | default dict }}
{{- $server.shutdown_timeout_secs | default 10 | int }}
{{- end }}

{{/* terminationGracePeriodSeconds: must outlast preStop sleep + drain. */}}
{{- define "event-gateway.terminationGrace" -}}
{{- $needed := add (int .Values.preStopSleepSeconds) (int (include "event-gateway.shutdownTimeout" .)) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $needed 5 }}
{{- else if eq (toString .Values.terminationGracePeriodSeconds) "" }}
{{- add $needed 5 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be larger than preStopSleepSeconds + config.server.shutdown_timeout_secs (%d)" .Values.terminationGracePeriodSeconds $needed) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
config/ as TOML. A table's scalars and arrays first, then its sub-tables as [a.b] headers,
recursively; keys sorted; null values skipped. Values are JSON-encoded, which is valid TOML for
strings, numbers, booleans and arrays of those.
*/}}
{{- define "event-gateway.toml" -}}
{{- $prefix := .prefix }}
{{- $table := .table }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if and (not (kindIs "map" $value)) (not (kindIs "invalid" $value)) }}
{{ $key }} = {{ $value | toJson }}
{{- end }}
{{- end }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if kindIs "map" $value }}
{{- $path := $key }}
{{- if $prefix }}{{ $path = printf "%s.%s" $prefix $key }}{{ end }}

[{{ $path }}]
{{- include "event-gateway.toml" (dict "prefix" $path "table" $value) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "event-gateway.configToml" -}}
# Rendered by the event-gateway Helm chart from .Values.config; layered over the image's
# /app/config/default.toml. Environment variables GATEWAY__SECTION__KEY win over this file.
{{- include "event-gateway.toml" (dict "prefix" "" "table" (.Values.config | default dict)) }}
{{- end }}
