{{/* Names: <fullname>-<component>; fullname defaults to the release name ("perllm"). */}}
{{- define "perllm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "perllm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "perllm.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "perllm.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* "perllm.component" (dict "root" $ "name" "operator") -> perllm-operator */}}
{{- define "perllm.component" -}}
{{- printf "%s-%s" (include "perllm.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "perllm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "perllm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "perllm.labels" -}}
{{ include "perllm.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: perllm
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The PerLLM image (operator, extender, agent, twin): one image, entrypoint `perllm`. */}}
{{- define "perllm.image" -}}
{{- $img := .Values.image -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}

{{- define "perllm.schedulerImage" -}}
{{- printf "%s:%s" .Values.scheduler.image.repository .Values.scheduler.image.tag -}}
{{- end -}}

{{/* Pod and container security: non-root, read-only root FS, no capabilities, seccomp. */}}
{{- define "perllm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.security.runAsUser }}
runAsGroup: {{ .Values.security.runAsUser }}
fsGroup: {{ .Values.security.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "perllm.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "perllm.extenderURL" -}}
{{- printf "http://%s.%s.svc:%d%s" (include "perllm.component" (dict "root" . "name" "extender")) .Release.Namespace (int .Values.extender.port) .Values.extender.prefix -}}
{{- end -}}

{{/* Scheduling knobs shared by every workload: nodeSelector, tolerations, affinity. */}}
{{- define "perllm.placement" -}}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (concat (.root.Values.global.tolerations | default list) (.c.tolerations | default list)) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
