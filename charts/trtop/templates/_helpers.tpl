{{/*
Names, labels and checks shared by every template of the trtop chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "trtop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Base name of every object: fullnameOverride, else "<release>" when it already holds the
chart name, else "<release>-<chart>". Kept to 52 characters so suffixes such as
"-engines" and "-cluster-read" fit in the 63 a label value allows.
*/}}
{{- define "trtop.fullname" -}}
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

{{/* Chart label value: name-version. */}}
{{- define "trtop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods (never change them: Deployment selectors are immutable). */}}
{{- define "trtop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trtop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of every object the chart makes (names.py: LABEL_* and COMPONENT_OPERATOR). */}}
{{- define "trtop.labels" -}}
helm.sh/chart: {{ include "trtop.chart" . }}
{{ include "trtop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trtop
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "trtop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trtop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the existing ServiceAccount the operator runs as (serviceAccount.create is false)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The kopf peering object's name: one per release. */}}
{{- define "trtop.peeringName" -}}
{{- default (include "trtop.fullname" .) .Values.peering.name }}
{{- end }}

{{/* The operator image reference (digest wins over tag). */}}
{{- define "trtop.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}
{{- end }}

{{/* The engine-store claim name ("" when the store is S3). */}}
{{- define "trtop.storeClaimName" -}}
{{- if .Values.store.pvc.existingClaim }}
{{- .Values.store.pvc.existingClaim }}
{{- else if .Values.store.pvc.create }}
{{- printf "%s-engines" (include "trtop.fullname" .) }}
{{- end }}
{{- end }}

{{/* Where the operator reads engine records: the mount path, or the bucket URI. */}}
{{- define "trtop.storeUri" -}}
{{- if .Values.store.s3.uri }}
{{- .Values.store.s3.uri }}
{{- else }}
{{- .Values.store.mountPath }}
{{- end }}
{{- end }}

{{/* The namespaced mode's namespaces, comma separated (TRTOP_NAMESPACES). */}}
{{- define "trtop.watchNamespaces" -}}
{{- if .Values.rbac.namespaced }}{{ join "," .Values.watchNamespaces }}{{ end }}
{{- end }}

{{/*
Combinations of values that cannot work, each failing the render with what to change.
Included once by the Deployment, so `helm template`, `install` and `lint` all see it.
*/}}
{{- define "trtop.validate" -}}
{{- $store := .Values.store }}
{{- $pvcSet := or $store.pvc.existingClaim $store.pvc.create }}
{{- if and $store.s3.uri $pvcSet }}
{{- fail "store: both a PVC (store.pvc.existingClaim or store.pvc.create=true) and S3 (store.s3.uri) are set; pick one: for S3 also set store.pvc.create=false and leave store.pvc.existingClaim empty" }}
{{- end }}
{{- if and $store.pvc.existingClaim $store.pvc.create }}
{{- fail "store.pvc: existingClaim is set and create is true; set store.pvc.create=false to use the existing claim, or empty existingClaim to let the chart create one" }}
{{- end }}
{{- if not (or $pvcSet $store.s3.uri) }}
{{- fail "store: no engine store; set store.pvc.existingClaim, store.pvc.create=true or store.s3.uri (build Jobs publish engines there and inference pods read them)" }}
{{- end }}
{{- if and $store.s3.existingSecret (not $store.s3.uri) }}
{{- fail "store.s3.existingSecret is set but store.s3.uri is empty; set store.s3.uri=s3://bucket/prefix or drop the secret" }}
{{- end }}
{{- if and .Values.rbac.namespaced (not .Values.watchNamespaces) }}
{{- fail "rbac.namespaced=true needs watchNamespaces: list the namespaces the operator may serve, e.g. --set 'watchNamespaces={team-a,team-b}'" }}
{{- end }}
{{- if and (not .Values.rbac.namespaced) .Values.watchNamespaces }}
{{- fail "watchNamespaces is set but rbac.namespaced is false: a cluster-wide operator serves every namespace; set rbac.namespaced=true to limit it to watchNamespaces" }}
{{- end }}
{{- if and .Values.operator.wakeQuery (not .Values.operator.prometheusUrl) }}
{{- fail "operator.wakeQuery is a Prometheus query: set operator.prometheusUrl too (the Prometheus that holds the series it reads)" }}
{{- end }}
{{- if and (not .Values.peering.enabled) (gt (int .Values.replicaCount) 1) }}
{{- fail "replicaCount > 1 needs peering.enabled=true: without kopf peering every replica would handle every ModelDeployment" }}
{{- end }}
{{- if and (ne (toString .Values.peering.priority) "random") (gt (int .Values.replicaCount) 1) }}
{{- fail "peering.priority: a fixed priority shared by several replicas makes kopf pause them all; use peering.priority=random with replicaCount > 1" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled .Values.podMonitor.enabled }}
{{- fail "serviceMonitor.enabled and podMonitor.enabled are both true: Prometheus would scrape the operator twice; enable one" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metricsService.enabled) }}
{{- fail "serviceMonitor.enabled needs metricsService.enabled=true (a ServiceMonitor scrapes a Service); or use podMonitor instead" }}
{{- end }}
{{- if eq (int .Values.metricsPort) (int .Values.healthPort) }}
{{- fail "metricsPort and healthPort are equal: /metrics and kopf's /healthz need their own ports" }}
{{- end }}
{{- end }}

{{/*
RBAC rules for what the operator does inside a namespace it serves (least privilege,
from trtop/k8s and kopf): granted by a ClusterRole in cluster-wide mode, by a Role per
watched namespace in namespaced mode.
*/}}
{{- define "trtop.rules.workloads" -}}
# The ModelDeployments: kopf's annotations (patch), status (patch). Nothing updates them.
- apiGroups: [trtop.io]
  resources: [modeldeployments]
  verbs: [get, list, watch, patch]
- apiGroups: [trtop.io]
  resources: [modeldeployments/status]
  verbs: [get, patch]
# Children carry ownerReferences with blockOwnerDeletion: true; where the API server enforces
# OwnerReferencesPermissionEnforcement (OpenShift) that needs update on the owner's finalizers.
- apiGroups: [trtop.io]
  resources: [modeldeployments/finalizers]
  verbs: [update]
# Build Jobs: created once per engine key, never updated; their TTL removes them.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create]
# The serving units (one Deployment per GPU architecture) and the Service: server-side apply
# (create + patch); owner references remove them with their ModelDeployment. delete: a unit
# whose architecture left the cluster (and trtop's single Deployment from before units) goes
# once the other units carry its load; only ever a Deployment this ModelDeployment controls.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
# Build pods' termination messages and the inference pods' load.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# ResourceQuotas and LimitRanges, read only: when their limits change, units whose pods they refused are tried
# again at once (names.ANNOTATION_QUOTA_RETRY) rather than after the ReplicaSet controller's back-off.
- apiGroups: [""]
  resources: [resourcequotas, limitranges]
  verbs: [get, list, watch]
# Events about each ModelDeployment: kopf and trtop.k8s.events only create core/v1 Events
# (no patch: it would let the operator rewrite any tenant's Events).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/*
Cluster-scoped reads the operator needs in both modes: the GPU nodes, and the CRDs kopf
watches after its start-up scan.
*/}}
{{- define "trtop.rules.clusterRead" -}}
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{/*
store.sharing as TRTOP_STORE_SHARING: "group=ns1,ns2;group2=ns3" (trtop.config.parse_sharing).
*/}}
{{- define "trtop.storeSharing" -}}
{{- $groups := list -}}
{{- range $group, $members := .Values.store.sharing -}}
{{- $groups = append $groups (printf "%s=%s" $group (join "," $members)) -}}
{{- end -}}
{{- join ";" $groups -}}
{{- end }}
