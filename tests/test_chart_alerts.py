"""Alerts that can fire: every selector of every alert names a scrape job that exists, and a metric that
job's targets export, in Docker Compose (prometheus.yml) and in the chart's render (its
ServiceMonitor/PodMonitors); then promtool runs the rendered rules on series labelled as the Prometheus
Operator labels them.

prometheus/alerts.yml is the one source (deploy/helm/moderation/templates/_alerts.tpl renders it).
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from scripts.chart import ROOT, of_kind, render
from shared import metrics as m
from tests.promql_names import NOT_METRICS
from tests.test_deploy_files import (
    CELERY_EXPORTER_METRICS,
    HISTOGRAM_SUFFIXES,
    HISTOGRAMS,
    REDIS_EXPORTER_METRICS,
    require_tool,
    run,
    write_rules_for_promtool,
)

NAMESPACE = "moderation-ns"
EXPORTERS = {"metrics.exporters.celeryJob": "celery-exporter", "metrics.exporters.redisJob": "redis-exporter"}


def series_of(names) -> set[str]:
    return set(names) | {name + suffix for name in names if name in HISTOGRAMS for suffix in HISTOGRAM_SUFFIXES}


# What each kind of target exports (`up` is Prometheus's own, for every target).
EXPORTED = {"api": series_of(m.API_METRICS) | {"up"}, "worker": series_of(m.WORKER_METRICS) | {"up"},
            "webhooks": {"up"}, "celery-exporter": CELERY_EXPORTER_METRICS | {"up"},
            "redis-exporter": REDIS_EXPORTER_METRICS | {"up"}}

_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\{[^{}]*\}|(?<![\w:])(?:by|without|on|ignoring|group_left|group_right)\s*'
                    r'\([^()]*\)|\[[^\]]*\]|[A-Za-z_:][A-Za-z0-9_:]*|\S', re.IGNORECASE)
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!=|!~|=)\s*"((?:\\.|[^"\\])*)"')


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """Every vector selector of a PromQL expression: (metric name, {label: (operator, value)})."""
    tokens = [t.group(0) for t in _TOKEN.finditer(expr)]
    found = []
    for i, token in enumerate(tokens):
        if re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", token) and token.lower() not in NOT_METRICS \
                and not (i + 1 < len(tokens) and tokens[i + 1] == "("):
            block = tokens[i + 1] if i + 1 < len(tokens) and tokens[i + 1].startswith("{") else "{}"
            found.append((token, {k: (op, v) for k, op, v in _MATCHER.findall(block)}))
    return found


def test_the_selector_parser():
    expr = ('(max by (queue) (moderation_queue_depth{job="api"}) > 0) unless on (queue) '
            'label_replace(count by (model) (moderation_worker_info{job="worker", x=~"a"}), "queue", "m.$1", "model", '
            '"(.+)") / sum(rate(c_total[5m]))')
    assert selectors(expr) == [("moderation_queue_depth", {"job": ("=", "api")}),
                               ("moderation_worker_info", {"job": ("=", "worker"), "x": ("=~", "a")}),
                               ("c_total", {})]


def alerts(groups: list[dict]) -> list[dict]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def check_selectors(rules: list[dict], jobs: dict[str, str], namespace: str | None) -> None:
    """jobs: scrape job -> kind of target (a key of EXPORTED); each selector must name one job exactly."""
    problems = []
    for rule in rules:
        for metric, matchers in selectors(rule["expr"]):
            operator, job = matchers.get("job", (None, None))
            if operator != "=" or job not in jobs:
                problems.append(f"{rule['alert']}: {metric} selects job {job!r} ({operator}); scraped: {sorted(jobs)}")
                continue
            if metric not in EXPORTED[jobs[job]]:
                problems.append(f"{rule['alert']}: {metric} is not exported by job {job!r} ({jobs[job]})")
            own = jobs[job] in ("api", "worker", "webhooks")
            if namespace and own and matchers.get("namespace") != ("=", namespace):
                problems.append(f"{rule['alert']}: {metric} is not held to the release's namespace {namespace}")
    assert not problems, "\n".join(problems)


def test_compose_alerts_select_the_jobs_prometheus_yml_scrapes():
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    kinds = {"api": "api", "worker": "worker", "celery-exporter": "celery-exporter",
             "redis-exporter": "redis-exporter"}
    jobs = {job["job_name"]: kinds[job["job_name"]] for job in config["scrape_configs"] if job["job_name"] in kinds}
    assert set(jobs) == set(kinds), config["scrape_configs"]
    check_selectors(alerts(yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())["groups"]), jobs, None)


def monitor_jobs(docs: list[dict]) -> dict[str, str]:
    """The `job` label the Prometheus Operator gives each monitor's targets -> kind of target: the
    relabelings' replacement, else (the operator's default) the Service's name for a ServiceMonitor and
    <namespace>/<name> for a PodMonitor."""
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    jobs = {}
    for monitor in of_kind(docs, "ServiceMonitor") + of_kind(docs, "PodMonitor"):
        endpoints = monitor["spec"].get("endpoints") or monitor["spec"].get("podMetricsEndpoints")
        for endpoint in endpoints:
            replaced = [r["replacement"] for r in endpoint.get("relabelings", []) if r.get("targetLabel") == "job"]
            if replaced:
                names = replaced[-1:]
            elif monitor["kind"] == "ServiceMonitor":
                wanted = monitor["spec"]["selector"]["matchLabels"].items()
                names = [name for name, s in services.items() if wanted <= s["metadata"]["labels"].items()]
            else:
                names = [f"{NAMESPACE}/{monitor['metadata']['name']}"]
            selector = json.dumps(monitor["spec"]["selector"])
            kind = "api" if monitor["kind"] == "ServiceMonitor" else \
                "worker" if "moderation/model" in selector else "webhooks"
            jobs.update({name: kind for name in names})
    return jobs


@pytest.mark.parametrize("environment, overrides", [("staging", {}), ("prod", {}), ("prod", EXPORTERS)],
                         ids=["staging", "prod", "prod-with-exporters"])
def test_rendered_alerts_select_the_jobs_the_rendered_monitors_scrape(environment, overrides):
    docs = render(environment, overrides, namespace=NAMESPACE)
    (rule,) = of_kind(docs, "PrometheusRule")
    jobs = monitor_jobs(docs)
    for values_key, job in EXPORTERS.items():  # exporters the user runs: their jobs, as values name them
        if values_key in overrides:
            jobs[job] = job
    print(f"{environment}: scrape jobs {jobs}")
    check_selectors(alerts(rule["spec"]["groups"]), jobs, NAMESPACE)


def test_exporter_alerts_only_with_the_exporter():
    def names(overrides):
        (rule,) = of_kind(render("prod", overrides), "PrometheusRule")
        return {r["alert"] for r in alerts(rule["spec"]["groups"])}
    without, with_exporters = names({}), names(EXPORTERS)
    assert "CeleryWorkerDown" not in without and "ModerationRedisDown" not in without
    assert with_exporters - without == {"CeleryWorkerDown", "ModerationRedisDown"}
    assert {"ModerationAPIDown", "ModerationNoWorkerForModel", "ModerationQueueBacklog"} <= without


def test_monitors_and_rules_carry_the_labels_prometheus_selects_them_by():
    docs = render("prod", {"metrics.labels.release": "monitoring-stack", "metrics.labels.team": "trust"})
    objects = of_kind(docs, "ServiceMonitor") + of_kind(docs, "PodMonitor") + of_kind(docs, "PrometheusRule")
    assert len(objects) == 4
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["release"] == "monitoring-stack" and labels["team"] == "trust", obj["metadata"]["name"]
    for obj in of_kind(render("prod"), "PrometheusRule"):
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# The rendered rules on series as the Prometheus Operator labels them (job from the monitors, namespace).
RENDERED_RULE_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  # A pool at zero with an empty queue: nothing to alert about.
  - interval: 1m
    input_series:
      - series: 'moderation_queue_depth{{job="{api}", namespace="{ns}", pod="api-1", queue="moderation.default"}}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 15m
        alertname: ModerationNoWorkerForModel
        exp_alerts: []
  # Jobs waiting and no worker for 2 minutes: critical.
  - interval: 1m
    input_series:
      - series: 'moderation_queue_depth{{job="{api}", namespace="{ns}", pod="api-1", queue="moderation.default"}}'
        values: '0 0 7x20'
      - series: 'moderation_queue_depth{{job="{api}", namespace="{ns}", pod="api-1", queue="moderation.other"}}'
        values: '9x20'
      - series: 'moderation_worker_info{{job="{worker}", namespace="{ns}", pod="w-1", model="other", device="cpu"}}'
        values: '1x20'
    alert_rule_test:
      - eval_time: 3m
        alertname: ModerationNoWorkerForModel
        exp_alerts: []
      - eval_time: 10m
        alertname: ModerationNoWorkerForModel
        exp_alerts:
          - exp_labels: {{severity: critical, queue: moderation.default}}
  # An API target that cannot be scraped; another namespace's release is none of this one's business.
  - interval: 1m
    input_series:
      - series: 'up{{job="{api}", namespace="{ns}", pod="api-1", instance="10.0.0.1:5000"}}'
        values: '0x10'
      - series: 'up{{job="{api}", namespace="elsewhere", pod="api-1", instance="10.0.9.1:5000"}}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: ModerationAPIDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: {api}, namespace: {ns}, pod: api-1, instance: "10.0.0.1:5000"}}
  # Failing jobs, counted from the worker pods.
  - interval: 1m
    input_series:
      - series: 'moderation_jobs_completed_total{{job="{worker}",namespace="{ns}",model="default",status="succeeded"}}'
        values: '0+9x40'
      - series: 'moderation_jobs_completed_total{{job="{worker}", namespace="{ns}", model="default", status="failed"}}'
        values: '0+1x40'
    alert_rule_test:
      - eval_time: 30m
        alertname: ModerationJobFailureRatioHigh
        exp_alerts:
          - exp_labels: {{severity: critical, model: default}}
"""


def test_rendered_alerts_fire_on_the_series_kubernetes_scrapes(tmp_path):
    promtool = require_tool("promtool", "prometheus")
    docs = render("prod", namespace=NAMESPACE)
    (rule,) = of_kind(docs, "PrometheusRule")
    rules_file = tmp_path / "rendered.yml"
    write_rules_for_promtool(rule["spec"]["groups"], rules_file)
    assert run([promtool, "check", "rules", str(rules_file)]).returncode == 0
    jobs = {kind: job for job, kind in monitor_jobs(docs).items()}
    tests_file = tmp_path / "rendered_test.yml"
    tests_file.write_text(RENDERED_RULE_TESTS.format(rules=json.dumps(str(rules_file)), ns=NAMESPACE,
                                                     api=jobs["api"], worker=jobs["worker"]))
    result = run([promtool, "test", "rules", str(tests_file)])
    assert result.returncode == 0, result.stdout + result.stderr
