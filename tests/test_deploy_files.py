"""Checks of the deployment files: docker-compose.yaml, docker/*.Dockerfile, prometheus.yml,
prometheus/alerts.yml and grafana/.

Needs docker-compose (Debian package `docker-compose`, 1.29) and promtool (Debian package
`prometheus`). Without them these tests fail rather than skip: `make test` installs both
(scripts/system_deps.sh), and a skipped check would let a broken file through unnoticed.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import Histogram

from shared import metrics as m
from tests.promql_names import grafana_variable_expr, metric_names

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yaml"
PROMETHEUS_CONFIG = ROOT / "prometheus.yml"
ALERT_RULES = ROOT / "prometheus" / "alerts.yml"
DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"
GRAFANA_PROVISIONING = ROOT / "grafana" / "provisioning"
API_DOCKERFILE = ROOT / "docker" / "api.Dockerfile"
WORKER_DOCKERFILE = ROOT / "docker" / "worker.Dockerfile"

# The service's histograms: their _bucket/_sum/_count series are exported too.
# test_declared_histograms_match_the_code keeps this list honest.
HISTOGRAMS = frozenset({m.HTTP_REQUEST_DURATION_SECONDS, m.QUEUE_WAIT_SECONDS, m.INFERENCE_DURATION_SECONDS,
                        m.BATCH_SIZE, m.BATCH_TOKENS, m.JOB_SLICES, m.JOB_LATENCY_SECONDS})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Metrics of the other exporters that the dashboards and rules may use. Small on purpose: add a
# name here only after checking the exporter's documentation.
# danihodovic/celery-exporter, docs/deployment.md "Metrics" table (celery_task_runtime is a histogram).
CELERY_EXPORTER_METRICS = frozenset({
    "celery_task_sent_total", "celery_task_received_total", "celery_task_started_total",
    "celery_task_succeeded_total", "celery_task_failed_total", "celery_task_rejected_total",
    "celery_task_revoked_total", "celery_task_retried_total", "celery_worker_up",
    "celery_worker_tasks_active", "celery_task_runtime_bucket", "celery_task_runtime_sum",
    "celery_task_runtime_count", "celery_queue_length", "celery_active_consumer_count",
    "celery_active_worker_count", "celery_active_process_count",
})
# oliver006/redis_exporter.
REDIS_EXPORTER_METRICS = frozenset({"redis_up", "redis_connected_clients", "redis_memory_used_bytes"})
# Series Prometheus itself writes for every scrape target.
PROMETHEUS_METRICS = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


def exported_metric_names() -> frozenset[str]:
    names = set(m.ALL_METRICS)
    names.update(h + suffix for h in HISTOGRAMS for suffix in HISTOGRAM_SUFFIXES)
    return frozenset(names)


ALLOWED_METRICS = exported_metric_names() | CELERY_EXPORTER_METRICS | REDIS_EXPORTER_METRICS | PROMETHEUS_METRICS


# --------------------------------------------------------------------------------------------
# helpers


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: install the Debian package {package!r} "
                    f"(apt-get install -y {package}); `make test` does that as root (scripts/system_deps.sh)")
    return path


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (f"{' '.join(result.args)} exited {result.returncode}\n"
                                    f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # safe_load resolves the `<<:` merge keys


def load_rules() -> dict:
    return yaml.safe_load(ALERT_RULES.read_text())


def write_rules_for_promtool(groups: list[dict], path) -> None:
    """The rule groups, written without annotations: the unit tests give no exp_annotations, which promtool compares."""
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path.write_text(yaml.safe_dump({"groups": groups}))


def alert_rules() -> list[dict]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"] if "alert" in rule]


def dashboards() -> list[tuple[str, dict]]:
    files = sorted(DASHBOARDS_DIR.glob("*.json"))
    assert files, f"no dashboards in {DASHBOARDS_DIR}"
    return [(path.name, json.loads(path.read_text())) for path in files]


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def dashboard_exprs(dashboard: dict) -> list[str]:
    """Every panel query (targets' `expr`) and the PromQL inside every query variable."""
    exprs = [node["expr"] for node in _walk(dashboard.get("panels", []))
             if isinstance(node.get("expr"), str) and node["expr"].strip()]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query.get("query", "") if isinstance(query, dict) else query
        inner = grafana_variable_expr(query)
        if inner.strip():
            exprs.append(inner)
    return exprs


def all_exprs() -> list[tuple[str, str]]:
    """(where, expr) for the alert rules and the dashboards."""
    found = [(f"alerts.yml:{rule['alert']}", rule["expr"]) for rule in alert_rules()]
    for name, dashboard in dashboards():
        found += [(f"{name}", expr) for expr in dashboard_exprs(dashboard)]
    return found


def dockerfile_stages(path: Path) -> list[dict]:
    """[{"name": ..., "instructions": [(KEYWORD, args), ...]}] with continuations joined; a stage
    FROM an earlier one starts with that one's instructions."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        current += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    stages: list[dict] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            # A stage built FROM an earlier stage inherits its instructions (ENV, USER, HEALTHCHECK...).
            parent = next((stage for stage in stages if stage["name"] == args.split()[0]), None)
            stages.append({"name": match.group(1) if match else str(len(stages)),
                           "instructions": list(parent["instructions"]) if parent else []})
        elif stages:
            stages[-1]["instructions"].append((keyword, args))
    assert stages, f"no FROM in {path}"
    return stages


def installs_worker_stack(stage: dict) -> bool:
    """Does the stage bring in requirements/worker.txt or `pip install ... torch`?"""
    for keyword, args in stage["instructions"]:
        if keyword in ("RUN", "COPY", "ADD") and "worker.txt" in args:
            return True
        if keyword == "RUN" and re.search(r"pip install[^&;|]*\btorch\b", args):
            return True
    return False


# --------------------------------------------------------------------------------------------
# (a) docker-compose.yaml and the images


def test_compose_config_is_valid():
    compose = require_tool("docker-compose", "docker-compose")
    assert_ok(run([compose, "-f", str(COMPOSE_FILE), "config", "-q"]))
    assert_ok(run([compose, "-f", str(COMPOSE_FILE), "--profile", "gpu", "config", "-q"]))


def test_compose_file_has_no_version_key():
    # The Compose Specification dropped it; docker compose v2 warns about it and 1.29 does not
    # need it (see the comment at the top of docker-compose.yaml).
    assert "version" not in load_compose()


def test_compose_has_the_expected_services():
    services = load_compose()["services"]
    assert {"redis", "api", "worker", "worker-gpu", "prometheus", "celery-exporter", "redis-exporter",
            "grafana"} <= set(services)


def test_every_service_has_a_healthcheck():
    for name, service in load_compose()["services"].items():
        healthcheck = service.get("healthcheck")
        assert healthcheck and healthcheck.get("test"), f"service {name} has no healthcheck"
        assert not healthcheck.get("disable"), f"service {name} disables its healthcheck"


def test_the_cluster_profile_is_an_optional_redis_cluster():
    """`--profile cluster`: six Redis Cluster nodes (three masters, three replicas) and the service that forms
    the cluster once they answer; nothing of the default stack depends on them."""
    compose = require_tool("docker-compose", "docker-compose")
    assert_ok(run([compose, "-f", str(COMPOSE_FILE), "--profile", "cluster", "config", "-q"]))
    services = load_compose()["services"]
    nodes = sorted(name for name in services if re.fullmatch(r"redis-cluster-\d+", name))
    assert len(nodes) == 6, nodes
    for name in [*nodes, "redis-cluster-init"]:
        assert services[name].get("profiles") == ["cluster"], name
    for name in nodes:
        command = " ".join(services[name]["command"])
        assert "--cluster-enabled yes" in command and "--appendonly yes" in command, name
    init = services["redis-cluster-init"]
    conditions = {name: dep["condition"] for name, dep in init["depends_on"].items()}
    assert conditions == dict.fromkeys(nodes, "service_healthy")
    assert "--cluster-replicas 1" in " ".join(init["command"])
    for name, service in services.items():
        if "cluster" not in service.get("profiles", []):
            assert not any(dep.startswith("redis-cluster") for dep in service.get("depends_on", {})), name


def test_worker_scales_without_port_clashes():
    services = load_compose()["services"]
    for name in ("worker", "worker-gpu"):
        assert "ports" not in services[name], f"{name} publishes host ports; --scale {name}=N would clash"
        assert "container_name" not in services[name], f"{name} has a fixed container_name; cannot scale"


def test_gpu_worker_is_optional_and_pinned_to_one_gpu():
    service = load_compose()["services"]["worker-gpu"]
    assert "gpu" in service.get("profiles", [])
    assert service["environment"]["DEVICE"] == "cuda"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    # `count: 1` gives every replica the same first GPU; one service per GPU, pinned by id.
    assert all("count" not in d and len(d.get("device_ids", [])) == 1 for d in devices), devices


def config_variables() -> set[str]:
    """Every environment variable shared/config.py reads."""
    source = (ROOT / "shared" / "config.py").read_text()
    return set(re.findall(r'env\.get\("([A-Z][A-Z0-9_]+)"', source)) | set(
        re.findall(r'_(?:int|float|number|port_range|rate_limiter|flag)\(env, "([A-Z][A-Z0-9_]+)"', source))


def test_compose_passes_every_setting_to_the_api_and_the_workers():
    variables = config_variables()
    assert {"REDIS_URL", "VISIBILITY_TIMEOUT", "SAFE_LABELS", "WORKER_METRICS_PORT"} <= variables
    services = load_compose()["services"]
    # Settings of the worker process alone; the API never reads them.
    worker_only = {"DEVICE", "TORCH_THREADS", "WORKER_PROCESSES", "WORKER_METRICS_PORT"}
    assert worker_only <= variables
    for name in ("api", "worker", "worker-gpu"):
        wanted = variables - worker_only if name == "api" else variables
        missing = wanted - set(services[name]["environment"])
        assert not missing, f"{name} does not get {sorted(missing)} from the shell or .env"
    for name in ("api", "worker"):
        assert "LOG_LEVEL" in services[name]["environment"]


def test_empty_pass_throughs_only_for_settings_where_empty_means_the_default():
    # shared/config.py treats an empty value as unset; gunicorn_conf.py and others do not.
    passed_empty = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):-\}", COMPOSE_FILE.read_text()))
    assert passed_empty and passed_empty <= config_variables(), passed_empty - config_variables()


def test_every_worker_replica_has_a_cpu_limit_and_matching_threads():
    services = load_compose()["services"]
    for name in ("worker", "worker-gpu"):
        service = services[name]
        assert service.get("cpus"), f"{name} has no cpus limit: N replicas would each use every core"
        assert service["environment"]["WORKER_PROCESSES"] == "1"
        assert service["environment"]["TORCH_THREADS"], f"{name} leaves TORCH_THREADS unset"
    compose_text = COMPOSE_FILE.read_text()
    assert "${WORKER_CPUS:-2}" in compose_text and "${TORCH_THREADS:-2}" in compose_text


def test_compose_names_the_api_key_header_the_api_accepts():
    text = COMPOSE_FILE.read_text()
    assert "X-API-Key" not in text
    assert "Authorization: Bearer" in text
    assert "Authorization" in (ROOT / "api" / "auth.py").read_text()


def test_healthchecks_mean_ready():
    services = load_compose()["services"]
    # The worker: a fresh heartbeat, which starts only once Celery consumes its queues.
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "python", "-m", "worker.healthcheck"]
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    for dockerfile, needle in ((WORKER_DOCKERFILE, "worker.healthcheck"), (API_DOCKERFILE, "/healthz")):
        final = dockerfile_stages(dockerfile)[-1]["instructions"]
        checks = [args for keyword, args in final if keyword == "HEALTHCHECK"]
        assert checks and needle in checks[-1], f"{dockerfile.name} has no HEALTHCHECK using {needle}"


@pytest.mark.parametrize("dockerfile", [API_DOCKERFILE, WORKER_DOCKERFILE], ids=lambda p: p.name)
def test_images_build_offline_with_any_builder(dockerfile):
    """Base image, pip CA and wheelhouse are build arguments; nothing needs BuildKit or a registry
    beyond the base image (docker-compose 1.29 builds with the classic builder)."""
    text = dockerfile.read_text()
    assert not re.search(r"^RUN --mount", text, re.MULTILINE) and not re.search(r"^#\s*syntax=", text, re.MULTILINE)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    assert re.search(r"^ARG BUILD_EXTRAS=docker/build-extras$", text, re.MULTILINE)
    assert "COPY ${BUILD_EXTRAS}/ /tmp/build-extras/" in text
    # Every pip install goes through docker/setup.sh, which uses the CA and the wheelhouse.
    assert not re.search(r"^RUN[^\n]*\bpip install", text, re.MULTILINE)
    setup = (ROOT / "docker" / "setup.sh").read_text()
    assert "PIP_CERT" in setup and "PIP_FIND_LINKS" in setup and "apt_install python3" in setup
    # Code comes in generically (so new packages and static files land without edits), minus the extras.
    assert "COPY . /app" in text and "rm -rf /app/docker/build-extras" in text


def test_build_extras_stay_out_of_git():
    ignored = run(["git", "check-ignore", "docker/build-extras/ca.crt", "docker/build-extras/wheels/x.whl"])
    assert ignored.stdout.split() == ["docker/build-extras/ca.crt", "docker/build-extras/wheels/x.whl"]
    assert (ROOT / "docker" / "build-extras" / "README.md").is_file()


def test_container_test_override_is_valid():
    compose = require_tool("docker-compose", "docker-compose")
    env = {**os.environ, "TEST_BASE_IMAGE": "base", "TEST_REDIS_PORT": "1", "TEST_API_PORT": "2",
           "TEST_PROMETHEUS_PORT": "3", "TEST_PROMETHEUS_CONFIG": "/tmp/p.yml", "TEST_WORKER_METRICS_PORTS": "4-6"}
    result = run([compose, "-f", str(COMPOSE_FILE), "-f", "tests/containers/compose.override.yaml", "config"],
                 env=env)
    assert_ok(result)
    services = yaml.safe_load(result.stdout)["services"]
    for name in ("redis", "api", "worker", "prometheus"):
        assert services[name]["network_mode"] == "host", name
    assert services["worker"]["environment"]["WORKER_METRICS_PORT"] == "4-6"
    assert services["worker"]["build"]["args"]["PYTHON_IMAGE"] == "base"


def test_redis_persists_with_aof():
    redis = load_compose()["services"]["redis"]
    command = redis["command"]
    command = " ".join(command) if isinstance(command, list) else command
    assert re.search(r"--appendonly\s+yes", command)
    assert any(str(volume).endswith(":/data") for volume in redis.get("volumes", []))


def test_api_depends_on_healthy_redis():
    services = load_compose()["services"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_api_image_has_no_torch():
    stages = dockerfile_stages(API_DOCKERFILE)
    final = stages[-1]
    torch_stages = {stage["name"] for stage in stages if installs_worker_stack(stage)}
    assert not installs_worker_stack(final), "the API's final stage installs worker requirements/torch"
    assert not any(keyword == "RUN" and "pip install" in args for keyword, args in final["instructions"]), \
        "the API's final stage runs pip install; install into the builder's venv instead"
    venv_sources = []
    for keyword, args in final["instructions"]:
        match = re.search(r"--from=(\S+)\s+(\S+)", args) if keyword == "COPY" else None
        if not match:
            continue
        source_stage, source_path = match.groups()
        if source_stage in torch_stages:
            assert not re.search(r"venv|site-packages|/usr/local/lib/python", source_path), \
                f"the API image copies {source_path} from stage {source_stage}, which has torch"
        if "venv" in source_path:
            venv_sources.append(source_stage)
    assert venv_sources, "the API image copies no venv from a builder stage"
    for name in venv_sources:
        builder = next(stage for stage in stages if stage["name"] == name)
        assert name not in torch_stages, f"the API's venv comes from {name}, which installs torch"
        assert any("api.txt" in args for _, args in builder["instructions"]), \
            f"the API's venv stage {name} does not install requirements/api.txt"


def test_worker_image_installs_worker_requirements_and_bundles_the_model():
    stages = dockerfile_stages(WORKER_DOCKERFILE)
    text = " ".join(args for stage in stages for _, args in stage["instructions"])
    assert "worker.txt" in text
    assert "python -m model.build --output /opt/models/moderation-minilm" in text
    final_env = " ".join(args for keyword, args in stages[-1]["instructions"] if keyword == "ENV")
    assert "MODEL_PATH=/opt/models/moderation-minilm" in final_env


@pytest.mark.parametrize("dockerfile", [API_DOCKERFILE, WORKER_DOCKERFILE], ids=lambda p: p.name)
def test_images_are_multistage_non_root_and_exec_form(dockerfile):
    stages = dockerfile_stages(dockerfile)
    assert len(stages) >= 2, "expected a builder stage and a runtime stage"
    assert all(re.search(r"python:3\.11-slim", line) for line in
               re.findall(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile.read_text(), re.MULTILINE)), \
        "base image must be python:3.11-slim"
    final = stages[-1]["instructions"]
    users = [args.strip() for keyword, args in final if keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), "the final stage must switch to a non-root USER"
    entrypoints = [args for keyword, args in final if keyword == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT"
    entrypoint = json.loads(entrypoints[-1])  # exec (JSON) form: the process gets SIGTERM itself
    assert isinstance(entrypoint, list)
    if entrypoint[:2] == ["/bin/sh", "-c"]:
        assert 'exec "$@"' in entrypoint[2], "a shell entrypoint must exec the real process"


def test_dockerignore_keeps_local_state_out_of_the_context():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "build"):
        assert entry in ignored


# --------------------------------------------------------------------------------------------
# (b) Prometheus configuration and rules


def test_prometheus_config_is_valid():
    promtool = require_tool("promtool", "prometheus")
    assert_ok(run([promtool, "check", "config", "prometheus.yml"]))


def test_alert_rules_are_valid():
    promtool = require_tool("promtool", "prometheus")
    assert_ok(run([promtool, "check", "rules", "prometheus/alerts.yml"]))


def test_prometheus_finds_every_worker_through_dns():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["prometheus/alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    dns = [sd for sd in jobs["worker"]["dns_sd_configs"]]
    assert any({"worker", "worker-gpu"} <= set(sd["names"]) and sd["type"] == "A" and sd["port"] == 9101
               for sd in dns)
    targets = {t for job in jobs.values() for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert {"api:5000", "celery-exporter:9808", "redis-exporter:9121"} <= targets


def test_compose_mounts_the_rules_where_prometheus_yml_expects_them():
    volumes = load_compose()["services"]["prometheus"]["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    assert "./prometheus:/etc/prometheus/prometheus:ro" in volumes


def test_every_alert_has_for_severity_and_annotations():
    rules = alert_rules()
    assert len(rules) >= 5
    for rule in rules:
        assert rule.get("for"), f"{rule['alert']} has no `for:`"
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), rule["alert"]
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]


def test_required_alerts_exist():
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    joined = "\n".join(exprs.values())
    assert m.QUEUE_DEPTH in joined
    assert f"{m.QUEUE_WAIT_SECONDS}_bucket" in joined and "histogram_quantile" in joined
    assert m.WORKER_INFO in joined
    assert re.search(re.escape(m.JOBS_COMPLETED_TOTAL) + r'\{status="failed"', joined)
    assert re.search(re.escape(m.HTTP_REQUESTS_TOTAL) + r'\{status=~"5\.\."', joined)
    assert m.QUEUE_PARKED_MESSAGES in exprs["ModerationMessagesParked"]


# Alert behaviour, checked with `promtool test rules` on a copy of the rules without annotations
# (promtool compares annotations verbatim; their wording is not what these tests are about).
ALERT_UNIT_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  # Jobs waiting in a queue whose model no worker serves fire; the served one does not
  # (tests/test_chart_alerts.py: an empty queue without a worker, a pool at zero, does not either).
  - interval: 1m
    input_series:
      - series: 'moderation_queue_depth{{job="api", queue="moderation.default"}}'
        values: '5x10'
      - series: 'moderation_queue_depth{{job="api", queue="moderation.other"}}'
        values: '5x10'
      - series: 'moderation_worker_info{{job="worker", instance="w1:9101", model="default", device="cpu", version="1"}}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: ModerationNoWorkerForModel
        exp_alerts:
          - exp_labels: {{severity: critical, queue: moderation.other}}
  # Deep queue for longer than `for:`.
  - interval: 1m
    input_series:
      - series: 'moderation_queue_depth{{job="api", queue="moderation.default"}}'
        values: '5000x20'
    alert_rule_test:
      - eval_time: 5m
        alertname: ModerationQueueBacklog
        exp_alerts: []
      - eval_time: 15m
        alertname: ModerationQueueBacklog
        exp_alerts:
          - exp_labels: {{severity: warning, queue: moderation.default}}
  # 10% of jobs fail.
  - interval: 1m
    input_series:
      - series: 'moderation_jobs_completed_total{{job="worker", model="default", status="succeeded"}}'
        values: '0+9x40'
      - series: 'moderation_jobs_completed_total{{job="worker", model="default", status="failed"}}'
        values: '0+1x40'
    alert_rule_test:
      - eval_time: 30m
        alertname: ModerationJobFailureRatioHigh
        exp_alerts:
          - exp_labels: {{severity: critical, model: default}}
  # 503s from /readyz alone do not count as API errors; 5xx elsewhere do.
  - interval: 1m
    input_series:
      - series: 'moderation_http_requests_total{{job="api", endpoint="/readyz", method="GET", status="503"}}'
        values: '0+100x20'
      - series: 'moderation_http_requests_total{{job="api", endpoint="/v1/moderations", method="POST", status="200"}}'
        values: '0+10x20'
    alert_rule_test:
      - eval_time: 15m
        alertname: ModerationAPIErrorRatioHigh
        exp_alerts: []
  - interval: 1m
    input_series:
      - series: 'moderation_http_requests_total{{job="api", endpoint="/v1/moderations", method="POST", status="500"}}'
        values: '0+5x20'
      - series: 'moderation_http_requests_total{{job="api", endpoint="/v1/moderations", method="POST", status="200"}}'
        values: '0+10x20'
    alert_rule_test:
      - eval_time: 15m
        alertname: ModerationAPIErrorRatioHigh
        exp_alerts:
          - exp_labels: {{severity: critical}}
  # Parked messages the reconciler does not settle fire after 5 minutes; a blip does not.
  - interval: 1m
    input_series:
      - series: 'moderation_queue_parked_messages{{job="api", queue="moderation.default"}}'
        values: '0 3 0x3 2x10'
    alert_rule_test:
      - eval_time: 4m
        alertname: ModerationMessagesParked
        exp_alerts: []
      - eval_time: 12m
        alertname: ModerationMessagesParked
        exp_alerts:
          - exp_labels: {{severity: warning, queue: moderation.default}}
  # p95 queue wait of about 10 s.
  - interval: 1m
    input_series:
      - series: 'moderation_queue_wait_seconds_bucket{{job="worker", instance="w1:9101", model="default", le="5"}}'
        values: '0+1x30'
      - series: 'moderation_queue_wait_seconds_bucket{{job="worker", instance="w1:9101", model="default", le="10"}}'
        values: '0+100x30'
      - series: 'moderation_queue_wait_seconds_bucket{{job="worker", instance="w1:9101", model="default", le="+Inf"}}'
        values: '0+100x30'
    alert_rule_test:
      - eval_time: 25m
        alertname: ModerationQueueWaitHigh
        exp_alerts:
          - exp_labels: {{severity: warning, model: default}}
"""


def test_alerts_fire_when_they_should(tmp_path):
    promtool = require_tool("promtool", "prometheus")
    rules_file = tmp_path / "alerts.yml"
    write_rules_for_promtool(load_rules()["groups"], rules_file)
    tests_file = tmp_path / "alerts_test.yml"
    tests_file.write_text(ALERT_UNIT_TESTS.format(rules=json.dumps(str(rules_file))))
    assert_ok(run([promtool, "test", "rules", str(tests_file)]))


# --------------------------------------------------------------------------------------------
# (c) every PromQL expression uses metrics that exist


def test_extractor_finds_metric_names():
    assert metric_names(
        'histogram_quantile(0.95, sum by (model, le) (rate(moderation_queue_wait_seconds_bucket'
        '{model=~"$model", le!="+Inf"}[$__rate_interval]))) > 5'
    ) == {"moderation_queue_wait_seconds_bucket"}
    assert metric_names(
        'count by (queue) (a_metric) unless on (queue) '
        'label_replace(count by (model) (b_metric), "queue", "x.$1", "model", "(.+)") offset 5m'
    ) == {"a_metric", "b_metric"}
    assert metric_names('sum without (instance) (rate(c:recorded[5m] @ start())) / ignoring (x) group_left d') \
        == {"c:recorded", "d"}
    assert grafana_variable_expr("label_values(moderation_worker_info, model)") == "moderation_worker_info"


def test_check_catches_an_unknown_metric():
    bogus = ('sum(rate(moderation_jobs_finished_total{status="failed"}[5m]))'
             ' / sum(rate(moderation_jobs_completed_total[5m]))')
    assert metric_names(bogus) - ALLOWED_METRICS == {"moderation_jobs_finished_total"}
    # A misspelt function is caught as well.
    assert metric_names("sum(rat(moderation_jobs_completed_total[5m]))") - ALLOWED_METRICS == {"rat"}
    # So is a histogram suffix on a metric that is not a histogram.
    assert metric_names("moderation_queue_depth_bucket") - ALLOWED_METRICS == {"moderation_queue_depth_bucket"}


def test_dashboards_and_alerts_use_only_exported_metrics():
    unknown = {}
    exprs = all_exprs()
    assert len(exprs) > 10
    for where, expr in exprs:
        missing = metric_names(expr) - ALLOWED_METRICS
        if missing:
            unknown.setdefault(where, set()).update(missing)
    assert not unknown, f"metric names no code exports (see shared/metrics.py): {unknown}"


def test_dashboards_cover_every_service_metric():
    used = set()
    for _, dashboard in dashboards():
        for expr in dashboard_exprs(dashboard):
            used |= metric_names(expr)
    base_names = {name.removesuffix(suffix) for name in used for suffix in HISTOGRAM_SUFFIXES
                  if name.endswith(suffix)} | used
    missing = set(m.ALL_METRICS) - base_names
    assert not missing, f"metrics without a dashboard panel: {sorted(missing)}"


def test_dashboard_expressions_are_valid_promql(tmp_path):
    """promtool parses each dashboard query (Grafana's variables replaced) as a recording rule."""
    promtool = require_tool("promtool", "prometheus")
    rules = []
    for name, dashboard in dashboards():
        for i, expr in enumerate(dashboard_exprs(dashboard)):
            expr = re.sub(r"\$__(rate_)?interval", "1m", expr).replace("$__range", "1h")
            expr = re.sub(r"\$\{\w+\}|\$\w+", ".*", expr)
            rules.append({"record": f"dashboard:{re.sub(r'[^a-z0-9]', '_', name)}:{i}", "expr": expr})
    rules_file = tmp_path / "dashboard_exprs.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    assert_ok(run([promtool, "check", "rules", str(rules_file)]))


@pytest.mark.parametrize("module_name, group", [("worker.metrics", m.WORKER_METRICS), ("api.metrics", m.API_METRICS)])
def test_declared_histograms_match_the_code(module_name, group):
    if not (ROOT / Path(*module_name.split("."))).with_suffix(".py").exists():
        pytest.fail(f"{module_name} is missing: shared/metrics.py says the metric objects live there")
    module = importlib.import_module(module_name)
    histograms = {obj.describe()[0].name for obj in vars(module).values() if isinstance(obj, Histogram)}
    assert histograms & set(group) == HISTOGRAMS & set(group)


# --------------------------------------------------------------------------------------------
# Grafana provisioning


def test_grafana_provisioning_matches_the_dashboards():
    datasources = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())
    uids = {ds["uid"] for ds in datasources["datasources"]}
    assert any(ds["url"] == "http://prometheus:9090" for ds in datasources["datasources"])
    for name, dashboard in dashboards():
        used = {node["uid"] for node in _walk(dashboard) if node.get("type") == "prometheus" and "uid" in node}
        assert used <= uids, f"{name} refers to datasource uids {used - uids}"
        assert dashboard.get("uid"), f"{name} has no uid"
    providers = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "dashboards.yml").read_text())
    paths = {p["options"]["path"] for p in providers["providers"]}
    volumes = load_compose()["services"]["grafana"]["volumes"]
    mounted = {v.split(":")[1] for v in volumes if v.startswith("./grafana/dashboards:")}
    assert paths <= mounted, f"dashboard provider paths {paths} are not mounted ({mounted})"


def test_the_cpu_worker_image_has_no_torch_and_the_gpu_image_has():
    stages = {stage["name"]: stage for stage in dockerfile_stages(WORKER_DOCKERFILE)}
    final = dockerfile_stages(WORKER_DOCKERFILE)[-1]
    assert final["name"] == "cpu", "the default (last) stage is the lean CPU image"

    def venv_sources(stage: dict) -> list[str]:
        return [re.search(r"--from=(\S+)", args).group(1) for keyword, args in stage["instructions"]
                if keyword == "COPY" and "/opt/venv" in args]

    (cpu_venv,) = venv_sources(final)
    assert not installs_worker_stack(stages[cpu_venv]), f"the CPU image's venv ({cpu_venv}) installs torch"
    text = " ".join(args for _, args in stages[cpu_venv]["instructions"])
    assert "worker-runtime.txt" in text and "! pip show torch" in text
    runtime = (ROOT / "requirements" / "worker-runtime.txt").read_text()
    lines = [line.split("#")[0].strip() for line in runtime.splitlines()]
    assert not [line for line in lines if re.match(r"torch\b", line)]
    # The ONNX file it serves was exported at build time, in a stage with torch.
    assert any("--from=export" in args and "/opt/engine-cache" in args for _, args in final["instructions"])
    assert installs_worker_stack(stages["export"])
    (gpu_venv,) = venv_sources(stages["gpu"])
    assert installs_worker_stack(stages[gpu_venv])
    assert load_compose()["services"]["worker-gpu"]["build"]["target"] == "gpu"
