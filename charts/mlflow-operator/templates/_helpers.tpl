{{/* Full name of the release's objects. */}}
{{- define "mlflow-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mlflow-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mlflow-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "mlflow-operator.serviceAccountName" -}}
{{- default (include "mlflow-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "mlflow-operator.mlflowName" -}}
{{- printf "%s-mlflow" (include "mlflow-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlflow-operator.mlflowSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: mlflow
{{- end -}}

{{/* The default tracking server: tracking.uri, else the embedded server's Service. */}}
{{- define "mlflow-operator.trackingUri" -}}
{{- if .Values.tracking.uri -}}
{{- .Values.tracking.uri -}}
{{- else if .Values.mlflow.enabled -}}
{{- printf "http://%s.%s.svc:%d" (include "mlflow-operator.mlflowName" .) .Release.Namespace (int .Values.mlflow.port) -}}
{{- end -}}
{{- end -}}

{{/* The embedded server's in-cluster URL, when it runs workspaces (the operator treats it so). */}}
{{- define "mlflow-operator.embeddedWorkspaceServer" -}}
{{- if and .Values.mlflow.enabled .Values.mlflow.workspaces.enabled -}}
{{- printf "http://%s.%s.svc:%d" (include "mlflow-operator.mlflowName" .) .Release.Namespace (int .Values.mlflow.port) -}}
{{- end -}}
{{- end -}}

{{- define "mlflow-operator.peering" -}}
{{- if gt (int .Values.replicaCount) 1 -}}{{ include "mlflow-operator.fullname" . }}{{- end -}}
{{- end -}}

{{/* Rules for the namespaced resources the operator reads and writes. */}}
{{- define "mlflow-operator.namespacedRules" -}}
- apiGroups: [mlflow.operator.dev]
  resources: [experiments, trainingruns, registeredmodels, trainingsweeps]
  verbs: [get, list, watch, patch]
# A TrainingSweep's trials are TrainingRuns the operator creates.
- apiGroups: [mlflow.operator.dev]
  resources: [trainingruns]
  verbs: [create]
- apiGroups: [mlflow.operator.dev]
  resources: [experiments/status, trainingruns/status, registeredmodels/status, trainingsweeps/status]
  verbs: [get, patch]
# Jobs and trials are created with ownerReferences.blockOwnerDeletion, which needs this.
- apiGroups: [mlflow.operator.dev]
  resources: [trainingruns/finalizers, trainingsweeps/finalizers]
  verbs: [update]
# patch: to remove the operator's finalizer once a Job's outcome is recorded.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete, patch]
# A distributed TrainingRun's headless Service (its ranks' names), owned by the TrainingRun:
# created before its Job, read when one of that name exists already.
- apiGroups: [""]
  resources: [services]
  verbs: [get, create]
# Pods are listed only to report why a training Job failed.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Credentials named by spec.tracking.secretRef, in the object's own namespace; only Secrets
# labelled mlflow.operator.dev/credentials=true are used. list and watch (credentialsWatch):
# the operator watches those Secrets through a label selector instead of reading one per
# reconcile; the API server sends it no other Secret.
- apiGroups: [""]
  resources: [secrets]
  verbs: {{ if .Values.credentialsWatch }}[get, list, watch]{{ else }}[get]{{ end }}
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
# Workspace servers (MLflow workspaces with Kubernetes authorization) judge each MLflow call
# by Kubernetes RBAC of this group in the namespace's workspace: what the operator does in
# MLflow for a namespace's objects.
- apiGroups: [mlflow.kubeflow.org]
  resources: [experiments, registeredmodels]
  verbs: [get, list, create, update, delete]
{{- end -}}

{{/* Environment that points the in-cluster client at kubernetesApi, when it is set. */}}
{{- define "mlflow-operator.kubernetesApiEnv" -}}
{{- with .Values.kubernetesApi.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ . | quote }}
{{- end }}
{{- if .Values.kubernetesApi.port }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.kubernetesApi.port | quote }}
{{- end }}
{{- end -}}

{{/* Whether the embedded server keeps anything on its PVC: the sqlite store or the artifacts. */}}
{{- define "mlflow-operator.mlflowUsesVolume" -}}
{{- if or (eq .Values.mlflow.backendStore.type "sqlite") (eq .Values.mlflow.artifacts.type "pvc") -}}true{{- end -}}
{{- end -}}

{{/* Where the server keeps artifacts (it proxies them: training pods never hold store credentials). */}}
{{- define "mlflow-operator.mlflowArtifactsDestination" -}}
{{- if eq .Values.mlflow.artifacts.type "s3" -}}
{{- $s3 := .Values.mlflow.artifacts.s3 -}}
{{- printf "s3://%s" (trimSuffix "/" (printf "%s/%s" $s3.bucket (trimAll "/" $s3.prefix))) -}}
{{- else -}}
/mlflow/artifacts
{{- end -}}
{{- end -}}

{{/* The store's environment: the database URI (from the Secret for an external store, never in
     an argument or the pod spec) and the object store's endpoint and credentials. */}}
{{- define "mlflow-operator.mlflowStoreEnv" -}}
{{- $store := .Values.mlflow.backendStore -}}
{{- if eq $store.type "external" }}
- name: MLFLOW_BACKEND_STORE_URI
  valueFrom:
    secretKeyRef:
      name: {{ $store.uriFrom.secretKeyRef.name }}
      key: {{ $store.uriFrom.secretKeyRef.key }}
{{- else }}
- name: MLFLOW_BACKEND_STORE_URI
  value: sqlite:////mlflow/mlflow.db
{{- end }}
{{- if eq .Values.mlflow.artifacts.type "s3" }}
{{- $s3 := .Values.mlflow.artifacts.s3 }}
{{- with $s3.endpointUrl }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with $s3.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $s3.credentialsSecret.name }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $s3.credentialsSecret.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $s3.credentialsSecret.secretAccessKeyKey }}
{{- end }}
{{- end }}
- name: MLFLOW_DISABLE_TELEMETRY
  value: "true"
- name: HOME
  value: /tmp
{{- end -}}

{{/* `mlflow <args>` with the placeholder {uri} replaced by the database URI read from the
     environment inside the process, so that it is in no process's command line (mlflow db
     upgrade takes it only as an argument). */}}
{{- define "mlflow-operator.mlflowWithStoreUri" -}}
- python3
- -c
- "import os, sys; from mlflow.cli import cli; cli([a if a != '{uri}' else os.environ['MLFLOW_BACKEND_STORE_URI'] for a in sys.argv[1:]], prog_name='mlflow')"
{{- end -}}
