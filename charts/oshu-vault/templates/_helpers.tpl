{{/* Names, labels and image references shared by every template. */}}

{{- define "oshu-vault.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-oshu-vault, or the release name alone when it already contains the chart name. */}}
{{- define "oshu-vault.fullname" -}}
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

{{- define "oshu-vault.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "oshu-vault.selectorLabels" -}}
app.kubernetes.io/name: {{ include "oshu-vault.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "oshu-vault.labels" -}}
helm.sh/chart: {{ include "oshu-vault.chart" . }}
{{ include "oshu-vault.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: oshu-vault
{{- end }}

{{- define "oshu-vault.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "oshu-vault.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "oshu-vault.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{- define "oshu-vault.webhookServiceName" -}}
{{- printf "%s-webhook" (include "oshu-vault.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Cluster-scoped objects (webhook configuration, ClusterRoles) take the full name too: give
two releases in different namespaces different names (or fullnameOverride). */}}
{{- define "oshu-vault.webhookConfigName" -}}
{{- include "oshu-vault.fullname" . }}
{{- end }}

{{- define "oshu-vault.clusterRoleName" -}}
{{- include "oshu-vault.fullname" . }}
{{- end }}

{{- define "oshu-vault.tlsSecretName" -}}
{{- printf "%s-webhook-tls" (include "oshu-vault.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* RBAC rules for serving VaultSessions in a namespace (or all): see rbac.yaml. */}}
{{- define "oshu-vault.sessionRules" }}
# VaultSessions: kopf lists and watches them and patches finalizers and handler progress in
# annotations; the reconciler reads one before acting and writes its status.
- apiGroups: [vault.oshu.dev]
  resources: [vaultsessions]
  verbs: [get, list, watch, patch]
- apiGroups: [vault.oshu.dev]
  resources: [vaultsessions/status]
  verbs: [patch]
# Secrets: the referenced ones are read (and watched, for rotation); the session Secret
# holding the sealed-token map, the CA and the session file is created, replaced and deleted.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, update, delete]
# Events on VaultSessions, for users (kubectl describe).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* Selectors and call settings shared by both webhooks of the configuration. */}}
{{- define "oshu-vault.webhookSelectors" }}
namespaceSelector:
  {{- with .Values.webhook.namespaceSelector.matchLabels }}
  matchLabels:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: {{ list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace | uniq | sortAlpha | toJson }}
    {{- with .Values.watchNamespaces }}
    - key: kubernetes.io/metadata.name
      operator: In
      values: {{ . | sortAlpha | toJson }}
    {{- end }}
    {{- with .Values.webhook.namespaceSelector.matchExpressions }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
objectSelector: {{ .Values.webhook.objectSelector | default dict | toJson }}
admissionReviewVersions: [v1]
sideEffects: None
failurePolicy: {{ .Values.webhook.failurePolicy }}
matchPolicy: Equivalent
timeoutSeconds: {{ .Values.webhook.timeoutSeconds }}
{{- end }}

{{/* The ConfigMap (release namespace) holding sidecar.upstreamCA: the chart's own for an
inline pem, else the named existing one; empty when no upstream CA is configured. */}}
{{- define "oshu-vault.upstreamCAConfigMap" -}}
{{- if .Values.sidecar.upstreamCA.pem }}
{{- printf "%s-upstream-ca" (include "oshu-vault.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- .Values.sidecar.upstreamCA.configMap.name }}
{{- end }}
{{- end }}

{{- define "oshu-vault.upstreamCAKey" -}}
{{- if .Values.sidecar.upstreamCA.pem }}ca.crt{{ else }}{{ .Values.sidecar.upstreamCA.configMap.key }}{{ end }}
{{- end }}
