"""The values schema refuses what the chart cannot honour (item 10): a misspelt key anywhere, values
outside what Kubernetes takes, and, in templates/validate.yaml, the combinations a JSON schema cannot
compare (duplicate worker names, a PDB as large as the Deployment, /readyz readiness with the default
model's pool at zero, a grace period past VISIBILITY_TIMEOUT). `config:` takes exactly the settings
shared/config.py reads, less credentials and what the chart sets itself.
"""

from __future__ import annotations

import copy
import json
import re

import jsonschema
import pytest
import yaml

from scripts.chart import CHART, ENVIRONMENTS, ROOT, refusal, values_file

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
# Set by the chart itself (or credentials, which go to the Secret): refused under config.
CHART_MANAGED = {"REDIS_URL", "CELERY_BROKER_URL", "API_KEYS", "WEBHOOK_SECRET", "MODELS", "MODEL_PATH",
                 "DEFAULT_MODEL", "WORKER_MODELS", "DEVICE", "TORCH_THREADS", "WORKER_PROCESSES",
                 "WORKER_METRICS_PORT", "WEBHOOK_ALLOWED_HOSTS", "WEBHOOK_CONCURRENCY"}
# Objects whose keys are Kubernetes' or the user's, not the chart's.
OPEN = re.compile(r"(^|\.)(podSecurityContext|containerSecurityContext|affinity|podAnnotations|podLabels|"
                  r"nodeSelector|annotations|labels|requests|limits)(\.|$)")


@pytest.mark.parametrize("overrides, message", [
    ({"api.replica": 5}, "Additional property replica is not allowed"),
    ({"topologySpread.whenUnsatisfiable": "Bogus"}, "whenUnsatisfiable"),
    ({"workers[0].name": "a", "workers[0].modelPath": "/m", "workers[0].device": "cpu",
      "workers[1].name": "a", "workers[1].modelPath": "/n", "workers[1].device": "cpu"},
     'workers: the name "a" is used twice'),
    ({"api.replicas": 1, "api.pdb.minAvailable": 1}, "api.pdb.minAvailable (1) must be below api.replicas (1)"),
    ({"api.readinessRequiresWorker": True}, "api.readinessRequiresWorker needs a pool of the default model"),
    ({"config.VISIBILITY_TIMEOUT": "10"}, "must be below config.VISIBILITY_TIMEOUT (10 s)"),
    ({"config.NO_SUCH_SETTING": "1"}, "Additional property NO_SUCH_SETTING is not allowed"),
    ({"config.MAX_QUEUE_DEPTH": "lots"}, "MAX_QUEUE_DEPTH"),
    ({"config.WORKER_MODELS": "default"}, "Additional property WORKER_MODELS is not allowed"),
    ({"workerDefaults.autoscaling.minReplica": 1}, "Additional property minReplica is not allowed"),
    ({"workers[0].modelpath": "/m"}, "modelpath"),
    ({"metrics.prometheusoperator": True}, "Additional property prometheusoperator is not allowed"),
    ({"webhooks.replica": 2}, "Additional property replica is not allowed"),
    ({"redis.internal.imag": "x"}, "Additional property imag is not allowed"),
    ({"images.api.digest": "sha256:abc"}, "digest"),
    ({"networkPolicy.apifrom[0].podSelector.x": "y"}, "Additional property apifrom is not allowed"),
], ids=["typo-api-replica", "bogus-when-unsatisfiable", "duplicate-worker-names", "pdb-blocks-drains",
        "readiness-needs-worker-at-zero", "visibility-below-grace", "unknown-setting", "non-numeric-setting",
        "chart-managed-setting", "typo-autoscaling", "typo-worker-entry", "typo-metrics", "typo-webhooks",
        "typo-redis-internal", "short-digest", "typo-network-policy"])
def test_the_chart_refuses(overrides, message):
    error = refusal("dev", overrides)
    assert message in error, error


def every_object(node, path: str = ""):
    """(dotted path, dict) for every mapping of a values tree (lists are left alone)."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from every_object(value, f"{path}.{key}" if path else key)


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_closed_object_refuses_an_unknown_key(environment):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key, value in yaml.safe_load(values_file(environment).read_text()).items():
        values[key] = {**values[key], **value} if isinstance(value, dict) and key in values else value
    validator = jsonschema.Draft7Validator(SCHEMA)
    assert not list(validator.iter_errors(values)), [e.message for e in validator.iter_errors(values)]
    checked = 0
    for path, _ in list(every_object(values)):
        if OPEN.search(path):
            continue
        typo = copy.deepcopy(values)
        target = typo
        for part in filter(None, path.split(".")):
            target = target[part]
        target["someTypo"] = 1
        assert list(validator.iter_errors(typo)), f"{path or 'the root'} takes an unknown key"
        checked += 1
    print(f"{environment}: {checked} objects refuse an unknown key")
    assert checked > 30


def settings_read_by_the_code() -> dict[str, str]:
    """Every variable shared/config.py reads -> how: int, float, flag or string."""
    source = (ROOT / "shared" / "config.py").read_text()
    kinds = {name: {"int": "int", "float": "float", "flag": "flag"}.get(helper, "string")
             for helper, name in re.findall(r'_([a-z_]+)\(env, "([A-Z][A-Z0-9_]*)"', source)}
    kinds.update({name: "string" for name in re.findall(r'env\.get\("([A-Z][A-Z0-9_]*)"', source) if name not in kinds})
    return kinds


def test_config_takes_exactly_the_settings_the_code_reads():
    code = settings_read_by_the_code()
    assert {"VISIBILITY_TIMEOUT", "REDIS_URL", "SAFE_LABELS"} <= set(code)
    expected = {name: kind for name, kind in code.items() if name not in CHART_MANAGED} | {"LOG_LEVEL": "string"}
    schema = SCHEMA["properties"]["config"]
    assert schema["additionalProperties"] is False
    declared = schema["properties"]
    missing, unread = sorted(set(expected) - set(declared)), sorted(set(declared) - set(expected))
    assert not missing and not unread, (f"values.schema.json config: settings the code reads but the schema refuses "
                                        f"{missing}; keys no code reads {unread}")
    json_types = {"int": "integer", "float": "number", "flag": "boolean"}
    for name, kind in expected.items():
        if kind in json_types:
            assert json_types[kind] in declared[name]["type"], f"{name} is read as {kind}: {declared[name]}"
    for name in CHART_MANAGED:
        assert "Additional property" in refusal("dev", {f"config.{name}": "x"})


def test_a_redis_cluster_store_needs_a_separate_broker():
    if "REDIS_CLUSTER" not in settings_read_by_the_code():
        pytest.skip("shared/config.py has no REDIS_CLUSTER")
    assert "broker.kind rabbitmq" in refusal("dev", {"config.REDIS_CLUSTER": "true"})
