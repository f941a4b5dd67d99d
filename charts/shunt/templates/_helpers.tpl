{{/* Names, labels and the CA root shared by every template. */}}

{{- define "shunt.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "shunt.labels" -}}
app.kubernetes.io/part-of: shunt
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "shunt.caSelector" -}}
app.kubernetes.io/name: shunt-ca
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shunt.nodeSelector" -}}
app.kubernetes.io/name: shunt-node
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shunt.caAddress" -}}
https://shunt-ca.{{ .Release.Namespace }}.svc:15012
{{- end }}

{{/*
The CA root, computed once per render and kept in .Values._root:
  cert, key  PEM (key empty with ca.existingSecret)
  bundle     PEM of every trusted root (ca.trustBundle, else cert)
An existing shunt-ca-root Secret (an upgrade) is reused, never replaced:
replacing it would invalidate every workload certificate in the mesh.
*/}}
{{- define "shunt.root" -}}
{{- if not (hasKey .Values "_root") -}}
{{- $root := dict "cert" "" "key" "" -}}
{{- if .Values.ca.existingSecret -}}
  {{- $s := lookup "v1" "Secret" .Release.Namespace .Values.ca.existingSecret -}}
  {{- if $s -}}
    {{- $_ := set $root "cert" (index $s.data "tls.crt" | b64dec) -}}
  {{- else if not .Values.ca.trustBundle -}}
    {{- fail (printf "ca.existingSecret %q: set ca.trustBundle to the PEM of its certificate (the Secret cannot be read while rendering)" .Values.ca.existingSecret) -}}
  {{- end -}}
{{- else -}}
  {{- $s := lookup "v1" "Secret" .Release.Namespace "shunt-ca-root" -}}
  {{- if and $s (index ($s.data | default dict) "tls.key") -}}
    {{- $_ := set $root "cert" (index $s.data "tls.crt" | b64dec) -}}
    {{- $_ := set $root "key" (index $s.data "tls.key" | b64dec) -}}
  {{- else -}}
    {{- $ca := genCA (printf "shunt root CA (%s)" .Values.trustDomain) (int .Values.ca.rootValidityDays) -}}
    {{- $_ := set $root "cert" $ca.Cert -}}
    {{- $_ := set $root "key" $ca.Key -}}
  {{- end -}}
{{- end -}}
{{- $_ := set $root "bundle" (.Values.ca.trustBundle | default $root.cert) -}}
{{- $_ := set .Values "_root" $root -}}
{{- end -}}
{{- end }}

{{- define "shunt.rootSecretName" -}}
{{ .Values.ca.existingSecret | default "shunt-ca-root" }}
{{- end }}

{{/* The inject config shunt-ca reads (--inject-config): see userspace/inject/inject.h. */}}
{{- define "shunt.injectConfig" -}}
{{- $s := .Values.sidecar -}}
{{- $cfg := dict
  "image" (include "shunt.image" .)
  "image_pull_policy" .Values.image.pullPolicy
  "capture" $s.capture
  "native_sidecar" $s.nativeSidecar
  "proxy_uid" $s.proxyUID
  "startup_timeout_seconds" $s.startupTimeoutSeconds
  "ca_address" (include "shunt.caAddress" .)
  "trust_domain" .Values.trustDomain
  "token_audience" "shunt-ca"
  "token_expiration_seconds" $s.tokenExpirationSeconds
  "bundle_configmap" "shunt-ca-bundle"
  "log_level" $s.logLevel
  "mtls_mode" $s.mtlsMode
  "discovery" $s.discovery
  "bpf_pin_root" $s.bpfPinRoot
  "proxy_resources" $s.resources
  "init_resources" $s.initResources
  "exclude_inbound_ports" $s.excludeInboundPorts
  "exclude_outbound_ports" $s.excludeOutboundPorts
  "exclude_outbound_cidrs" $s.excludeOutboundCIDRs
  "metrics_port" (ternary (int .Values.metrics.port) 0 .Values.metrics.enabled)
  "scrape_annotations" .Values.metrics.scrapeAnnotations
  "node_namespaces" (ternary .Values.nodeAgent.namespaces (list) .Values.nodeAgent.enabled)
  "capture_from" $s.captureFrom
-}}
{{- toPrettyJson $cfg }}
{{- end }}

{{/* A container securityContext that Pod Security "restricted" admits. */}}
{{- define "shunt.restrictedContainer" -}}
runAsNonRoot: true
runAsUser: 1337
runAsGroup: 1337
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
