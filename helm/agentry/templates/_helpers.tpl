{{/* Names and labels shared by every template. */}}

{{- define "agentry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release name, plus the chart name unless the release name already contains it. */}}
{{- define "agentry.fullname" -}}
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

{{- define "agentry.operatorName" -}}
{{- printf "%s-operator" (include "agentry.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agentry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "agentry.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "agentry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentry
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "agentry.selectorLabels" . }}
{{- end -}}

{{- define "agentry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "agentry.operatorSelectorLabels" -}}
{{ include "agentry.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "agentry.operatorImage" -}}
{{- printf "%s:%s" .Values.image.operator.repository (default .Chart.AppVersion .Values.image.operator.tag) -}}
{{- end -}}

{{- define "agentry.runtimeImage" -}}
{{- printf "%s:%s" .Values.image.runtime.repository (default .Chart.AppVersion .Values.image.runtime.tag) -}}
{{- end -}}

{{/* The administrator database URL, from the Secret the installer created. */}}
{{- define "agentry.databaseUrlEnv" -}}
- name: AGENTRY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.adminSecret.name }}
      key: {{ .Values.database.adminSecret.key }}
{{- end -}}

{{/*
The operator's Kubernetes permissions, one entry per (apiGroup, resource) with its verbs, from
files/operator-permissions.yaml: the single list that both the ClusterRole and the Role (for
entries scoped to the release namespace) are rendered from.
*/}}
{{- define "agentry.permissions" -}}
{{- .Files.Get "files/operator-permissions.yaml" -}}
{{- end -}}

{{/* Rules of the permissions whose scope is `scope` ("cluster" or "release-namespace"). */}}
{{- define "agentry.rules" -}}
{{- $scope := .scope -}}
{{- range $p := fromYamlArray (include "agentry.permissions" .root) }}
{{- if eq (default "cluster" $p.scope) $scope }}
- apiGroups: [{{ $p.apiGroup | quote }}]
  resources: [{{ $p.resource | quote }}]
  verbs: [{{ range $i, $v := $p.verbs }}{{ if $i }}, {{ end }}{{ $v | quote }}{{ end }}]
{{- end }}
{{- end }}
{{- end -}}

{{/* Egress to cluster DNS (any namespace's kube-dns / CoreDNS pods). */}}
{{- define "agentry.dnsEgress" -}}
- to:
    - namespaceSelector: {}
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}

{{/* Egress to PostgreSQL. */}}
{{- define "agentry.postgresEgress" -}}
- to:
    {{- range .Values.networkPolicy.postgres.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - port: {{ .Values.networkPolicy.postgres.port }}
      protocol: TCP
{{- end -}}
