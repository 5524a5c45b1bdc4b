"""Staging rehearses prod (item 9): what prod runs (KEDA's `http` protocol, spread, network policies,
monitors) has run in staging first; no values file asks for something the chart silently changes (a
minReplicas that renders as 0); and `amqp` with a pool at zero, which the chart advises against
(KEDA would not see the messages a worker holds), is refused rather than rendered.
"""

from __future__ import annotations

import pytest
import yaml

from scripts.chart import CHART, ENVIRONMENTS, of_kind, refusal, render, values_file


def merged(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def values_of(environment: str) -> dict:
    return merged(yaml.safe_load((CHART / "values.yaml").read_text()),
                  yaml.safe_load(values_file(environment).read_text()))


def shape(environment: str) -> dict:
    """What the environment runs, less its sizes and names."""
    docs = render(environment)
    (api,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-api")]
    triggers = {(t["type"], t["metadata"].get("protocol"), t["metadata"].get("mode"))
                for s in of_kind(docs, "ScaledObject") for t in s["spec"]["triggers"]}
    spread = [{k: v for k, v in c.items() if k != "labelSelector"}
              for c in api["spec"]["template"]["spec"]["topologySpreadConstraints"]]
    return {"kinds": sorted({d["kind"] for d in docs}), "triggers": triggers, "spread": spread,
            "policies": sorted(p["metadata"]["name"] for p in of_kind(docs, "NetworkPolicy")),
            "api port restricted": [bool(r.get("from")) for p in of_kind(docs, "NetworkPolicy")
                                    if p["metadata"]["name"].endswith("-api") for r in p["spec"]["ingress"]],
            "monitor labels": sorted({k for d in of_kind(docs, "ServiceMonitor") for k in d["metadata"]["labels"]}),
            "secret": bool(of_kind(docs, "Secret"))}


def test_staging_runs_what_prod_runs():
    staging, prod = shape("staging"), shape("prod")
    assert staging == prod, {key: (staging[key], prod[key]) for key in staging if staging[key] != prod[key]}
    assert prod["triggers"] == {("rabbitmq", "http", "QueueLength")}


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_each_pool_renders_the_floor_its_values_ask_for(environment):
    values = values_of(environment)
    docs = render(environment)
    scaled = {s["metadata"]["name"]: s["spec"] for s in of_kind(docs, "ScaledObject")}
    for entry in values["workers"]:
        autoscaling = merged(values["workerDefaults"]["autoscaling"], entry.get("autoscaling", {}))
        spec = scaled[f"moderation-worker-{entry['name']}"]
        assert spec["minReplicaCount"] == autoscaling["minReplicas"], \
            f"{environment} {entry['name']}: minReplicas {autoscaling['minReplicas']} renders as " \
            f"{spec['minReplicaCount']}"
        assert spec["maxReplicaCount"] == autoscaling["maxReplicas"]


def test_staging_keeps_a_worker_up():
    for spec in (s["spec"] for s in of_kind(render("staging"), "ScaledObject")):
        assert spec["minReplicaCount"] >= 1


def test_amqp_with_a_pool_at_zero_is_refused():
    message = refusal("dev", {"broker.kind": "rabbitmq", "broker.rabbitmq.url": "amqp://u:p@rabbitmq:5672/%2F",
                              "broker.rabbitmq.protocol": "amqp"})
    assert "minReplicas 0 with broker.rabbitmq.protocol amqp" in message
    # The same with a worker kept up renders.
    render("dev", {"broker.kind": "rabbitmq", "broker.rabbitmq.url": "amqp://u:p@rabbitmq:5672/%2F",
                   "broker.rabbitmq.protocol": "amqp", "workerDefaults.autoscaling.minReplicas": 1})


def test_scale_to_zero_is_minreplicas_zero_and_nothing_else():
    """One knob: the former `scaleToZero: true` beside `minReplicas: 1` was the silent 0."""
    assert "scaleToZero" in refusal("dev", {"workerDefaults.autoscaling.scaleToZero": True})
