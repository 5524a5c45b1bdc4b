"""KEDA on a real cluster (deploy/helm/moderation/templates/keda.yaml), checked on the rendered chart.

- KEDA's operator runs in its own namespace and resolves a short Service name there (KEDA issues
  #6247, #5442): every address it reads must be a name any namespace resolves. It reads them, and its
  credentials, from its own keys of the Secret (the chart's or `existingSecret`), never from values,
  so the app and KEDA cannot be pointed at two different servers.
- A metric source that fails must not freeze a pool (at zero for the GPU pool): `fallback`; and
  scale-down is tunable: the HPA `behavior`, for KEDA's HPA and the CPU HPA alike.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from scripts.chart import ENVIRONMENTS, configmap_data, of_kind, refusal, render, secret_data

NAMESPACE = "moderation-ns"
RABBIT = {"broker.kind": "rabbitmq", "broker.rabbitmq.url": "amqp://user:pa%2Fss@rabbitmq:5672/%2F",
          "broker.rabbitmq.managementUrl": "http://monitor:secret@rabbitmq:15672/%2F"}


def resolvable_everywhere(host: str) -> bool:
    """A name KEDA's operator resolves from its own namespace: <service>.<namespace>.svc... or any other
    dotted name (an external host); never a bare Service name."""
    return "." in host and (not host.endswith(".svc.cluster.local") or host.split(".")[1] == NAMESPACE)


def auth_refs(docs: list[dict]) -> dict[str, dict[str, str]]:
    """TriggerAuthentication name -> {parameter: Secret key}."""
    return {auth["metadata"]["name"]: {ref["parameter"]: ref["key"] for ref in auth["spec"]["secretTargetRef"]}
            for auth in of_kind(docs, "TriggerAuthentication")}


def test_keda_reads_the_dev_redis_by_a_name_its_own_namespace_resolves():
    docs = render("dev", namespace=NAMESPACE)
    secret = secret_data(docs)
    (scaled,) = of_kind(docs, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert "address" not in trigger["metadata"] and "host" not in trigger["metadata"], \
        f"the ScaledObject names the server itself: {trigger['metadata']}"
    refs = auth_refs(docs)[trigger["authenticationRef"]["name"]]
    address = secret[refs["address"]]
    host, port = address.rsplit(":", 1)
    assert host == f"moderation-redis.{NAMESPACE}.svc.cluster.local" and port == "6379", address
    assert resolvable_everywhere(host)
    # Same server and password as the service's REDIS_URL.
    app = urlsplit(secret["REDIS_URL"])
    assert host.split(".")[0] == app.hostname and int(port) == app.port
    assert secret[refs["password"]] == app.password and app.password


def test_keda_reads_rabbitmq_by_a_name_its_own_namespace_resolves():
    for protocol, url in (("amqp", RABBIT["broker.rabbitmq.url"]), ("http", RABBIT["broker.rabbitmq.managementUrl"])):
        overrides = {**RABBIT, "broker.rabbitmq.protocol": protocol}
        if protocol == "amqp":
            overrides["workerDefaults.autoscaling.minReplicas"] = 1
        docs = render("dev", overrides, namespace=NAMESPACE)
        secret = secret_data(docs)
        (scaled,) = of_kind(docs, "ScaledObject")
        (trigger,) = scaled["spec"]["triggers"]
        refs = auth_refs(docs)[trigger["authenticationRef"]["name"]]
        keda_url = secret[refs["host"]]
        assert refs["host"] != "CELERY_BROKER_URL", "KEDA has keys of its own, not the service's broker URL"
        parts = urlsplit(keda_url)
        assert parts.hostname == f"rabbitmq.{NAMESPACE}.svc.cluster.local", keda_url
        # Everything but the host is the URL as given: credentials, port, vhost.
        assert keda_url == url.replace("@rabbitmq:", f"@rabbitmq.{NAMESPACE}.svc.cluster.local:")
        assert secret["CELERY_BROKER_URL"] == RABBIT["broker.rabbitmq.url"], "the service's URL is left alone"


def test_an_external_host_is_kept_and_a_short_one_completed():
    docs = render("dev", {"redis.mode": "external", "redis.external.host": "redis.example.net",
                          "redis.external.password": "pw"}, namespace=NAMESPACE)
    assert secret_data(docs)["KEDA_REDIS_ADDRESS"] == "redis.example.net:6379"
    docs = render("dev", {"redis.mode": "external", "redis.external.host": "shared-redis"}, namespace=NAMESPACE)
    assert secret_data(docs)["KEDA_REDIS_ADDRESS"] == f"shared-redis.{NAMESPACE}.svc.cluster.local:6379"
    docs = render("dev", {"redis.mode": "external", "redis.external.host": "shared-redis",
                          "clusterDomain": "k8s.internal"}, namespace=NAMESPACE)
    assert secret_data(docs)["KEDA_REDIS_ADDRESS"] == f"shared-redis.{NAMESPACE}.svc.k8s.internal:6379"


@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_with_an_existing_secret_keda_reads_the_same_secret_as_the_service(environment):
    """Item 11: the service's Redis/RabbitMQ come from existingSecret; so must KEDA's, or the two can
    disagree. Nothing about the server is left in the ScaledObject."""
    docs = render(environment)
    (api,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-api")]
    (secret_name,) = [source["secretRef"]["name"] for source in api["spec"]["template"]["spec"]["containers"][0][
        "envFrom"] if "secretRef" in source]
    for auth in of_kind(docs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == secret_name
            assert ref["key"].startswith("KEDA_")
    for scaled in of_kind(docs, "ScaledObject"):
        (trigger,) = scaled["spec"]["triggers"]
        assert not {"address", "host", "port", "hostFromEnv", "addressFromEnv"} & set(trigger["metadata"])


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_scaled_object_falls_back_and_has_a_scaling_behaviour(environment):
    docs = render(environment)
    scaled_objects = of_kind(docs, "ScaledObject")
    assert scaled_objects
    for scaled in scaled_objects:
        spec = scaled["spec"]
        fallback = spec.get("fallback")
        assert fallback, f"{scaled['metadata']['name']}: no fallback, a failing metric freezes the pool"
        # Never "hold at zero": a pool at zero whose backlog cannot be read gets pods.
        assert 1 <= fallback["replicas"] <= spec["maxReplicaCount"]
        assert fallback["failureThreshold"] >= 1
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
        assert behavior["scaleDown"]["policies"]


def test_the_gpu_pool_at_zero_gets_a_pod_when_its_metric_fails():
    (gpu,) = [s for s in of_kind(render("prod"), "ScaledObject") if s["metadata"]["name"].endswith("-gpu")]
    assert gpu["spec"]["minReplicaCount"] == 0
    assert gpu["spec"]["fallback"]["replicas"] >= 1


def test_fallback_and_behaviour_come_from_values():
    docs = render("dev", {"workerDefaults.autoscaling.fallback.replicas": 2,
                          "workerDefaults.autoscaling.behavior.scaleDown.stabilizationWindowSeconds": 900})
    (scaled,) = of_kind(docs, "ScaledObject")
    assert scaled["spec"]["fallback"]["replicas"] == 2
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
        "stabilizationWindowSeconds"] == 900
    docs = render("staging", {"workerDefaults.autoscaling.keda": False,
                              "workerDefaults.autoscaling.behavior.scaleDown.stabilizationWindowSeconds": 900})
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 900


def test_a_fallback_above_the_maximum_is_refused():
    assert "fallback.replicas (3) is above maxReplicas (2)" in refusal(
        "dev", {"workerDefaults.autoscaling.fallback.replicas": 3})


# The job store on an external Redis Cluster and the broker on a RabbitMQ cluster run by the RabbitMQ Cluster
# Operator (deploy/helm/moderation/README.md "External clusters"): the operator's client Service
# (`<RabbitmqCluster name>.<namespace>`) spreads connections over every node, so one URL reaches a live node.
CLUSTERS = {"redis.mode": "external", "redis.external.host": "redis-cluster.data", "redis.external.password": "pw",
            "config.REDIS_CLUSTER": "true", "config.REDIS_WAIT_REPLICAS": "1", "config.RABBITMQ_QUORUM_SIZE": "3",
            "broker.kind": "rabbitmq", "broker.rabbitmq.url": "amqp://moderation:pw@rabbitmq.data:5672/moderation",
            "broker.rabbitmq.managementUrl": "http://monitor:pw@rabbitmq.data:15672/moderation"}


def test_the_chart_runs_on_an_external_redis_cluster_and_a_rabbitmq_cluster():
    docs = render("dev", CLUSTERS, namespace=NAMESPACE)  # dev: the chart writes the Secret
    config, secret = configmap_data(docs), secret_data(docs)
    assert config["REDIS_CLUSTER"] == "true" and config["RABBITMQ_QUORUM_SIZE"] == "3", config
    store = urlsplit(secret["REDIS_URL"])
    assert (store.hostname, store.port, store.path) == ("redis-cluster.data", 6379, "/0"), secret["REDIS_URL"]
    assert secret["CELERY_BROKER_URL"] == CLUSTERS["broker.rabbitmq.url"]
    assert "KEDA_REDIS_ADDRESS" not in secret  # KEDA counts the RabbitMQ queues, not the store
    for scaled in of_kind(docs, "ScaledObject"):
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "rabbitmq", trigger
    assert resolvable_everywhere(urlsplit(secret["KEDA_RABBITMQ_HOST"]).hostname)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"broker.kind": "redis"}, "broker.kind rabbitmq"),
    ({"redis.external.db": 3}, "redis.external.db must be 0"),
    ({"broker.rabbitmq.protocol": "amqp", "workerDefaults.autoscaling.minReplicas": 1,
      "broker.rabbitmq.url": "amqp://u:p@rabbit-0.data:5672/v;amqp://u:p@rabbit-1.data:5672/v"}, "failover list"),
])
def test_cluster_settings_that_cannot_work_are_refused(overrides, message):
    assert message in refusal("prod", {**CLUSTERS, **overrides})
