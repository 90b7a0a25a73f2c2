{{/* The chart's name, or nameOverride. */}}
{{- define "pxb-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The objects' name: fullnameOverride, else the release name (with the chart name appended
unless the release name contains it). */}}
{{- define "pxb-server.fullname" -}}
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

{{- define "pxb-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pxb-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pxb-server.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pxb-server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pxb
app.kubernetes.io/component: server
{{- end -}}

{{/* Where the chart mounts what it renders into the configuration. */}}
{{- define "pxb-server.dataDir" -}}/var/lib/pxb{{- end -}}
{{- define "pxb-server.configDir" -}}/etc/pxb/config{{- end -}}
{{- define "pxb-server.secretsKeyDir" -}}/etc/pxb/secrets-key{{- end -}}
{{- define "pxb-server.issuerCaDir" -}}/etc/pxb/issuer-ca{{- end -}}
{{- define "pxb-server.gardenDir" -}}/etc/pxb/garden{{- end -}}
{{- define "pxb-server.catalogPasswordDir" -}}/etc/pxb/catalog-password{{- end -}}
{{- define "pxb-server.catalogCaDir" -}}/etc/pxb/catalog-ca{{- end -}}

{{/* The claim of the catalog's volume. */}}
{{- define "pxb-server.claimName" -}}
{{- default (printf "%s-catalog" (include "pxb-server.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* Refuses values that cannot work, each with a message saying what to do. */}}
{{- define "pxb-server.validate" -}}
{{- if not (has .Values.mode (list "federated" "classic")) -}}
{{- fail (printf "mode must be federated or classic, not %q" (toString .Values.mode)) -}}
{{- end -}}
{{- if and (eq .Values.mode "classic") (not .Values.secretsKey.existingSecret) -}}
{{- fail "mode: classic needs the secrets key that seals classic credentials: create a Secret holding 32 random bytes, base64 (kubectl create secret generic pxb-secrets-key --from-literal=key=\"$(head -c 32 /dev/urandom | base64)\"), and set secretsKey.existingSecret to its name (and secretsKey.key to its key, default key)" -}}
{{- end -}}
{{- if and .Values.secretsKey.existingSecret (not .Values.secretsKey.key) -}}
{{- fail "secretsKey.key must name the key of secretsKey.existingSecret that holds the secrets key" -}}
{{- end -}}
{{- $cfg := default (dict) .Values.config -}}
{{- range $key, $value := dict "mode" "mode" "auth" "auth (auth.issuer, auth.audiences, ...)" "secrets" "secretsKey.existingSecret" "gardenCredentials" "gardenCredentials (a list of Secrets)" -}}
{{- if hasKey $cfg $key -}}
{{- fail (printf "config.%s is set by the chart: use the value %s instead" $key $value) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.auth.issuerCA.configMap .Values.auth.issuerCA.secret -}}
{{- fail "auth.issuerCA: set configMap or secret, not both" -}}
{{- end -}}
{{- range $key := list "url" "passwordFile" "caFile" -}}
{{- if hasKey (default (dict) $cfg.catalog) $key -}}
{{- fail (printf "config.catalog.%s is set by the chart: use the values postgres.url, postgres.passwordSecret and postgres.ca (Secrets and ConfigMaps the chart mounts)" $key) -}}
{{- end -}}
{{- end -}}
{{- range $key := list "enabled" "name" "advertise" -}}
{{- if hasKey (default (dict) $cfg.replicas) $key -}}
{{- fail (printf "config.replicas.%s is set by the chart: every pod is a replica when postgres.url is set (named after its pod, reached at its pod IP); set replicaCount for how many" $key) -}}
{{- end -}}
{{- end -}}
{{- $replicas := int .Values.replicaCount -}}
{{- if lt $replicas 1 -}}
{{- fail (printf "replicaCount must be at least 1, not %v" .Values.replicaCount) -}}
{{- end -}}
{{- if and (gt $replicas 1) (not .Values.postgres.url) -}}
{{- fail (printf "replicaCount %d needs postgres.url: the SQLite catalog on the volume has one writer, so several server pods need the catalog in a PostgreSQL database (the server's README, \"Moving the catalog to PostgreSQL\")" $replicas) -}}
{{- end -}}
{{- if and .Values.postgres.url (regexMatch "^postgres(ql)?://[^/@]*:[^/@]*@" (toString .Values.postgres.url)) -}}
{{- fail "postgres.url holds a password: put it in a Secret and name it in postgres.passwordSecret (the URL is rendered into a ConfigMap and logged)" -}}
{{- end -}}
{{- if and .Values.postgres.ca.configMap .Values.postgres.ca.secret -}}
{{- fail "postgres.ca: set configMap or secret, not both" -}}
{{- end -}}
{{- if .Values.podDisruptionBudget.enabled -}}
{{- $unavailable := toString .Values.podDisruptionBudget.maxUnavailable -}}
{{- if regexMatch "^0+%?$" $unavailable -}}
{{- fail (printf "podDisruptionBudget.maxUnavailable %s would block every node drain forever: the server runs one pod (one catalog writer), and a budget that allows no disruption never lets a drain evict it. Use 1 (the default: a short API outage while the pod starts on another node), or set podDisruptionBudget.enabled: false" $unavailable) -}}
{{- end -}}
{{- end -}}
{{- if .Values.ingress.enabled -}}
{{- if not .Values.ingress.hosts -}}
{{- fail "ingress.enabled needs ingress.hosts: at least one host ({host: pxb.provider.example}), the name tenants reach the API by" -}}
{{- end -}}
{{- $plain := include "pxb-server.ingressPlainHosts" . | fromJsonArray -}}
{{- if and $plain (not .Values.ingress.allowPlainHttp) -}}
{{- fail (printf "ingress: host %q has no TLS (no ingress.tls entry lists it), so the bearer tokens of API requests would cross the network in clear. Add the host to an ingress.tls entry with the Secret of its certificate (secretName; cert-manager can make it), or set ingress.allowPlainHttp: true only if TLS is terminated before the Ingress" (first $plain)) -}}
{{- end -}}
{{- end -}}
{{- include "pxb-server.validateExtraEnv" . -}}
{{- $names := dict -}}
{{- range $i, $g := .Values.gardenCredentials -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (toString $g.name)) -}}
{{- fail (printf "gardenCredentials[%d].name %q must be a DNS label (lower-case letters, digits and '-'): it names the credential and its directory" $i (toString $g.name)) -}}
{{- end -}}
{{- if hasKey $names $g.name -}}
{{- fail (printf "gardenCredentials: the name %q is used twice" $g.name) -}}
{{- end -}}
{{- $_ := set $names $g.name true -}}
{{- if not $g.secretName -}}
{{- fail (printf "gardenCredentials[%d] (%s) needs secretName: the Secret holding its kubeconfig" $i $g.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Refuses extraEnv variables for what the chart sets from its own values: the server maps every
key path to PXB_<PATH IN UPPER SNAKE CASE>, a whole section included (PXB_AUTH replaces auth), so
these would bypass the chart's checks or part the configuration from what the chart mounts and
derives (port, probes, Service, NetworkPolicy, the support channel's ConfigMap, Role and token). */}}
{{- define "pxb-server.validateExtraEnv" -}}
{{- $auth := "use the values auth (auth.issuer, auth.audiences, auth.providerAdminGroups, ...)" -}}
{{- $secrets := "use the value secretsKey.existingSecret (a Secret the chart mounts and names in secrets.keyFile)" -}}
{{- $garden := "use the value gardenCredentials (a list of Secrets the chart mounts)" -}}
{{- $api := "use config.api (the container port, probes, Service, Ingress and NetworkPolicy follow config.api.listen)" -}}
{{- $catalog := "use config.catalog.path (it must stay on the catalog's volume)" -}}
{{- $postgres := "use the values postgres.url, postgres.passwordSecret and postgres.ca" -}}
{{- $replicas := "every pod is a replica when postgres.url is set: use replicaCount (and config.replicas.leaseSecs)" -}}
{{- $telemetry := "use config.telemetry (the chart derives the support channel's ConfigMap, its Role and the ServiceAccount token's mount from config.telemetry.support)" -}}
{{- $exact := dict
  "PXB_MODE" "use the value mode"
  "PXB_AUTH" $auth
  "PXB_SECRETS" $secrets
  "PXB_SECRETS_KEY" $secrets
  "PXB_GARDEN_CREDENTIALS" $garden
  "PXB_API" $api
  "PXB_API_LISTEN" "use config.api.listen (the container port, probes, Service, Ingress and NetworkPolicy follow it)"
  "PXB_CATALOG" $catalog
  "PXB_CATALOG_PATH" $catalog
  "PXB_CATALOG_URL" $postgres
  "PXB_CATALOG_PASSWORD_FILE" $postgres
  "PXB_CATALOG_CA_FILE" $postgres
  "PXB_REPLICAS" $replicas
  "PXB_REPLICAS_ENABLED" $replicas
  "PXB_REPLICAS_NAME" $replicas
  "PXB_REPLICAS_ADVERTISE" $replicas
  "POD_IP" "it is the pod's IP, where the other replicas reach it"
  "PXB_TELEMETRY" $telemetry
  "PXB_TELEMETRY_SUPPORT" $telemetry
  "PXB_TELEMETRY_SUPPORT_ENDPOINT" $telemetry
  "PXB_TELEMETRY_SUPPORT_CONFIG_MAP" $telemetry
  "PXB_TELEMETRY_SUPPORT_ENABLED_FILE" $telemetry
  "PXB_LOG" "use the value log.level"
  "PXB_LOG_FORMAT" "use the value log.format"
  "PXB_DEV_TOKEN" "the development token is for a server on a loopback address only: use auth.issuer (Entra ID)"
  "POD_NAMESPACE" "it is the pod's namespace, which the server needs" -}}
{{- $prefixes := dict "PXB_AUTH_" $auth "PXB_SECRETS_" $secrets "PXB_GARDEN_CREDENTIALS_" $garden -}}
{{- range $i, $e := .Values.extraEnv -}}
{{- $name := toString $e.name -}}
{{- $why := get $exact $name -}}
{{- range $prefix, $hint := $prefixes -}}
{{- if hasPrefix $prefix $name -}}{{- $why = $hint -}}{{- end -}}
{{- end -}}
{{- if $why -}}
{{- fail (printf "extraEnv[%d]: %s is set by the chart; %s" $i $name $why) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The hosts of ingress.hosts that no ingress.tls entry covers (listed, or under a listed
*.wildcard), as a JSON list. */}}
{{- define "pxb-server.ingressPlainHosts" -}}
{{- $covered := list -}}
{{- range .Values.ingress.tls -}}
{{- $covered = concat $covered (default (list) .hosts) -}}
{{- end -}}
{{- $plain := list -}}
{{- range .Values.ingress.hosts -}}
{{- $host := toString .host -}}
{{- $wildcard := regexReplaceAll "^[^.]+[.]" $host "*." -}}
{{- if not (or (has $host $covered) (has $wildcard $covered)) -}}
{{- $plain = append $plain $host -}}
{{- end -}}
{{- end -}}
{{- toJson $plain -}}
{{- end -}}

{{/* The server's configuration (config.yaml): the chart's defaults, `config` over them, and the
keys the chart owns (mode, auth, secrets, gardenCredentials) from their values. Every path in it
is one the Deployment mounts. */}}
{{- define "pxb-server.config" -}}
{{- include "pxb-server.validate" . -}}
{{- $defaults := dict "api" (dict "listen" "0.0.0.0:8080") "catalog" (dict "path" (printf "%s/catalog.db" (include "pxb-server.dataDir" .))) -}}
{{- $cfg := mustMergeOverwrite $defaults (deepCopy (default (dict) .Values.config)) -}}
{{- $catalog := toString $cfg.catalog.path -}}
{{- if or (not (hasPrefix (printf "%s/" (include "pxb-server.dataDir" .)) $catalog)) (contains "/../" $catalog) -}}
{{- fail (printf "config.catalog.path %q must be a file under %s/, the catalog's volume (persistence)" $catalog (include "pxb-server.dataDir" .)) -}}
{{- end -}}
{{- if .Values.postgres.url -}}
{{- $_ := set $cfg.catalog "url" (toString .Values.postgres.url) -}}
{{- if .Values.postgres.passwordSecret.name -}}
{{- $_ := set $cfg.catalog "passwordFile" (printf "%s/%s" (include "pxb-server.catalogPasswordDir" .) .Values.postgres.passwordSecret.key) -}}
{{- end -}}
{{- if or .Values.postgres.ca.configMap .Values.postgres.ca.secret -}}
{{- $_ := set $cfg.catalog "caFile" (printf "%s/%s" (include "pxb-server.catalogCaDir" .) .Values.postgres.ca.key) -}}
{{- end -}}
{{- $_ := set $cfg "replicas" (mustMergeOverwrite (default (dict) $cfg.replicas) (dict "enabled" true)) -}}
{{- end -}}
{{- $_ := set $cfg "mode" .Values.mode -}}
{{- $auth := dict "issuer" (toString .Values.auth.issuer) "audiences" (default (list) .Values.auth.audiences) "providerAdminGroups" (default (list) .Values.auth.providerAdminGroups) "providerAdminRoles" (default (list) .Values.auth.providerAdminRoles) "consoleClientId" (toString (default "" .Values.auth.consoleClientId)) "consoleScopes" (default (list) .Values.auth.consoleScopes) -}}
{{- if or .Values.auth.issuerCA.configMap .Values.auth.issuerCA.secret -}}
{{- $_ := set $auth "issuerCaFile" (printf "%s/%s" (include "pxb-server.issuerCaDir" .) .Values.auth.issuerCA.key) -}}
{{- end -}}
{{- $_ := set $cfg "auth" $auth -}}
{{- if .Values.secretsKey.existingSecret -}}
{{- $_ := set $cfg "secrets" (dict "keyFile" (printf "%s/%s" (include "pxb-server.secretsKeyDir" .) .Values.secretsKey.key)) -}}
{{- end -}}
{{- $garden := dict -}}
{{- range .Values.gardenCredentials -}}
{{- $g := dict "kubeconfig" (printf "%s/%s/kubeconfig" (include "pxb-server.gardenDir" $) .name) -}}
{{- with .orgs }}{{ $_ := set $g "orgs" . }}{{ end -}}
{{- with .projects }}{{ $_ := set $g "projects" . }}{{ end -}}
{{- $_ := set $garden .name $g -}}
{{- end -}}
{{- $_ := set $cfg "gardenCredentials" $garden -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The API's port: the port of api.listen. */}}
{{- define "pxb-server.port" -}}
{{- $cfg := include "pxb-server.config" . | fromYaml -}}
{{- $listen := toString $cfg.api.listen -}}
{{- $port := splitList ":" $listen | last -}}
{{- if not (regexMatch "^[0-9]{1,5}$" $port) -}}
{{- fail (printf "config.api.listen %q must be host:port with a numeric port (the container port, probes and Service follow it)" $listen) -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{/* The support channel's ConfigMap: namespace and name (from telemetry.support.configMap,
`name` or `namespace/name`), as "namespace/name". */}}
{{- define "pxb-server.telemetryConfigMap" -}}
{{- $cfg := include "pxb-server.config" . | fromYaml -}}
{{- $ref := "pxb-telemetry-config" -}}
{{- if and $cfg.telemetry $cfg.telemetry.support $cfg.telemetry.support.configMap -}}
{{- $ref = toString $cfg.telemetry.support.configMap -}}
{{- end -}}
{{- if contains "/" $ref -}}
{{- $ref -}}
{{- else -}}
{{- printf "%s/%s" .Release.Namespace $ref -}}
{{- end -}}
{{- end -}}

{{/* "true" when the server watches that ConfigMap through the Kubernetes API (an endpoint is
set and no enabledFile), so the pod needs its ServiceAccount's token; else "false". */}}
{{- define "pxb-server.needsApiToken" -}}
{{- $cfg := include "pxb-server.config" . | fromYaml -}}
{{- $support := dict -}}
{{- if and $cfg.telemetry $cfg.telemetry.support -}}{{- $support = $cfg.telemetry.support -}}{{- end -}}
{{- if and $support.endpoint (not $support.enabledFile) -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{- define "pxb-server.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}
