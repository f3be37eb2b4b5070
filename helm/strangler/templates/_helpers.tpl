{{/* Names and labels. */}}
{{- define "strangler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "strangler.fullname" -}}
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

{{- define "strangler.adminName" -}}
{{- printf "%s-admin" (include "strangler.fullname" . | trunc 57 | trimSuffix "-") -}}
{{- end -}}

{{- define "strangler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strangler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "strangler.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "strangler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "strangler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "strangler.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "strangler.secretName" -}}
{{- default (include "strangler.fullname" .) .Values.secret.existingSecret -}}
{{- end -}}

{{- define "strangler.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The effective routes.yaml as JSON: `routesYaml` (verbatim text) when set, else `config`.
Use as: $cfg := include "strangler.config" . | fromJson
*/}}
{{- define "strangler.config" -}}
{{- if .Values.routesYaml -}}
{{- $parsed := fromYaml .Values.routesYaml -}}
{{- if hasKey $parsed "Error" -}}
{{- fail (printf "strangler: routesYaml is not a YAML mapping: %s" (index $parsed "Error")) -}}
{{- end -}}
{{- toJson $parsed -}}
{{- else -}}
{{- toJson .Values.config -}}
{{- end -}}
{{- end -}}

{{/* The flags backend of routes.yaml; absent means file (the embedded default). */}}
{{- define "strangler.backend" -}}
{{- $cfg := include "strangler.config" . | fromJson -}}
{{- $flags := $cfg.flags | default dict -}}
{{- $flags.backend | default "file" -}}
{{- end -}}

{{/* The store of routes.yaml: {"backend": local|postgres, "dsn_env": NAME}. */}}
{{- define "strangler.store" -}}
{{- $cfg := include "strangler.config" . | fromJson -}}
{{- $store := $cfg.store | default dict -}}
{{- dict "backend" ($store.backend | default "local") "dsn_env" ($store.dsn_env | default "STRANGLER_DATABASE_URL") | toJson -}}
{{- end -}}

{{/* The Unleash section of routes.yaml, or an empty dict. */}}
{{- define "strangler.unleashEnv" -}}
{{- $cfg := include "strangler.config" . | fromJson -}}
{{- $flags := $cfg.flags | default dict -}}
{{- $u := $flags.unleash | default dict -}}
{{- dict "token" ($u.token_env | default "UNLEASH_API_TOKEN") "admin" ($u.admin_token_env | default "UNLEASH_ADMIN_TOKEN") | toJson -}}
{{- end -}}

{{/*
Port of a routes.yaml listen address ("0.0.0.0:8080", "[::]:8080"); fails on anything else.
Call with (list "config.listen" $address).
*/}}
{{- define "strangler.port" -}}
{{- $field := index . 0 -}}
{{- $addr := toString (index . 1) -}}
{{- $port := regexFind ":[0-9]+$" $addr | trimPrefix ":" -}}
{{- if not $port -}}
{{- fail (printf "strangler: %s %q must be HOST:PORT, e.g. 0.0.0.0:8080" $field $addr) -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{/* Host of a listen address, without brackets. */}}
{{- define "strangler.host" -}}
{{- regexReplaceAll ":[0-9]+$" (toString .) "" | trimPrefix "[" | trimSuffix "]" -}}
{{- end -}}

{{/*
Whole seconds (rounded up) of a routes.yaml duration: 250ms, 1.5s, 5m, 1h or a plain number of
seconds. Call with (list "config.limits.drain_timeout" $value).
*/}}
{{- define "strangler.seconds" -}}
{{- $field := index . 0 -}}
{{- $raw := toString (index . 1) | trim | lower -}}
{{- $num := regexFind "^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)" $raw -}}
{{- $unit := trimPrefix $num $raw | trim -}}
{{- $scale := dict "" 1.0 "s" 1.0 "ms" 0.001 "m" 60.0 "h" 3600.0 -}}
{{- if or (not $num) (not (hasKey $scale $unit)) -}}
{{- fail (printf "strangler: %s %q is not a duration such as 250ms, 1s, 5m or 1h" $field $raw) -}}
{{- end -}}
{{- mulf (float64 $num) (get $scale $unit) | ceil | int -}}
{{- end -}}

{{- define "strangler.drainSeconds" -}}
{{- $cfg := include "strangler.config" . | fromJson -}}
{{- $limits := $cfg.limits | default dict -}}
{{- include "strangler.seconds" (list "config.limits.drain_timeout" ($limits.drain_timeout | default "30s")) -}}
{{- end -}}

{{- define "strangler.terminationGracePeriodSeconds" -}}
{{- $drain := include "strangler.drainSeconds" . | int -}}
{{- $sleep := .Values.lifecycle.preStopSleepSeconds | int -}}
{{- $given := .Values.terminationGracePeriodSeconds | int -}}
{{- if eq $given 0 -}}
{{- add $sleep $drain 10 -}}
{{- else if le $given (add $sleep $drain) -}}
{{- fail (printf "strangler: terminationGracePeriodSeconds=%d must exceed lifecycle.preStopSleepSeconds (%d) + config.limits.drain_timeout (%ds), or in-flight requests are killed mid-drain; raise it or set it to 0 to derive it" $given $sleep $drain) -}}
{{- else -}}
{{- $given -}}
{{- end -}}
{{- end -}}

{{/*
Refuse configurations that cannot work in a pod. Included by every template that depends on
config, so `helm template`, `install` and `upgrade` all stop with the same message.
*/}}
{{- define "strangler.validate" -}}
{{- $backend := include "strangler.backend" . -}}
{{- $replicas := .Values.replicaCount | int -}}
{{- if and (eq $backend "file") (gt $replicas 1) -}}
{{- fail (printf "strangler: replicaCount=%d needs config.flags.backend: unleash. With the file backend (the default) every replica keeps its own weights and rollbacks, so replicas would split traffic differently and a rollback would reach only one pod. Set config.flags.backend: unleash (and config.gate.metrics: prometheus), or replicaCount: 1." $replicas) -}}
{{- end -}}
{{- if and (eq $backend "file") .Values.autoscaling.enabled -}}
{{- fail "strangler: autoscaling.enabled needs config.flags.backend: unleash. With the file backend (the default) every replica keeps its own weights and rollbacks, so replicas would split traffic differently and a rollback would reach only one pod. Set config.flags.backend: unleash (and config.gate.metrics: prometheus), or disable autoscaling." -}}
{{- end -}}
{{- $store := include "strangler.store" . | fromJson -}}
{{- $several := "" -}}
{{- if .Values.autoscaling.enabled -}}{{- $several = "autoscaling.enabled" -}}
{{- else if gt $replicas 1 -}}{{- $several = printf "replicaCount=%d" $replicas -}}{{- end -}}
{{- if and $several (ne $store.backend "postgres") -}}
{{- fail (printf "strangler: %s needs config.store.backend: postgres. With the local store (the default) every replica keeps its own audit trail, approvals and diff store on its own volume: no single trail of who changed what, a request made on one pod is unknown to the others, and diffs show one pod's share. Set config.store: {backend: postgres} and secret.databaseUrl (docs/kubernetes.md), or one replica." $several) -}}
{{- end -}}
{{- if and (eq $store.backend "postgres") (not .Values.secret.existingSecret) (not .Values.secret.databaseUrl) -}}
{{- fail "strangler: config.store.backend: postgres needs the PostgreSQL DSN: set secret.databaseUrl, or secret.existingSecret with that key (secret.keys.databaseUrl)" -}}
{{- end -}}
{{- $cfg := include "strangler.config" . | fromJson -}}
{{- $admin := $cfg.admin | default dict -}}
{{- $adminHost := include "strangler.host" ($admin.listen | default "127.0.0.1:9901") -}}
{{- if or (eq $adminHost "localhost" "::1") (hasPrefix "127." $adminHost) -}}
{{- fail (printf "strangler: config.admin.listen %q is loopback; in a pod it must listen on the pod IP (e.g. 0.0.0.0:9901) so kubelet probes and Prometheus reach /readyz, /healthz and /metrics" ($admin.listen | default "127.0.0.1:9901")) -}}
{{- end -}}
{{- $stateDir := toString ($cfg.state_dir | default "") -}}
{{- if not (hasPrefix "/" $stateDir) -}}
{{- fail (printf "strangler: config.state_dir %q must be an absolute path in a pod (the chart mounts a writable volume there; the root filesystem is read-only)" $stateDir) -}}
{{- end -}}
{{- if and (eq $backend "unleash") (not .Values.secret.existingSecret) (not .Values.secret.unleashApiToken) -}}
{{- fail "strangler: config.flags.backend: unleash needs an Unleash client token: set secret.unleashApiToken, or secret.existingSecret with that key" -}}
{{- end -}}
{{- end -}}

{{/* routes.yaml as it is written into the ConfigMap (also the input of the checksum). */}}
{{- define "strangler.routesYaml" -}}
{{- if .Values.routesYaml -}}
{{ .Values.routesYaml }}
{{- else -}}
{{ toYaml .Values.config }}
{{- end -}}
{{- end -}}
