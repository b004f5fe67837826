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

{{/* "perllm.component" (dict "root" $ "name" "operator") -> perllm-operator. Over 63
characters it fails: cut short, names would collide (perllm-llmservices-view and -edit, two
routers) and a Service name must be a DNS label; so does a name that is no DNS-1035 label. */}}
{{- define "perllm.component" -}}
{{- $n := printf "%s-%s" (include "perllm.fullname" .root) .name -}}
{{- if gt (len $n) 63 -}}
{{- fail (printf "object name %q is %d characters, over Kubernetes' 63: shorten the release name or set fullnameOverride (routers: or router.services[].name)" $n (len $n)) -}}
{{- end -}}
{{- /* Helm admits release names such as 1edge or perllm.v2, which no Service may carry */ -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $n) -}}
{{- fail (printf "object name %q is not a DNS-1035 label (lower-case letters, digits and '-', starting with a letter), which a Service name must be: rename the release or set fullnameOverride" $n) -}}
{{- end -}}
{{- $n -}}
{{- end -}}

{{- define "perllm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "perllm.name" .root | quote }}
app.kubernetes.io/instance: {{ .root.Release.Name | quote }}
app.kubernetes.io/component: {{ .name | quote }}
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

{{/* The Kubernetes minor the chart is rendered for, "1.31" (k3s "v1.31.4+k3s1", EKS
"v1.31.4-eks-1234" and GKE "v1.31.4-gke.100" parse too). */}}
{{- define "perllm.kubeMinor" -}}
{{- $v := semver .Capabilities.KubeVersion.Version -}}
{{- printf "%d.%d" $v.Major $v.Minor -}}
{{- end -}}

{{/* kube-scheduler's tag: scheduler.image.tag when set; else the patch pinned for the
cluster's minor in scheduler.image.tagByMinor; else the cluster's own vMAJOR.MINOR.PATCH
(registry.k8s.io publishes every upstream patch; build metadata such as +k3s1 dropped). */}}
{{- define "perllm.schedulerTag" -}}
{{- $s := .Values.scheduler.image -}}
{{- if $s.tag -}}
{{- $s.tag -}}
{{- else -}}
{{- $minor := include "perllm.kubeMinor" . -}}
{{- $v := semver .Capabilities.KubeVersion.Version -}}
{{- index ($s.tagByMinor | default dict) $minor | default (printf "v%d.%d.%d" $v.Major $v.Minor $v.Patch) -}}
{{- end -}}
{{- end -}}

{{- define "perllm.schedulerImage" -}}
{{- printf "%s:%s" .Values.scheduler.image.repository (include "perllm.schedulerTag" .) -}}
{{- end -}}

{{/* Render Prometheus Operator monitors: asked for, and either the cluster serves
monitoring.coreos.com/v1 or monitoring.serviceMonitor.force says to render them anyway
(`helm template | kubectl apply`, GitOps: the capability check sees no cluster). */}}
{{- define "perllm.monitors" -}}
{{- $m := .Values.monitoring.serviceMonitor -}}
{{- if and $m.enabled (or $m.force (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) -}}
true
{{- end -}}
{{- end -}}

{{/* prometheus.io/* pod annotations (annotation-driven Prometheus, e.g. the community
chart's kubernetes-pods job): "perllm.scrapeAnnotations" (dict "root" $ "port" 9401) */}}
{{- define "perllm.scrapeAnnotations" -}}
{{- if .root.Values.monitoring.scrapeAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end -}}
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
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The operator's rules on namespaced resources (operator/rbac.yaml holds the same). */}}
{{- define "perllm.operatorNamespacedRules" -}}
  # The LLMService objects: watched, annotated by kopf (progress, diff base), status written;
  # finalizers/update lets children's owner references block the owner's deletion on
  # clusters that enforce it (OwnerReferencesPermissionEnforcement).
  - apiGroups: [perllm.io]
    resources: [llmservices]
    verbs: [get, list, watch, patch]
  - apiGroups: [perllm.io]
    resources: [llmservices/status]
    verbs: [patch]
  - apiGroups: [perllm.io]
    resources: [llmservices/finalizers]
    verbs: [update]
  # Children, applied server-side (patch; create when missing) and read back; Deployments
  # are watched for readiness. Nothing is updated with PUT. A child the spec no longer
  # renders (a tier dropped from spec.tierReplicas, a mode or backend switch) is read by
  # name and deleted when this LLMService controls it; the garbage collector deletes the
  # others with their owner.
  - apiGroups: [serving.kserve.io]
    resources: [inferenceservices]
    verbs: [get, create, patch, delete]
  - apiGroups: [apps]
    resources: [deployments]
    verbs: [get, list, watch, create, patch, delete]
  - apiGroups: [""]
    resources: [services]
    verbs: [get, create, patch, delete]
  # Under KServe, the ServiceAccount <name>-model that gated hf:// weights are fetched as
  # (it lists the token's Secret; the operator never reads Secrets). Same verbs as above.
  - apiGroups: [""]
    resources: [serviceaccounts]
    verbs: [get, create, patch, delete]
  # The status timer lists a service's pods (label perllm.io/service) and re-places one
  # through the Eviction API, which honours PodDisruptionBudgets (never a plain delete).
  - apiGroups: [""]
    resources: [pods]
    verbs: [list]
  - apiGroups: [""]
    resources: [pods/eviction]
    verbs: [create]
  # kopf posts core v1 Events about what it did (a POST each: never events.k8s.io, never
  # a patch).
  - apiGroups: [""]
    resources: [events]
    verbs: [create]
{{- end }}

{{/* The operator's rules on cluster-scoped resources. */}}
{{- define "perllm.operatorClusterRules" -}}
  # kopf scans the cluster's resources; the operator detects whether KServe is installed.
  - apiGroups: [apiextensions.k8s.io]
    resources: [customresourcedefinitions]
    verbs: [get, list, watch]
{{- if .Values.operator.namespaces }}
  # Run with --namespace (operator.namespaces), kopf lists and watches every namespace to
  # learn which of the named ones exist (kopf's namespace_observer); cluster-wide it never
  # does, so only this mode has the rule (without it kopf warns and assumes they exist).
  - apiGroups: [""]
    resources: [namespaces]
    verbs: [list, watch]
{{- end }}
{{- end }}

{{- /* prometheus.tokenSecret: a bearer token for Prometheus, mounted as a file (re-read
when the kubelet updates it) into the operator, extender and routers. "perllm.promTokenFile"
is its path, empty where none is sent (no secret, or no Prometheus): the one test of the
mount, the volume, the env and the routers' config. */}}
{{- define "perllm.promTokenFile" -}}
{{- if and .Values.prometheus.url .Values.prometheus.tokenSecret.name -}}
/var/run/secrets/perllm/prometheus/{{ .Values.prometheus.tokenSecret.key | default "token" }}
{{- end -}}
{{- end }}

{{- /* prometheus.caSecret: the CAs (PEM) that sign an https Prometheus' certificate,
mounted like the token; "perllm.promCaFile" is its path, empty where none is used.
prometheus.insecureSkipVerify turns verification off instead; not both. */}}
{{- define "perllm.promCaFile" -}}
{{- if and .Values.prometheus.url .Values.prometheus.caSecret.name -}}
{{- if .Values.prometheus.insecureSkipVerify -}}
{{- fail "prometheus.caSecret and prometheus.insecureSkipVerify exclude each other: choose one" -}}
{{- end -}}
/var/run/secrets/perllm/prometheus-ca/{{ .Values.prometheus.caSecret.key | default "ca.crt" }}
{{- end -}}
{{- end }}

{{- define "perllm.promInsecure" -}}
{{- if and .Values.prometheus.url .Values.prometheus.insecureSkipVerify -}}true{{- end -}}
{{- end }}

{{- /* The token's and the CA's mounts and volumes (each only where it is used). */}}
{{- define "perllm.promMounts" -}}
{{- if include "perllm.promTokenFile" . }}
- name: prometheus-token
  mountPath: /var/run/secrets/perllm/prometheus
  readOnly: true
{{- end }}
{{- if include "perllm.promCaFile" . }}
- name: prometheus-ca
  mountPath: /var/run/secrets/perllm/prometheus-ca
  readOnly: true
{{- end }}
{{- end }}

{{- define "perllm.promVolumes" -}}
{{- if include "perllm.promTokenFile" . }}
{{- with .Values.prometheus.tokenSecret }}
- name: prometheus-token
  secret:
    secretName: {{ .name | quote }}
    items: [{key: {{ .key | default "token" | quote }}, path: {{ .key | default "token" | quote }}}]
    defaultMode: 0440
{{- end }}
{{- end }}
{{- if include "perllm.promCaFile" . }}
{{- with .Values.prometheus.caSecret }}
- name: prometheus-ca
  secret:
    secretName: {{ .name | quote }}
    items: [{key: {{ .key | default "ca.crt" | quote }}, path: {{ .key | default "ca.crt" | quote }}}]
    defaultMode: 0444
{{- end }}
{{- end }}
{{- end }}

{{- /* The env of the operator and the extender that says how to reach Prometheus
(after PERLLM_PROMETHEUS_URL). */}}
{{- define "perllm.promEnv" -}}
{{- with include "perllm.promTokenFile" . }}
- name: PERLLM_PROMETHEUS_TOKEN_FILE
  value: {{ . | quote }}
{{- end }}
{{- with include "perllm.promCaFile" . }}
- name: PERLLM_PROMETHEUS_CA_FILE
  value: {{ . | quote }}
{{- end }}
{{- if include "perllm.promInsecure" . }}
- name: PERLLM_PROMETHEUS_INSECURE_SKIP_VERIFY
  value: "true"
{{- end }}
{{- end }}

{{/* "perllm.quantity" "128Mi" -> 134217728: a Kubernetes quantity as values.schema.json
admits it (a number, or digits with an exponent or a suffix), as a number to compare. */}}
{{- define "perllm.quantity" -}}
{{- if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}{{ float64 . }}
{{- else }}
{{- $num := regexFind "^([0-9]+(\\.[0-9]+)?|\\.[0-9]+)" . }}
{{- $suffix := trimPrefix $num . }}
{{- $v := float64 $num }}
{{- if regexMatch "^[eE][0-9]+$" $suffix }}
{{- range until (int (substr 1 (len $suffix) $suffix)) }}{{ $v = mulf $v 10 }}{{ end }}
{{- else if $suffix }}
{{- $v = mulf $v (get (dict "m" 0.001 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0) $suffix) }}
{{- end }}{{ $v }}
{{- end }}
{{- end }}

{{/* "perllm.resources" (dict "r" $c.resources "at" "extender.resources"): the container's
resources, refused where a request is over its limit (the API server would refuse every
pod of the Deployment: an install that succeeds with nothing running). */}}
{{- define "perllm.resources" -}}
{{- $req := .r.requests | default dict }}
{{- range $k, $lim := .r.limits | default dict }}
{{- if hasKey $req $k }}
{{- if gt (float64 (include "perllm.quantity" (get $req $k))) (float64 (include "perllm.quantity" $lim)) }}
{{- fail (printf "%s: requests.%s %v is over limits.%s %v (the API server refuses such a pod)" $.at $k (get $req $k) $k $lim) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml .r }}
{{- end }}
