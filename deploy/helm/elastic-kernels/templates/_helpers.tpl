{{/*
Labels of every object: the same as the kustomize base (name, component, part-of) plus Helm's.
Call with (dict "root" $ "component" "gateway").
*/}}
{{- define "ek.labels" -}}
app.kubernetes.io/name: elastic-kernels
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: elastic-kernels
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{/* Selector labels: stable across upgrades, identical to the kustomize base. */}}
{{- define "ek.selector" -}}
app.kubernetes.io/name: elastic-kernels
app.kubernetes.io/component: {{ . }}
{{- end }}

{{/* repository:tag of an image from .Values.images. */}}
{{- define "ek.image" -}}
{{ printf "%s:%s" .repository .tag }}
{{- end }}

{{/*
The rules of a Role, from the kustomize base's file (one source for both installs). The
gateway's rule for the users Secret names it as the base does (elastic-kernels-users); here it
names .Values.gateway.usersSecret instead, and is left out when that is "".
*/}}
{{- define "ek.roleRules" -}}
{{- $role := .root.Files.Get (printf "files/rbac/%s-role.yaml" .component) | fromYaml -}}
{{- if or (not $role) (hasKey $role "Error") -}}
{{- fail (printf "files/rbac/%s-role.yaml is missing or not YAML" .component) -}}
{{- end -}}
{{- $usersSecret := .root.Values.gateway.usersSecret -}}
{{- $rules := list -}}
{{- range $role.rules -}}
{{- if and (has "apps" (default (list) .apiGroups)) (has "daemonsets" (default (list) .resources)) (not $.root.Values.prepull.enabled) -}}
{{- /* image pre-pulling off: no DaemonSet rule */ -}}
{{- else if has "elastic-kernels-users" (default (list) .resourceNames) -}}
{{- if $usersSecret -}}
{{- $rules = append $rules (merge (dict "resourceNames" (list $usersSecret)) (omit . "resourceNames")) -}}
{{- end -}}
{{- else -}}
{{- $rules = append $rules . -}}
{{- end -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end }}

{{/* The pod security context every component shares: non-root uid 1000, gid 100. */}}
{{- define "ek.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 100
{{- if .fsGroup }}
fsGroup: 100
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "ek.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
{{- end }}

{{/*
Suspend's snapshot store (gateway.snapshots): "url" when it is an object store, else a volume
("claim": existingClaim or the chart's elastic-kernels-snapshots) mounted at mountPath; the
gateway's snapshot_store and the cull job's --snapshot-store name "store". Empty when disabled.
*/}}
{{- define "ek.snapshots" -}}
{{- $s := .Values.gateway.snapshots -}}
{{- if $s.enabled -}}
{{- if $s.url -}}
{{- dict "store" $s.url | toJson -}}
{{- else -}}
{{- dict "store" $s.mountPath "claim" ($s.existingClaim | default "elastic-kernels-snapshots") "mountPath" $s.mountPath | toJson -}}
{{- end -}}
{{- else -}}
{{- dict | toJson -}}
{{- end -}}
{{- end }}
