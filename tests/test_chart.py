"""The Helm chart, checked offline for every environment (deploy/helm/moderation/, docs/deployment.md "Kubernetes").

- `helm lint --strict` and `helm template` with each values-<env>.yaml (a real helm: scripts/helm.sh).
- Every rendered object against a schema: core kinds with kubernetes-validate (strict, the oldest
  Kubernetes the chart supports), KEDA's and the Prometheus Operator's kinds with cloudcoil's models
  (strict: a field the model drops is an error). A kind no validator knows fails the test.
- values.schema.json refuses bad values.
- Policy: trigger list / queue names come from shared/queues.py; the grace period covers the longest
  batch; ConfigMap keys are real settings; probes hit routes the API serves; every container has
  requests, limits and threads that agree; no credential outside the Secret.
"""

from __future__ import annotations

import json
import math

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as monitoring

import api
from scripts.chart import (
    CHART,
    ENVIRONMENTS,
    ROOT,
    configmap_data,
    containers,
    helm,
    of_kind,
    render,
    render_text,
    secret_data,
    values_file,
)
from shared.config import load_settings
from shared.queues import broker_lists, queue_for_model
from tests.test_deploy_files import config_variables
from worker.slices import batch_token_bound

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion).
OLDEST_KUBERNETES = "1.27.0"
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): monitoring.PodMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): monitoring.PrometheusRule,
}
# LOG_LEVEL is read by the API and worker entry points, everything else by shared/config.py.
REAL_SETTINGS = (config_variables() | {"LOG_LEVEL"}) - {name for name in config_variables() if name.startswith("TEST_")}
# The Secret's keys (credentials); the rest of the settings go to the ConfigMap.
SECRET_KEYS = {"REDIS_URL", "CELERY_BROKER_URL", "API_KEYS", "WEBHOOK_SECRET"}
# Keys only KEDA reads (TriggerAuthentication), never the service; and the dev Redis's own password.
KEDA_SECRET_KEYS = {"KEDA_REDIS_ADDRESS", "KEDA_REDIS_PASSWORD", "KEDA_RABBITMQ_HOST"}
NOT_SETTINGS = KEDA_SECRET_KEYS | {"REDIS_PASSWORD"}


@pytest.fixture(scope="module", params=ENVIRONMENTS)
def environment(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def docs(environment) -> list[dict]:
    return render(environment)


def model_workers(docs: list[dict]) -> list[dict]:
    return [doc for doc in of_kind(docs, "Deployment") if "moderation/model" in doc["metadata"]["labels"]]


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def strictly(model, doc: dict) -> None:
    """model_validate, then the round trip must give back every field: cloudcoil's models ignore
    unknown fields, so a misspelt key would otherwise pass."""
    dumped = model.model_validate(doc).model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped == doc, f"{doc['kind']} {doc['metadata']['name']}: fields the schema does not know:\n" \
                          f"rendered: {json.dumps(doc, sort_keys=True)}\nmodel:    {json.dumps(dumped, sort_keys=True)}"


# --------------------------------------------------------------------------------------------
# helm itself


def test_helm_lint_strict(environment):
    result = helm("lint", "--strict", str(CHART), "-f", str(values_file(environment)), check=False)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_helm_template_renders_the_expected_objects(environment, docs):
    kinds = sorted(doc["kind"] for doc in docs)
    print(f"{environment}: {len(docs)} objects: {', '.join(kinds)}")
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ServiceAccount"} <= set(kinds)
    assert model_workers(docs), "no worker Deployment"
    if environment == "dev":
        assert of_kind(docs, "StatefulSet") and of_kind(docs, "Secret")
    else:
        assert not of_kind(docs, "StatefulSet"), "only dev runs Redis in the chart"
        assert not of_kind(docs, "Secret"), f"{environment} reads its credentials from an existing Secret"


def test_every_rendered_object_passes_its_schema(environment, docs):
    counts: dict[str, int] = {}
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CUSTOM_KINDS:
            strictly(CUSTOM_KINDS[key], doc)
        else:
            try:
                kubernetes_validate.validate(doc, OLDEST_KUBERNETES, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"no validator knows {key} ({doc['metadata']['name']})")
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{key} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        counts[doc["kind"]] = counts.get(doc["kind"], 0) + 1
    print(f"{environment}: valid for Kubernetes {OLDEST_KUBERNETES}: {counts}")


def test_the_strict_check_catches_an_unknown_field():
    (scaled,) = of_kind(render("dev"), "ScaledObject")
    scaled["spec"]["minReplicas"] = 1  # KEDA's field is minReplicaCount
    with pytest.raises(AssertionError, match="fields the schema does not know"):
        strictly(keda.ScaledObject, scaled)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                                      "spec": {"portz": []}}, OLDEST_KUBERNETES, strict=True)


@pytest.mark.parametrize("overrides, message", [
    ({"api.replicas": "two"}, "api.replicas: Invalid type"),
    ({"broker.kind": "rabbitmq", "broker.rabbitmq.url": "kafka://broker:9092"}, "broker.rabbitmq.url"),
    ({"broker.kind": "kafka"}, "broker.kind"),
    ({"environment": "prod", "secrets.existingSecret": ""}, "existingSecret"),
    ({"config.API_KEYS": "secret-in-a-configmap"}, "config"),
    ({"workerDefaults.resources.limits.cpu": "1500m"}, "cpu"),
    ({"config.MAX_LONG_POLLS": "0"}, "MAX_LONG_POLLS"),
], ids=["string-replicas", "unknown-broker-scheme", "unknown-broker", "prod-without-secret",
        "credential-in-config", "fractional-worker-cpu", "no-long-polls"])
def test_values_schema_refuses_bad_values(overrides, message):
    args = [arg for key, value in overrides.items() for arg in ("--set-string", f"{key}={value}")]
    result = helm("template", "x", str(CHART), "-f", str(values_file("dev")), *args, check=False)
    assert result.returncode != 0, f"{overrides} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


# --------------------------------------------------------------------------------------------
# policy


def test_triggers_read_the_queue_the_project_publishes_to(environment, docs):
    workers = {doc["metadata"]["name"]: doc for doc in model_workers(docs)}
    scaled_objects = of_kind(docs, "ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled_objects} == set(workers), \
        "one ScaledObject per worker Deployment"
    for scaled in scaled_objects:
        (container,) = containers(workers[scaled["spec"]["scaleTargetRef"]["name"]])
        queue = queue_for_model(env_of(container)["WORKER_MODELS"])
        (trigger,) = scaled["spec"]["triggers"]
        if trigger["type"] == "redis":
            # Celery's Redis transport: priority-0 messages (every one this service sends) wait in the
            # plain list; tests/test_chart_autoscaling.py shows LLEN of it is the backlog.
            assert trigger["metadata"]["listName"] == queue == broker_lists(queue)[0]
        else:
            assert trigger["type"] == "rabbitmq"
            assert trigger["metadata"]["queueName"] == queue
            assert trigger["metadata"]["mode"] == "QueueLength"


def test_credentials_reach_keda_only_through_the_secret(environment, docs):
    auths = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "TriggerAuthentication")}
    secret_keys = set(secret_data(docs)) if of_kind(docs, "Secret") else SECRET_KEYS | KEDA_SECRET_KEYS
    for scaled in of_kind(docs, "ScaledObject"):
        (trigger,) = scaled["spec"]["triggers"]
        for key, value in trigger["metadata"].items():
            assert "@" not in value and "://" not in value and "password" not in key.lower(), \
                f"{scaled['metadata']['name']}: {key}={value!r} in the ScaledObject"
        auth = auths[trigger["authenticationRef"]["name"]]
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secret_keys, ref
    for config_key in configmap_data(docs):
        assert config_key not in SECRET_KEYS | NOT_SETTINGS, f"{config_key} is a credential in the ConfigMap"


def test_every_configmap_key_is_a_setting_the_code_reads(environment, docs):
    unknown = set(configmap_data(docs)) - REAL_SETTINGS
    assert not unknown, f"ConfigMap keys no code reads: {sorted(unknown)}"
    assert set(secret_data(docs)) - NOT_SETTINGS <= REAL_SETTINGS


def test_every_app_container_starts_with_valid_settings(environment, docs):
    config, secret = configmap_data(docs), secret_data(docs)
    if not secret:  # an existing Secret: the keys docs/deployment.md "Kubernetes" lists
        secret = {"REDIS_URL": "redis://redis:6379/0", "API_KEYS": "k", "WEBHOOK_SECRET": "s"}
    for deployment in of_kind(docs, "Deployment"):
        for container in containers(deployment):
            settings = load_settings({**config, **secret, **env_of(container)})
            if deployment in model_workers(docs):
                assert settings.worker_models == (env_of(container)["WORKER_MODELS"],)
                assert not settings.webhook_allowed_hosts, "model workers must not start their own deliverer"


def test_grace_period_covers_the_longest_batch_plus_drain(environment, docs):
    config = configmap_data(docs)
    for deployment in model_workers(docs):
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        settings = load_settings({**config, **env_of(container)})
        annotations = pod["metadata"]["annotations"]
        cpus = int(container["resources"]["limits"]["cpu"])
        longest_batch = (batch_token_bound(settings.slice_tokens)
                         * float(annotations["moderation/seconds-per-token-per-core"]) / cpus)
        needed = longest_batch + settings.batch_max_wait_ms / 1000 + float(annotations["moderation/drain-seconds"])
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        print(f"{deployment['metadata']['name']}: grace {grace} s >= batch {longest_batch:.1f} s + wait + drain")
        assert grace >= math.ceil(needed)
        # Redis redelivers an unacknowledged message after VISIBILITY_TIMEOUT: a worker still finishing
        # its batch within the grace period must not see its messages handed to another worker.
        assert grace < settings.visibility_timeout


def test_probes_hit_routes_the_api_serves(environment, docs, redis_server, tiny_multilabel_model):
    app = api.create_app(load_settings({"REDIS_URL": redis_server.url, "MODELS": f"default={tiny_multilabel_model}"}))
    adapter = app.url_map.bind("localhost")
    (deployment,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["labels"].get(
        "app.kubernetes.io/component") == "api"]
    (container,) = containers(deployment)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        http = container[probe]["httpGet"]
        adapter.match(http["path"], method="GET")  # raises NotFound for a path the API does not serve
        assert http["port"] in ports and ports[http["port"]] == int(env_of(container)["PORT"])
    for worker in model_workers(docs):
        (container,) = containers(worker)
        # Readiness: the heartbeat in Redis; startup and liveness: the process's metrics port
        # (tests/test_chart_probes.py runs them against a worker whose Redis is gone).
        assert container["readinessProbe"]["exec"]["command"] == ["python", "-m", "worker.healthcheck"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
        assert ports["metrics"] == int(env_of(container)["WORKER_METRICS_PORT"])


def test_every_container_has_requests_limits_and_matching_threads(environment, docs):
    pods = [d["spec"]["template"] for d in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet")]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            resources = container["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{container['name']}: {part}"
    for worker in model_workers(docs):
        (container,) = containers(worker)
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        # Guaranteed CPU: the threads run on cores that are the pod's own.
        assert str(requests["cpu"]) == str(limits["cpu"])
        assert env_of(container)["TORCH_THREADS"] == str(limits["cpu"])
        assert env_of(container)["WORKER_PROCESSES"] == "1"
        if env_of(container)["DEVICE"] == "cuda":
            assert int(limits["nvidia.com/gpu"]) >= 1


def test_long_polls_leave_api_threads_free(environment, docs):
    """Each long poll holds a gunicorn thread (docs/long-polls.md): the per-process cap stays below the threads."""
    config = configmap_data(docs)
    (deployment,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["labels"].get(
        "app.kubernetes.io/component") == "api"]
    (container,) = containers(deployment)
    env = env_of(container)
    settings = load_settings({**config, **env, "WEBHOOK_SECRET": "s"})  # staging/prod read theirs from a Secret
    assert settings.max_long_polls_per_key <= settings.max_long_polls < int(env["GUNICORN_THREADS"])


def test_a_long_poll_cap_that_takes_every_thread_is_refused():
    result = helm("template", "x", str(CHART), "-f", str(values_file("dev")), "--set", "api.gunicorn.threads=16",
                  check=False)
    assert result.returncode != 0, "MAX_LONG_POLLS=24 with 16 threads was accepted"
    assert "config.MAX_LONG_POLLS (24) must be below api.gunicorn.threads (16)" in result.stderr, result.stderr


def test_pods_are_non_root_read_only_tokenless_spread_and_budgeted(environment, docs):
    budgets = {json.dumps(p["spec"]["selector"]["matchLabels"], sort_keys=True)
               for p in of_kind(docs, "PodDisruptionBudget")}
    for deployment in of_kind(docs, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["topologySpreadConstraints"]
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
        component = deployment["spec"]["selector"]["matchLabels"]
        assert json.dumps(component, sort_keys=True) in budgets, f"no PDB for {deployment['metadata']['name']}"
    for account in of_kind(docs, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_monitoring_objects_come_from_the_repository_files():
    docs = render("prod")
    (rule,) = of_kind(docs, "PrometheusRule")
    # prometheus/alerts.yml, with its jobs made this release's (tests/test_chart_alerts.py checks those).
    source = yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())
    rendered = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    for group in source["groups"]:
        for original in group["rules"]:
            if 'exporter"' in original["expr"]:
                assert original["alert"] not in rendered, "no exporter is deployed: its alert cannot fire"
                continue
            expected = original["expr"].replace('job="api"', 'job="moderation-api", namespace="default"') \
                .replace('job="worker"', 'job="moderation-worker", namespace="default"')
            assert rendered[original["alert"]] == {**original, "expr": expected}
    dashboards = [d for d in of_kind(docs, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]
    sources = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
    assert len(dashboards) == len(sources)
    for source in sources:
        (dashboard,) = [d for d in dashboards if source.name in d["data"]]
        assert json.loads(dashboard["data"][source.name]) == json.loads(source.read_text())
    assert of_kind(docs, "ServiceMonitor") and of_kind(docs, "PodMonitor")
    assert "prometheus.io/scrape" not in render_text("dev", {"metrics.scrapeAnnotations": False})


def test_without_keda_a_cpu_hpa_scales_each_worker():
    docs = render("staging", {"workerDefaults.autoscaling.keda": False})
    assert not of_kind(docs, "ScaledObject") and not of_kind(docs, "TriggerAuthentication")
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 1
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
