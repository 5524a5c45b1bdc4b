{{/* Names and labels. */}}
{{- define "moderation.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "moderation.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
moderation/environment: {{ .Values.environment }}
{{- end -}}

{{- define "moderation.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "moderation.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "moderation.fullname" .)) -}}
{{- end -}}

{{- define "moderation.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ .Values.serviceAccount.name | default (include "moderation.fullname" .) }}
{{- else -}}{{ .Values.serviceAccount.name | default "default" }}{{- end -}}
{{- end -}}

{{- define "moderation.redisHost" -}}
{{- if eq .Values.redis.mode "internal" -}}{{ include "moderation.fullname" . }}-redis
{{- else -}}{{ .Values.redis.external.host }}{{- end -}}
{{- end -}}

{{- define "moderation.redisPort" -}}
{{- if eq .Values.redis.mode "internal" -}}{{ .Values.redis.internal.servicePort }}
{{- else -}}{{ .Values.redis.external.port }}{{- end -}}
{{- end -}}

{{/* The worker's model queue: the same rule as shared/queues.py queue_for_model. */}}
{{- define "moderation.queue" -}}moderation.{{ . }}{{- end -}}

{{/* One worker entry merged over workerDefaults. Call with (dict "root" $ "worker" $w). */}}
{{- define "moderation.worker" -}}
{{- $merged := mustMergeOverwrite (deepCopy .root.Values.workerDefaults) (deepCopy .worker) -}}
{{- toYaml $merged -}}
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

{{/* Pod-level pieces every Deployment shares. */}}
{{- define "moderation.podCommon" -}}
serviceAccountName: {{ include "moderation.serviceAccountName" .root }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.images.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  {{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  - maxSkew: 1
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $.root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "moderation.selector" (dict "root" $.root "component" $.component) | nindent 8 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* envFrom + the Secret's keys, for every app container. */}}
{{- define "moderation.appEnvFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "moderation.fullname" . }}-config
  - secretRef:
      name: {{ include "moderation.secretName" . }}
{{- end -}}

{{- define "moderation.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.modelVolume.claimName }}
- name: models
  mountPath: /models
  readOnly: true
{{- end }}
{{- end -}}

{{- define "moderation.tmpVolume" -}}
- name: tmp
  emptyDir: {sizeLimit: 256Mi}
{{- if .Values.modelVolume.claimName }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.modelVolume.claimName }}
    readOnly: true
{{- end }}
{{- end -}}
