{{/* The rules of prometheus/alerts.yml (files/alerts.yml links to it: one source for compose and
     Kubernetes), with the compose job matchers rewritten to the monitors' jobs of this release:
       job="api"    -> job="<fullname>-api", namespace="<namespace>"
       job="worker" -> job="<fullname>-worker", namespace="<namespace>"
       job="celery-exporter" / job="redis-exporter" -> metrics.exporters.celeryJob / redisJob, and the
       rule is left out when that is empty (the chart deploys no exporter).
     tests/test_chart_alerts.py checks every selector of the result against the rendered monitors. */}}
{{- define "moderation.alertRules" -}}
{{- $source := .Files.Get "files/alerts.yml" | fromYaml -}}
{{- $ns := .Release.Namespace -}}
{{- $own := dict
      "api" (printf "job=%q, namespace=%q" (include "moderation.job.api" .) $ns)
      "worker" (printf "job=%q, namespace=%q" (include "moderation.job.worker" .) $ns) -}}
{{- $exporters := dict
      "celery-exporter" .Values.metrics.exporters.celeryJob
      "redis-exporter" .Values.metrics.exporters.redisJob -}}
{{- $groups := list -}}
{{- range $group := $source.groups -}}
{{- $rules := list -}}
{{- range $rule := $group.rules -}}
{{- $expr := $rule.expr -}}
{{- $keep := true -}}
{{- range $job, $target := $exporters -}}
{{- if contains (printf "job=%q" $job) $expr -}}
{{- if $target -}}{{- $expr = replace (printf "job=%q" $job) (printf "job=%q" $target) $expr -}}
{{- else -}}{{- $keep = false -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- range $job, $matchers := $own -}}
{{- $expr = replace (printf "job=%q" $job) $matchers $expr -}}
{{- end -}}
{{- if $keep -}}{{- $rules = append $rules (merge (dict "expr" $expr) (omit $rule "expr")) -}}{{- end -}}
{{- end -}}
{{- if $rules -}}{{- $groups = append $groups (dict "name" $group.name "rules" $rules) -}}{{- end -}}
{{- end -}}
{{- toYaml (dict "groups" $groups) -}}
{{- end -}}
