"""Who can reach what (item 8): /metrics (which reads Redis on every scrape) is not routed by the
Ingress while every public route is; NetworkPolicies admit the API's port only from the Ingress
controller's and Prometheus's namespaces (and the release's own pods), metrics ports only from
Prometheus, the dev Redis only from the release's pods and KEDA, and let the pods out only to DNS,
Redis, the broker and, for the webhook worker, the callback hosts; the dev Redis has a password.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import pytest

import api
from scripts.chart import CHART, containers, of_kind, render, secret_data
from shared.config import load_settings

CONTROLLER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
RELEASE_PODS = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "moderation",
                                                "app.kubernetes.io/instance": "moderation"}}}


def routed(path: str, ingress: dict) -> bool:
    """Whether an Ingress rule sends `path` to a backend (networking.k8s.io/v1 path types)."""
    for rule in ingress["spec"]["rules"]:
        for entry in rule["http"]["paths"]:
            prefix = entry["path"]
            if entry["pathType"] == "Exact" and path == prefix:
                return True
            if entry["pathType"] == "Prefix" and (prefix == "/" or path == prefix.rstrip("/")
                                                  or path.startswith(prefix.rstrip("/") + "/")):
                return True
    return False


@pytest.fixture(scope="module")
def app_paths(redis_server, tiny_multilabel_model) -> set[str]:
    """One concrete path per route of the API (a placeholder filled in)."""
    app = api.create_app(load_settings({"REDIS_URL": redis_server.url, "MODELS": f"default={tiny_multilabel_model}"}))
    return {rule.rule.replace("<path:filename>", "app.js").replace("<job_id>", "3f0c")
            for rule in app.url_map.iter_rules()}


@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_the_ingress_routes_every_public_path_and_not_metrics(environment, app_paths):
    (ingress,) = of_kind(render(environment), "Ingress")
    assert "/metrics" in app_paths
    assert not routed("/metrics", ingress), "/metrics is public through the Ingress"
    assert not routed("/metrics/", ingress) and not routed("/metricsx", ingress)
    unrouted = sorted(path for path in app_paths - {"/metrics"} if not routed(path, ingress))
    assert not unrouted, f"routes the Ingress does not send to the API: {unrouted} (templates/ingress.yaml)"


def test_behind_the_ingress_the_api_trusts_one_proxy_for_client_addresses():
    for environment in ("staging", "prod"):
        (config,) = [d for d in of_kind(render(environment), "ConfigMap") if d["metadata"]["name"].endswith("-config")]
        assert config["data"]["TRUSTED_PROXIES"] == "1"
    (config,) = [d for d in of_kind(render("dev"), "ConfigMap") if d["metadata"]["name"].endswith("-config")]
    assert "TRUSTED_PROXIES" not in config["data"], "no Ingress: no proxy to trust"
    (config,) = [d for d in of_kind(render("prod", {"config.TRUSTED_PROXIES": "2"}), "ConfigMap")
                 if d["metadata"]["name"].endswith("-config")]
    assert config["data"]["TRUSTED_PROXIES"] == "2", "an explicit setting wins"


def policies(docs: list[dict]) -> dict[str, dict]:
    return {p["metadata"]["name"].removeprefix("moderation-"): p["spec"] for p in of_kind(docs, "NetworkPolicy")}


def selects(policy: dict, labels: dict) -> bool:
    selector = policy["podSelector"]
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    return all(expr["operator"] == "Exists" and expr["key"] in labels for expr in selector.get("matchExpressions", []))


@pytest.mark.parametrize("environment", ["dev", "staging", "prod"])
def test_every_pod_of_the_release_is_under_a_network_policy(environment):
    docs = render(environment)
    specs = policies(docs)
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        chosen = [name for name, spec in specs.items() if selects(spec, labels)]
        assert len(chosen) == 1, f"{workload['metadata']['name']}: policies {chosen}"
        spec = specs[chosen[0]]
        assert "Ingress" in spec["policyTypes"] and "Egress" in spec["policyTypes"]
        # Only the ports the pod serves are open.
        served = {port["containerPort"] for c in containers(workload) for port in c.get("ports", [])}
        opened = {port["port"] for rule in spec["ingress"] for port in rule["ports"]}
        assert opened == served, f"{workload['metadata']['name']}: opens {opened}, serves {served}"


def test_prod_admits_the_api_port_from_the_ingress_controller_and_prometheus_only():
    specs = policies(render("prod"))
    (rule,) = specs["api"]["ingress"]
    assert CONTROLLER in rule["from"] and PROMETHEUS in rule["from"] and RELEASE_PODS in rule["from"]
    assert len(rule["from"]) == 3
    for name in ("workers", "webhooks"):
        (rule,) = specs[name]["ingress"]
        assert rule["from"] == [PROMETHEUS], f"{name}: its metrics port only from Prometheus"


def egress_ports(spec: dict) -> dict[int, list]:
    """port -> the peers it may reach ([] for any)."""
    found: dict[int, list] = {}
    for rule in spec["egress"]:
        for port in rule.get("ports", []):
            found.setdefault(port["port"], []).extend(rule.get("to", []))
    return found


def test_pods_reach_only_dns_the_store_and_the_broker():
    docs = render("prod")
    specs = policies(docs)
    for name in ("api", "workers"):
        assert set(egress_ports(specs[name])) == {53, 6380, 5671, 5672}, name
        assert all("to" in rule or {p["port"] for p in rule["ports"]} <= {53, 6380, 5671, 5672}
                   for rule in specs[name]["egress"])
    hooks = egress_ports(specs["webhooks"])
    assert set(hooks) == {53, 6380, 5671, 5672, 80, 443}
    (peer,) = hooks[443]
    block = peer["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0"
    for private in ("10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.169.254", "127.0.0.1"):
        assert any(ipaddress.ip_address(private) in ipaddress.ip_network(e) for e in block["except"]), private


def test_the_dev_redis_admits_the_release_and_keda_only():
    docs = render("dev")
    spec = policies(docs)["redis"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    assert RELEASE_PODS in rule["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}} in rule["from"]
    assert len(rule["from"]) == 2
    # The app pods may reach it: their egress names the Redis pods.
    (redis_rule,) = [r for r in policies(docs)["api"]["egress"] if r["ports"][0]["port"] == 6379]
    assert redis_rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"


def test_network_policies_can_be_left_out():
    assert not of_kind(render("prod", {"networkPolicy.enabled": False}), "NetworkPolicy")


def test_the_dev_redis_requires_a_generated_password():
    first, second = secret_data(render("dev")), secret_data(render("dev"))
    password = first["REDIS_PASSWORD"]
    assert len(password) >= 32 and password.isalnum()
    assert second["REDIS_PASSWORD"] != password, "generated, not a constant of the chart"
    url = urlsplit(first["REDIS_URL"])
    assert url.password == password and first["KEDA_REDIS_PASSWORD"] == password
    docs = render("dev", {"redis.internal.password": "chosen-one"})
    assert secret_data(docs)["REDIS_PASSWORD"] == "chosen-one"
    (redis,) = of_kind(docs, "StatefulSet")
    (container,) = containers(redis)
    assert container["args"][container["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container["env"]}
    assert env["REDIS_PASSWORD"]["key"] == env["REDISCLI_AUTH"]["key"] == "REDIS_PASSWORD"
    # An upgrade keeps the password the release's Secret holds (lookup; a cluster is needed to see it work).
    assert 'lookup "v1" "Secret"' in (CHART / "templates" / "_helpers.tpl").read_text()
