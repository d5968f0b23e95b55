{{/* Names and labels shared by the templates. */}}

{{- define "tritium.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tritium.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tritium.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tritium.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tritium.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tritium.labels" -}}
helm.sh/chart: {{ include "tritium.chart" . }}
{{ include "tritium.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tritium.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tritium.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding object-storage credentials: the user's own, or the chart's when it has anything to hold. */}}
{{- define "tritium.credentialsSecret" -}}
{{- if .Values.objectStorage.existingSecret -}}
{{- .Values.objectStorage.existingSecret -}}
{{- else if or .Values.objectStorage.env .Values.objectStorage.credentialFile .Values.objectStorage.gcsServiceAccountJson -}}
{{- printf "%s-storage" (include "tritium.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Seconds Kubernetes waits between SIGTERM and SIGKILL: the preStop sleep, tritium's own drain bound
     (--exit-timeout-secs) and a margin for unloading models. */}}
{{- define "tritium.terminationGracePeriodSeconds" -}}
{{- add (int .Values.server.preStopSleepSeconds) (int .Values.server.exitTimeoutSecs) (int .Values.server.shutdownMarginSeconds) -}}
{{- end -}}
