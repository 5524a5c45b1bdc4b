{{/* ---------------------------------------------------------------------------------------------
     Names and labels
     --------------------------------------------------------------------------------------------- */}}
{{- define "moderation.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{/* Labels of every object. The component label is added by each object: pod templates get these
     plus app.kubernetes.io/component, which with name and instance makes the selector (no key twice:
     kustomize, so Argo CD and Flux post-renderers, refuse a mapping with a repeated key). */}}
{{- define "moderation.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ .Chart.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
moderation/environment: {{ .Values.environment }}
{{- end -}}

{{/* Call with (dict "root" $ "component" "api"). */}}
{{- define "moderation.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* metadata.labels of an object that belongs to a component. Call with (dict "root" $ "component" "api"). */}}
{{- define "moderation.componentLabels" -}}
{{ include "moderation.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "moderation.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "moderation.fullname" .)) -}}
{{- end -}}

{{- define "moderation.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ .Values.serviceAccount.name | default (include "moderation.fullname" .) }}
{{- else -}}{{ .Values.serviceAccount.name | default "default" }}{{- end -}}
{{- end -}}

{{/* An image reference: repository@digest when a digest is given, else repository:tag (tag defaults
     to the chart's appVersion, never `latest`). Call with (dict "root" $ "image" $image). */}}
{{- define "moderation.image" -}}
{{- if .image.digest -}}{{ printf "%s@%s" .image.repository .image.digest }}
{{- else -}}{{ printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) }}{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------------
     Addresses. Pods resolve a short Service name in their own namespace; KEDA's operator resolves
     names from its namespace, so whatever KEDA reads is completed to <name>.<namespace>.svc.<domain>.
     --------------------------------------------------------------------------------------------- */}}
{{/* A host name as every namespace resolves it: a name without a dot is a Service of this namespace.
     Call with (dict "root" $ "host" "redis"). */}}
{{- define "moderation.fqdn" -}}
{{- if contains "." .host -}}{{ .host }}
{{- else -}}{{ printf "%s.%s.svc.%s" .host .root.Release.Namespace .root.Values.clusterDomain }}{{- end -}}
{{- end -}}

{{/* A URL with its host completed by moderation.fqdn; the rest stays byte for byte (credentials, vhost).
     Call with (dict "root" $ "url" "amqp://u:p@rabbitmq:5672/%2F"). */}}
{{- define "moderation.fqdnUrl" -}}
{{- $host := (urlParse .url).hostname -}}
{{- $full := include "moderation.fqdn" (dict "root" .root "host" $host) -}}
{{- regexReplaceAll (printf "^([a-z+]+://([^@/]*@)?)%s" (regexQuoteMeta $host)) .url (printf "${1}%s" $full) -}}
{{- end -}}

{{- define "moderation.redisHost" -}}
{{- if eq .Values.redis.mode "internal" -}}{{ include "moderation.fullname" . }}-redis
{{- else -}}{{ .Values.redis.external.host }}{{- end -}}
{{- end -}}

{{- define "moderation.redisPort" -}}
{{- if eq .Values.redis.mode "internal" -}}{{ .Values.redis.internal.servicePort }}
{{- else -}}{{ .Values.redis.external.port }}{{- end -}}
{{- end -}}

{{- define "moderation.redisDb" -}}
{{- ternary .Values.redis.external.db 0 (eq .Values.redis.mode "external") -}}
{{- end -}}

{{- define "moderation.redisTls" -}}
{{- and (eq .Values.redis.mode "external") .Values.redis.external.tls | toString -}}
{{- end -}}

{{/* The password of the chart's own Redis: redis.internal.password, else the one the release's Secret
     already holds (an upgrade keeps it), else a new random one. Set once per render, so every object
     that includes it sees the same value. */}}
{{- define "moderation.internalRedisPassword" -}}
{{- if not .Values.redis.internal.password -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "moderation.secretName" .) -}}
{{- $kept := "" -}}
{{- if and $existing $existing.data (hasKey $existing.data "REDIS_PASSWORD") -}}{{- $kept = b64dec (index $existing.data "REDIS_PASSWORD") -}}{{- end -}}
{{- $_ := set .Values.redis.internal "password" ($kept | default (randAlphaNum 32)) -}}
{{- end -}}
{{- .Values.redis.internal.password -}}
{{- end -}}

{{/* The Redis password the service and KEDA use ("" for an external Redis without one). */}}
{{- define "moderation.redisPassword" -}}
{{- if eq .Values.redis.mode "internal" -}}{{ include "moderation.internalRedisPassword" . }}
{{- else -}}{{ .Values.redis.external.password }}{{- end -}}
{{- end -}}

{{/* The queue of a model: the same rule as shared/queues.py queue_for_model. */}}
{{- define "moderation.queue" -}}moderation.{{ . }}{{- end -}}

{{/* ---------------------------------------------------------------------------------------------
     Workers
     --------------------------------------------------------------------------------------------- */}}
{{/* One worker entry merged over workerDefaults. Call with (dict "root" $ "worker" $w). */}}
{{- define "moderation.worker" -}}
{{- $merged := mustMergeOverwrite (deepCopy .root.Values.workerDefaults) (deepCopy .worker) -}}
{{- toYaml $merged -}}
{{- end -}}

{{/* Every entry of `workers`, merged, as a YAML list under "workers" (fromYaml needs a map). */}}
{{- define "moderation.workers" -}}
{{- $list := list -}}
{{- range .Values.workers -}}{{- $list = append $list (include "moderation.worker" (dict "root" $ "worker" .) | fromYaml) -}}{{- end -}}
{{- toYaml (dict "workers" $list) -}}
{{- end -}}

{{/* Whole CPUs of a limit ("2", 2, "2000m"): TORCH_THREADS. */}}
{{- define "moderation.cpus" -}}
{{- $cpu := toString . -}}
{{- if hasSuffix "m" $cpu -}}{{ max 1 (div (atoi (trimSuffix "m" $cpu)) 1000) }}
{{- else -}}{{ max 1 (atoi $cpu) }}{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds of a worker: the longest batch plus drain (values.yaml explains).
     Call with (dict "root" $ "worker" $w) where $w is a merged worker. */}}
{{- define "moderation.workerGrace" -}}
{{- $config := .root.Values.config -}}
{{- /* worker/slices.py: a batch reads at most 1.25 x SLICE_TOKENS tokens (batch_token_bound) */ -}}
{{- $tokens := mulf (float64 (default "2048" $config.SLICE_TOKENS)) 1.25 -}}
{{- $cpus := float64 (include "moderation.cpus" .worker.resources.limits.cpu) -}}
{{- $batch := divf (mulf $tokens .worker.batchTiming.secondsPerTokenPerCore) $cpus -}}
{{- $wait := divf (float64 (default "5" $config.BATCH_MAX_WAIT_MS)) 1000.0 -}}
{{- ceil (addf $batch $wait .worker.batchTiming.drainSeconds) | int -}}
{{- end -}}

{{/* The lowest replica count a worker pool can reach: 0 only with KEDA and minReplicas 0. */}}
{{- define "moderation.workerFloor" -}}
{{- ternary .autoscaling.minReplicas (max 1 .autoscaling.minReplicas) .autoscaling.keda -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------------
     Pods
     --------------------------------------------------------------------------------------------- */}}
{{/* Pod template metadata. Call with (dict "root" $ "component" "api" "pod" $values "labels" $extra
     "annotations" $extra) where $values holds podLabels / podAnnotations (api, a merged worker, webhooks). */}}
{{- define "moderation.podMetadata" -}}
labels:
  {{- include "moderation.componentLabels" (dict "root" .root "component" .component) | nindent 2 }}
  {{- with .labels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- with .pod.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include (print .root.Template.BasePath "/config.yaml") .root | sha256sum }}
  checksum/secret: {{ include "moderation.secretChecksum" .root }}
  {{- with .annotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- with .pod.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* Changes to the credentials roll the pods: the hash of the chart's Secret, or of the existing Secret's
     data as the cluster holds it at install/upgrade time (lookup; empty under `helm template`). */}}
{{- define "moderation.secretChecksum" -}}
{{- if .Values.secrets.existingSecret -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace .Values.secrets.existingSecret -}}
{{- (and $existing $existing.data | default dict) | toJson | sha256sum -}}
{{- else -}}
{{- include (print .Template.BasePath "/secret.yaml") . | sha256sum -}}
{{- end -}}
{{- end -}}

{{/* Pod-level pieces every workload shares. Call with (dict "root" $ "component" "api" "pod" $values). */}}
{{- define "moderation.podCommon" -}}
serviceAccountName: {{ include "moderation.serviceAccountName" .root }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.images.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .pod.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .pod.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .pod.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .pod.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- include "moderation.topologySpread" . }}
{{- end -}}

{{/* Spread over nodes and zones. The node constraint honours taints and node affinity (a GPU or
     control-plane node the pod cannot use is not an empty domain that caps every other node at one
     pod) and counts only the pods of one ReplicaSet (matchLabelKeys: a rollout's surge pod is placed
     by its own revision). The zone constraint is always ScheduleAnyway: nodes without a zone label
     stay usable. Worker pools take topologySpread.workerWhenUnsatisfiable. topologySpread.constraints
     replaces both. */}}
{{- define "moderation.topologySpread" -}}
{{- $spread := .root.Values.topologySpread -}}
{{- if $spread.enabled }}
{{- $selector := dict "matchLabels" (include "moderation.selector" (dict "root" .root "component" .component) | fromYaml) }}
topologySpreadConstraints:
{{- if $spread.constraints }}
{{- range $spread.constraints }}
  - {{- toYaml (merge (dict) . (dict "labelSelector" $selector)) | nindent 4 }}
{{- end }}
{{- else }}
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: {{ ternary $spread.workerWhenUnsatisfiable $spread.whenUnsatisfiable (hasPrefix "worker-" .component) }}
    nodeTaintsPolicy: Honor
    nodeAffinityPolicy: Honor
    matchLabelKeys: [pod-template-hash]
    labelSelector:
      {{- toYaml $selector | nindent 6 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    nodeTaintsPolicy: Honor
    nodeAffinityPolicy: Honor
    matchLabelKeys: [pod-template-hash]
    labelSelector:
      {{- toYaml $selector | nindent 6 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The service's settings and credentials, for every app container: the ConfigMap and the Secret. */}}
{{- define "moderation.appEnvFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "moderation.fullname" . }}-config
  - secretRef:
      name: {{ include "moderation.secretName" . }}
{{- end -}}

{{/* /tmp (heartbeat node name, Prometheus multiprocess files, Hugging Face cache), the model volume
     and extraVolumeMounts. Call with (dict "root" $ "pod" $values). */}}
{{- define "moderation.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .root.Values.modelVolume.claimName }}
- name: models
  mountPath: /models
  readOnly: true
{{- end }}
{{- with .pod.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "moderation.volumes" -}}
- name: tmp
  emptyDir: {sizeLimit: 256Mi}
{{- if .root.Values.modelVolume.claimName }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .root.Values.modelVolume.claimName }}
    readOnly: true
{{- end }}
{{- with .pod.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------------
     Monitoring: the scrape jobs the monitors give their targets, which the rules select.
     --------------------------------------------------------------------------------------------- */}}
{{- define "moderation.job.api" -}}{{ include "moderation.fullname" . }}-api{{- end -}}
{{- define "moderation.job.worker" -}}{{ include "moderation.fullname" . }}-worker{{- end -}}
{{- define "moderation.job.webhooks" -}}{{ include "moderation.fullname" . }}-webhooks{{- end -}}
