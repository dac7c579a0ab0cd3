{{- define "kubelearn.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubelearn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubelearn.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubelearn.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The selector labels as "k=v,k=v": how the operator finds its own pods. */}}
{{- define "kubelearn.selectorString" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s" .Chart.Name .Release.Name -}}
{{- end -}}

{{- define "kubelearn.labels" -}}
{{ include "kubelearn.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Rules for the objects of Experiments, the same in a ClusterRole or a Role. */}}
{{- define "kubelearn.namespacedRules" -}}
# Experiments: watched (list, watch), deleted when their TTL runs out, status written.
# A Sweep's trials are Experiments the operator creates, suspends with a patch when it stops
# one, and reads singly while its cache may not hold them yet (just after a restart).
- apiGroups: ["kubelearn.dev"]
  resources: ["experiments"]
  verbs: ["list", "watch", "get", "create", "patch", "delete"]
- apiGroups: ["kubelearn.dev"]
  resources: ["experiments/status"]
  verbs: ["patch"]
# Sweeps: watched, status written; their trials go with them by owner reference.
- apiGroups: ["kubelearn.dev"]
  resources: ["sweeps"]
  verbs: ["list", "watch"]
- apiGroups: ["kubelearn.dev"]
  resources: ["sweeps/status"]
  verbs: ["patch"]
# One pod and one headless service per replica: cached by list and watch, never read singly.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "create", "delete"]
# Services are read singly only for TensorBoard's, to check its owner before it is removed.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "get", "create", "delete"]
# The experiment's token and Curve key (created once; read back one at a time, never
# listed, for the token the chief's progress endpoint asks for) and, for large experiments,
# the cluster spec (created, then patched when the experiment is scaled).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "get"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "patch"]
# The model directory's claim: looked up before an experiment's first pods, created when
# the experiment asks the operator for one. Never deleted by the operator.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create"]
# An experiment's TensorBoard (spec.tensorboard), removed with it by its owner reference,
# or by the operator (its owner checked first) when spec.tensorboard is turned off.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "delete"]
# Events on Experiments, from the operator and its framework.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Gang scheduling through scheduler-plugins, when an experiment asks for it.
- apiGroups: ["scheduling.x-k8s.io"]
  resources: ["podgroups"]
  verbs: ["create"]
{{- if .Values.networkPolicy.enabled }}
# The per-experiment NetworkPolicy.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create"]
{{- end }}
{{- end -}}
