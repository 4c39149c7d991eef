{{/* The release's base name, at most 40 characters so that suffixes fit in 63. */}}
{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The standard labels of every object. */}}
{{- define "herald.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: herald
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- end -}}

{{/* The labels that select one component's pods: pass (list $ "operator"). */}}
{{- define "herald.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: herald
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "herald.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* imagePullSecrets' names, comma-separated: pass .Values.imagePullSecrets. */}}
{{- define "herald.pullSecretNames" -}}
{{- $names := list -}}
{{- range . }}{{ $names = append $names .name }}{{ end -}}
{{- join "," $names -}}
{{- end -}}

{{/* The Secret holding the ledger's Redis URL under the key `url`. */}}
{{- define "herald.redisSecret" -}}
{{- if and (eq .Values.redis.mode "external") .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecret -}}
{{- else -}}
{{- printf "%s-redis" (include "herald.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The operator's rules on namespaced objects: cluster-wide, or in each watched namespace. */}}
{{- define "herald.namespacedRules" -}}
- apiGroups: [herald.dev]
  resources: [notificationcampaigns]
  verbs: [get, list, watch, patch]
- apiGroups: [herald.dev]
  resources: [notificationcampaigns/status]
  verbs: [get, patch]
# Owned objects block their campaign's deletion until collected (blockOwnerDeletion).
- apiGroups: [herald.dev]
  resources: [notificationcampaigns/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [cronjobs]
  verbs: [get, list, watch, create, patch, update, delete]
# A run's Job is active: phase Running (also for Jobs made with kubectl create job --from).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
# Read: a campaign's sources exist. Write: each campaign's own Secret with the Redis URL.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
