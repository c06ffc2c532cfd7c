{{/*
Every template here takes the wsgate chart's context: "." inside this chart, or
.Subcharts.wsgate from a chart that has wsgate as a dependency (it carries this chart's
.Values, .Chart, .Release and .Capabilities).
*/}}

{{/* wsgate.name is the chart name, cut to 63 characters (a label value's limit). */}}
{{- define "wsgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
wsgate.fullname prefixes resources: release-name, or the release name alone when it already
holds the chart name; cut to 63 characters (DNS-1123 label).
*/}}
{{- define "wsgate.fullname" -}}
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

{{/* wsgate.chart is the helm.sh/chart label: name-version. */}}
{{- define "wsgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* wsgate.selectorLabels select the gate's pods: name and instance only (immutable). */}}
{{- define "wsgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wsgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* wsgate.labels are the gate's resources' labels but the component. */}}
{{- define "wsgate.labels" -}}
{{ include "wsgate.selectorLabels" . }}
{{ include "wsgate.commonLabels" . }}
{{- end }}

{{/* wsgate.commonLabels are the labels of every resource but name, instance and component. */}}
{{- define "wsgate.commonLabels" -}}
helm.sh/chart: {{ include "wsgate.chart" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: {{ .Values.partOf | default (include "wsgate.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* wsgate.redisName names the dev Redis resources and its name label. */}}
{{- define "wsgate.redisName" -}}
{{- printf "%s-redis" (include "wsgate.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/* wsgate.redisSelectorLabels select the dev Redis pod (a name of its own, so the gate's
Service never selects it). */}}
{{- define "wsgate.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-redis" (include "wsgate.name" . | trunc 57 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* wsgate.serviceAccountName is the standalone pod's ServiceAccount. */}}
{{- define "wsgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wsgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* wsgate.image is repository:tag, or repository@digest. */}}
{{- define "wsgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* wsgate.upstream is --upstream: the value, else the standalone demo backend. */}}
{{- define "wsgate.upstream" -}}
{{- if .Values.gate.upstream }}
{{- .Values.gate.upstream }}
{{- else if .Values.standalone.enabled }}
{{- printf "http://127.0.0.1:%d" (int .Values.backend.port) }}
{{- else }}
{{- fail "wsgate: gate.upstream is required in sidecar mode, e.g. http://127.0.0.1:3000 (the app's port in the pod)" }}
{{- end }}
{{- end }}

{{/* wsgate.redisUrl is the plain --redis-url: the value, else the dev Redis, else empty. */}}
{{- define "wsgate.redisUrl" -}}
{{- $r := .Values.gate.redis }}
{{- if and $r.url $r.existingSecret.name }}
{{- fail "wsgate: set gate.redis.url or gate.redis.existingSecret.name, not both" }}
{{- end }}
{{- if $r.url }}
{{- $r.url }}
{{- else if and .Values.devRedis.enabled (not $r.existingSecret.name) }}
{{- printf "redis://%s:6379/0" (include "wsgate.redisName" .) }}
{{- end }}
{{- end }}

{{/* wsgate.jwtKeySource is "secret", "configMap" or "" for the --jwt-key-file volume. */}}
{{- define "wsgate.jwtKeySource" -}}
{{- if .Values.gate.auth.jwtKey.existingSecret }}secret
{{- else if .Values.gate.auth.jwtKey.existingConfigMap }}configMap
{{- end }}
{{- end }}

{{/*
wsgate.seconds is a Go duration ("5s", "1m30s", "500ms", "0") in whole seconds, rounded up.
*/}}
{{- define "wsgate.seconds" -}}
{{- $ms := 0.0 }}
{{- range regexFindAll "[0-9.]+(ns|us|µs|ms|s|m|h)" (toString .) -1 }}
{{- $n := float64 (regexFind "^[0-9.]+" .) }}
{{- $unit := regexReplaceAll "^[0-9.]+" . "" }}
{{- $per := get (dict "ns" 0.000001 "us" 0.001 "µs" 0.001 "ms" 1.0 "s" 1000.0 "m" 60000.0 "h" 3600000.0) $unit }}
{{- $ms = addf $ms (mulf $n $per) }}
{{- end }}
{{- ceil (divf $ms 1000) | int }}
{{- end }}

{{/*
wsgate.terminationGracePeriodSeconds is terminationGracePeriodSeconds, or when it is null what
the gate's drain takes: shutdown delay + drain spread + grace, and 5 s to spare.
*/}}
{{- define "wsgate.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- $s := .Values.gate.shutdown }}
{{- add (include "wsgate.seconds" ($s.delay | default "5s")) (include "wsgate.seconds" ($s.drainSpread | default "0")) (include "wsgate.seconds" ($s.grace | default "25s")) 5 }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
wsgate.args is the gate's command line as a JSON array: one --flag=value per set value (null
leaves a flag to the binary's default; a list repeats the flag), then extraArgs.
*/}}
{{- define "wsgate.args" -}}
{{- $g := .Values.gate }}
{{- $flags := list
  (list "listen" (printf ":%d" (int $g.port)))
  (list "admin-listen" (printf ":%d" (int $g.adminPort)))
  (list "max-conns" $g.maxConns)
  (list "max-pending-handshakes" $g.maxPendingHandshakes)
  (list "max-pass-requests" $g.maxPassRequests)
  (list "upstream" (include "wsgate.upstream" .))
  (list "upstream-dial-timeout" $g.upstreamDialTimeout)
  (list "pass-body-timeout" $g.passBodyTimeout)
  (list "pass-response-timeout" $g.passResponseTimeout)
  (list "trusted-proxies" .Values.trustedProxies)
  (list "proxy-protocol" $g.clientIp.proxyProtocol)
  (list "ipv6-prefix" $g.clientIp.ipv6Prefix)
  (list "user-rate" $g.limits.userRate)
  (list "user-block" $g.limits.userBlock)
  (list "ip-rate" $g.limits.ipRate)
  (list "ip-block" $g.limits.ipBlock)
  (list "user-conn-rate" $g.limits.userConnRate)
  (list "ip-conn-rate" $g.limits.ipConnRate)
  (list "limit-mode" $g.limits.mode)
  (list "lease-size" $g.limits.leaseSize)
  (list "ip-max-conns" $g.limits.ipMaxConns)
  (list "shadow" $g.limits.shadow)
  (list "failure-mode" $g.redis.failureMode)
  (list "key-prefix" $g.redis.keyPrefix)
  (list "redis-timeout" $g.redis.timeout)
  (list "compression" $g.protocol.compression)
  (list "control-frame-rate" $g.protocol.controlFrameRate)
  (list "handshake-timeout" $g.protocol.handshakeTimeout)
  (list "idle-timeout" $g.protocol.idleTimeout)
  (list "max-header-bytes" $g.protocol.maxHeaderBytes)
  (list "max-message-bytes" $g.protocol.maxMessageBytes)
  (list "message-timeout" $g.protocol.messageTimeout)
  (list "ping-interval" $g.protocol.pingInterval)
  (list "write-timeout" $g.protocol.writeTimeout)
  (list "shutdown-delay" $g.shutdown.delay)
  (list "shutdown-grace" $g.shutdown.grace)
  (list "drain-spread" $g.shutdown.drainSpread)
  (list "drain-code" $g.shutdown.drainCode)
  (list "max-conn-age" $g.shutdown.maxConnAge)
  (list "jwks-url" $g.auth.jwksUrl)
  (list "jwt-algorithms" $g.auth.jwtAlgorithms)
  (list "jwt-issuer" $g.auth.jwtIssuer)
  (list "jwt-audience" $g.auth.jwtAudience)
  (list "jwt-subject-claim" $g.auth.jwtSubjectClaim)
  (list "jwt-leeway" $g.auth.jwtLeeway)
  (list "allow-anonymous" $g.auth.allowAnonymous)
  (list "close-on-token-expiry" $g.auth.closeOnTokenExpiry)
  (list "forward-token" $g.auth.forwardToken)
  (list "identity-header" $g.auth.identityHeader)
  (list "strip-header" $g.auth.stripHeaders)
  (list "token-cookie" $g.auth.tokenCookie)
  (list "token-query-param" $g.auth.tokenQueryParam)
  (list "allowed-origins" $g.auth.allowedOrigins)
  (list "redis-required" $g.redis.required)
  (list "socketio-path" $g.web.socketioPath)
  (list "socketio-event" $g.web.socketioEvent)
  (list "skip-auth-route" $g.web.skipAuthRoutes)
  (list "skip-auth-preflight" $g.web.skipAuthPreflight)
  (list "health-passthrough" $g.web.healthPassthrough)
  (list "log-level" $g.log.level)
  (list "log-format" $g.log.format)
  (list "log-subject" $g.log.subject)
}}
{{- /* An empty string is left out (the binary's default is empty or fits), except where
       empty means something else than the default. */}}
{{- $keepEmpty := list "identity-header" "token-query-param" "socketio-path" }}
{{- /* A rules file holds every rule: the rule flags beside it are refused. */}}
{{- $ruleFlags := list }}
{{- if $g.rules }}
{{- $ruleFlags = list "user-rate" "user-block" "ip-rate" "ip-block" "user-conn-rate" "ip-conn-rate" }}
{{- end }}
{{- $args := list }}
{{- range $flags }}
{{- $name := index . 0 }}
{{- $v := index . 1 }}
{{- if or (kindIs "invalid" $v) (has $name $ruleFlags) }}
{{- else if and (kindIs "string" $v) (eq $v "") (not (has $name $keepEmpty)) }}
{{- else if kindIs "slice" $v }}
{{- range $v }}
{{- $args = append $args (printf "--%s=%v" $name .) }}
{{- end }}
{{- else if kindIs "float64" $v }}
{{- $args = append $args (printf "--%s=%d" $name (int64 $v)) }}
{{- else }}
{{- $args = append $args (printf "--%s=%v" $name $v) }}
{{- end }}
{{- end }}
{{- with (include "wsgate.redisUrl" .) }}
{{- $args = append $args (printf "--redis-url=%s" .) }}
{{- end }}
{{- if $g.rules }}
{{- $args = append $args "--rules-file=/etc/wsgate/rules/rules.yaml" }}
{{- end }}
{{- if .Values.gate.auth.jwtHmacSecret.existingSecret }}
{{- $args = append $args (printf "--jwt-hmac-secret-file=/etc/wsgate/jwt-hmac/%s" .Values.gate.auth.jwtHmacSecret.key) }}
{{- end }}
{{- if include "wsgate.jwtKeySource" . }}
{{- $args = append $args (printf "--jwt-key-file=/etc/wsgate/jwt-key/%s" .Values.gate.auth.jwtKey.key) }}
{{- end }}
{{- $hasKey := or .Values.gate.auth.jwtHmacSecret.existingSecret (include "wsgate.jwtKeySource" .) .Values.gate.auth.jwksUrl }}
{{- $require := .Values.gate.auth.requireAuth }}
{{- if or (eq (toString $require) "true") (and (kindIs "invalid" $require) $hasKey) }}
{{- $args = append $args "--require-auth=true" }}
{{- end }}
{{- range .Values.extraArgs }}
{{- $args = append $args (toString .) }}
{{- end }}
{{- toJson $args }}
{{- end }}

{{/* wsgate.env is the gate's environment as a JSON array: secrets, then extraEnv. */}}
{{- define "wsgate.env" -}}
{{- $env := list }}
{{- /* The admin token file by its variable, not an argument: `kubectl exec ... wsgate admin`
       in the container finds it there. */}}
{{- with .Values.gate.admin.tokenSecret }}
{{- if .existingSecret }}
{{- $env = append $env (dict "name" "WSGATE_ADMIN_TOKEN_FILE" "value" (printf "/etc/wsgate/admin/%s" .key)) }}
{{- end }}
{{- end }}
{{- with .Values.gate.redis.existingSecret }}
{{- if .name }}
{{- $env = append $env (dict "name" "WSGATE_REDIS_URL" "valueFrom" (dict "secretKeyRef" (dict "name" .name "key" .key))) }}
{{- end }}
{{- end }}
{{- range .Values.extraEnv }}
{{- $env = append $env . }}
{{- end }}
{{- toJson $env }}
{{- end }}

{{/* wsgate.volumeMounts are the gate container's mounts as a JSON array. */}}
{{- define "wsgate.volumeMounts" -}}
{{- $m := list }}
{{- if .Values.gate.auth.jwtHmacSecret.existingSecret }}
{{- $m = append $m (dict "name" "wsgate-jwt-hmac" "mountPath" "/etc/wsgate/jwt-hmac" "readOnly" true) }}
{{- end }}
{{- if .Values.gate.admin.tokenSecret.existingSecret }}
{{- $m = append $m (dict "name" "wsgate-admin" "mountPath" "/etc/wsgate/admin" "readOnly" true) }}
{{- end }}
{{- if include "wsgate.jwtKeySource" . }}
{{- $m = append $m (dict "name" "wsgate-jwt-key" "mountPath" "/etc/wsgate/jwt-key" "readOnly" true) }}
{{- end }}
{{- if .Values.gate.rules }}
{{- $m = append $m (dict "name" "wsgate-rules" "mountPath" "/etc/wsgate/rules" "readOnly" true) }}
{{- end }}
{{- range .Values.extraVolumeMounts }}
{{- $m = append $m . }}
{{- end }}
{{- toJson $m }}
{{- end }}

{{/*
wsgate.volumes are the pod volumes the gate's mounts need, as YAML list items (possibly none).
A chart that includes wsgate.sidecar includes this under its pod's volumes.
The files are 0444: without a pod fsGroup (the sidecar recipe leaves the including pod's
securityContext alone) the kubelet leaves them owned by root:root, and the gate runs as
65532:65532, so owner or group bits alone would make them unreadable and the gate would not
start. Only the gate's container mounts these volumes, so "other" reaches no one else.
*/}}
{{- define "wsgate.volumes" -}}
{{- $a := .Values.gate.auth }}
{{- if $a.jwtHmacSecret.existingSecret }}
- name: wsgate-jwt-hmac
  secret:
    secretName: {{ $a.jwtHmacSecret.existingSecret | quote }}
    defaultMode: 0444
    items:
      - key: {{ $a.jwtHmacSecret.key | quote }}
        path: {{ $a.jwtHmacSecret.key | quote }}
{{- end }}
{{- with .Values.gate.admin.tokenSecret }}
{{- if .existingSecret }}
- name: wsgate-admin
  secret:
    secretName: {{ .existingSecret | quote }}
    defaultMode: 0444
    items:
      - key: {{ .key | quote }}
        path: {{ .key | quote }}
{{- end }}
{{- end }}
{{- $src := include "wsgate.jwtKeySource" . }}
{{- if eq $src "secret" }}
- name: wsgate-jwt-key
  secret:
    secretName: {{ $a.jwtKey.existingSecret | quote }}
    defaultMode: 0444
    items:
      - key: {{ $a.jwtKey.key | quote }}
        path: {{ $a.jwtKey.key | quote }}
{{- else if eq $src "configMap" }}
- name: wsgate-jwt-key
  configMap:
    name: {{ $a.jwtKey.existingConfigMap | quote }}
    defaultMode: 0444
    items:
      - key: {{ $a.jwtKey.key | quote }}
        path: {{ $a.jwtKey.key | quote }}
{{- end }}
{{- if .Values.gate.rules }}
- name: wsgate-rules
  configMap:
    name: {{ include "wsgate.rulesConfigMap" . | quote }}
    defaultMode: 0444
    items:
      - key: rules.yaml
        path: rules.yaml
{{- end }}
{{- end }}

{{/*
wsgate.rulesConfigMap names the ConfigMap of gate.rules. Its content is not part of the
checksum/config annotation: a rules change must reach running pods without restarting them.
*/}}
{{- define "wsgate.rulesConfigMap" -}}
{{- printf "%s-rules" (include "wsgate.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/*
wsgate.checksum is the checksum/config pod annotation's value: it changes whenever the gate's
args, env, mounts or image change, so the pods roll.
*/}}
{{- define "wsgate.checksum" -}}
{{- include "wsgate.sidecar" . | sha256sum }}
{{- end }}

{{/*
wsgate.sidecar is the gate container as a YAML list item. Put it under the pod's containers,
or under initContainers when .Values.sidecar.native is true (it then carries restartPolicy:
Always). Usage from a chart with wsgate as a dependency:
  containers:
    {{- include "wsgate.sidecar" .Subcharts.wsgate | nindent 4 }}
*/}}
{{- define "wsgate.sidecar" -}}
{{- $p := .Values.probes -}}
- name: {{ .Values.sidecar.containerName }}
  image: {{ include "wsgate.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  args:
    {{- include "wsgate.args" . | fromJsonArray | toYaml | nindent 4 }}
  {{- with (include "wsgate.env" . | fromJsonArray) }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: wsgate
      containerPort: {{ int .Values.gate.port }}
      protocol: TCP
    - name: wsgate-admin
      containerPort: {{ int .Values.gate.adminPort }}
      protocol: TCP
  {{- if $p.startup.enabled }}
  startupProbe:
    httpGet:
      path: /readyz
      port: wsgate-admin
    periodSeconds: {{ int $p.startup.periodSeconds }}
    failureThreshold: {{ int $p.startup.failureThreshold }}
    timeoutSeconds: {{ int $p.startup.timeoutSeconds }}
  {{- end }}
  {{- if $p.readiness.enabled }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: wsgate-admin
    periodSeconds: {{ int $p.readiness.periodSeconds }}
    failureThreshold: {{ int $p.readiness.failureThreshold }}
    successThreshold: {{ int $p.readiness.successThreshold }}
    timeoutSeconds: {{ int $p.readiness.timeoutSeconds }}
  {{- end }}
  {{- if $p.liveness.enabled }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: wsgate-admin
    periodSeconds: {{ int $p.liveness.periodSeconds }}
    failureThreshold: {{ int $p.liveness.failureThreshold }}
    timeoutSeconds: {{ int $p.liveness.timeoutSeconds }}
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (include "wsgate.volumeMounts" . | fromJsonArray) }}
  volumeMounts:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
