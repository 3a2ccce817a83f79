{{/* Names, labels and the image, shared by every template. */}}

{{- define "runplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name: the release name when it already contains the chart
name, else <release>-<chart>. Component names append -controller / -api, so
the base is cut to leave room for them within 63 characters.
*/}}
{{- define "runplane.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "runplane.controller.fullname" -}}
{{- printf "%s-controller" (include "runplane.fullname" .) }}
{{- end }}

{{- define "runplane.api.fullname" -}}
{{- printf "%s-api" (include "runplane.fullname" .) }}
{{- end }}

{{- define "runplane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "runplane.labels" -}}
helm.sh/chart: {{ include "runplane.chart" . }}
app.kubernetes.io/name: {{ include "runplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: runplane
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component; call with (dict "ctx" . "component" "controller"). */}}
{{- define "runplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "runplane.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's objects; call like runplane.selectorLabels. */}}
{{- define "runplane.componentLabels" -}}
{{ include "runplane.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "runplane.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "runplane.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "runplane.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "runplane.api.serviceAccountName" -}}
{{- if .Values.api.serviceAccount.create }}
{{- default (include "runplane.api.fullname" .) .Values.api.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.api.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "runplane.callbackSecretName" -}}
{{- default (printf "%s-callback" (include "runplane.fullname" .)) .Values.callbackKey.existingSecret }}
{{- end }}

{{/* Where workloads post progress: the value, else the gateway's Service. */}}
{{- define "runplane.callbackUrl" -}}
{{- if .Values.controller.callbackUrl }}
{{- .Values.controller.callbackUrl }}
{{- else if .Values.api.enabled }}
{{- printf "http://%s.%s.svc:%d" (include "runplane.api.fullname" .) .Release.Namespace (int .Values.api.service.port) }}
{{- end }}
{{- end }}

{{/* Pod annotations for Prometheus' annotation-based discovery; call with (dict "ctx" . "port" N). */}}
{{- define "runplane.scrapeAnnotations" -}}
{{- if .ctx.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* The plan table as --plan flags, for both processes. */}}
{{- define "runplane.planArgs" -}}
{{- range $name := list "free" "pro" "team" }}
{{- $p := index $.Values.plans $name }}
- --plan={{ $name }}={{ int64 $p.concurrentTasks }},{{ int64 $p.requestsPerMinute }}{{ if not (kindIs "invalid" $p.gpus) }},{{ int64 $p.gpus }}{{ end }}
{{- end }}
{{- end }}

{{/* The callback key, mounted read-only where both processes expect it. */}}
{{- define "runplane.callbackKeyDir" -}}
/etc/runplane/callback
{{- end }}
