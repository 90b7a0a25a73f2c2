{{/* The agent's image: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "pxb-agent.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
