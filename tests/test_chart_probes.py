"""Probes and shutdown, as rendered (items 5, 6 and 11 of the chart's review).

- The API drains: a preStop delay keeps a terminating pod serving while the endpoint removal reaches
  kube-proxy and the Ingress controller, then gunicorn gets SIGTERM and lets requests finish for its
  graceful timeout, which the grace period covers.
- Liveness checks the process, readiness its dependencies: the rendered probes of a real worker and a
  real webhook worker are run while their Redis is up, then down. Down, readiness fails (no traffic,
  no rollout step) and liveness still passes (no restart: batches in flight and loaded models survive
  an outage the store gate rides out).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from scripts.chart import ROOT, configmap_data, containers, of_kind, refusal, render, secret_data
from tests.support import Proc, RedisServer, base_env, free_port, start_worker, wait_until


def deployment(docs: list[dict], suffix: str) -> dict:
    (found,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith(suffix)]
    return found


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


# --------------------------------------------------------------------------------------------
# Item 5: the API's rollout does not drop requests


@pytest.mark.parametrize("environment", ["dev", "staging", "prod"])
def test_the_api_keeps_serving_until_routes_are_gone_then_drains(environment):
    docs = render(environment)
    pod = deployment(docs, "-api")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) >= 5, command
    args = container["args"]
    graceful = int(args[args.index("--graceful-timeout") + 1])
    config = configmap_data(docs)
    # The longest a request waits: a long poll (MAX_WAIT_SECONDS) or /v1/moderations (MODERATIONS_TIMEOUT).
    assert graceful >= float(config.get("MAX_WAIT_SECONDS", 30)) and graceful >= float(config.get(
        "MODERATIONS_TIMEOUT", 30))
    assert pod["terminationGracePeriodSeconds"] >= int(command[1]) + graceful + 1


def test_gunicorn_takes_the_rendered_graceful_timeout_over_its_config_file(tmp_path):
    container = containers(deployment(render("dev", {"api.gunicorn.gracefulTimeoutSeconds": 41,
                                                     "api.terminationGracePeriodSeconds": 60}), "-api"))[0]
    result = subprocess.run([sys.executable, "-m", "gunicorn", *container["args"][:-1], "--print-config",
                             container["args"][-1]], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("graceful_timeout ")]
    assert line.split("=")[1].strip() == "41"


@pytest.mark.parametrize("overrides, message", [
    ({"api.preStopSeconds": 20}, "api.terminationGracePeriodSeconds (50) must be at least"),
    ({"api.gunicorn.gracefulTimeoutSeconds": 10}, "must cover config.MAX_WAIT_SECONDS"),
], ids=["grace-too-short", "graceful-shorter-than-a-long-poll"])
def test_a_shutdown_that_cuts_requests_is_refused(overrides, message):
    assert message in refusal("dev", overrides)


# --------------------------------------------------------------------------------------------
# Items 6 and 11: liveness without Redis, readiness with it, for the model worker and the webhook worker


def probe_passes(probe: dict, env: dict) -> bool:
    if "httpGet" in probe:
        port = probe["httpGet"]["port"]
        try:
            return requests.get(f"http://127.0.0.1:{probe['_ports'].get(port, port)}{probe['httpGet']['path']}",
                                timeout=probe.get("timeoutSeconds", 1)).ok
        except requests.RequestException:
            return False
    command = list(probe["exec"]["command"])
    if command[0] == "python":
        command[0] = sys.executable
    return subprocess.run(command, env=env, capture_output=True, timeout=60).returncode == 0


def probes_of(container: dict) -> dict[str, dict]:
    ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
    return {name: {**container[name], "_ports": ports}
            for name in ("startupProbe", "livenessProbe", "readinessProbe") if name in container}


def wait_ready(stack: dict, name: str) -> dict[str, dict]:
    """The component's probes, once its readiness probe passes."""
    _, container, env = stack[name]
    probes = probes_of(container)
    assert {"livenessProbe", "readinessProbe"} <= set(probes), f"{name} has no probes: {sorted(container)}"
    wait_until(lambda: probe_passes(probes["readinessProbe"], env), timeout=120, interval=0.5,
               what=f"the {name} to be ready")
    return probes


@pytest.fixture(scope="module")
def pods(tmp_path_factory, tiny_multilabel_model):
    """The rendered dev worker and webhook worker as processes (their command, env and the rendered
    ConfigMap), on a private Redis this module stops and starts."""
    work = tmp_path_factory.mktemp("chart-probes")
    private_tmp = work / "tmp"  # the worker's node-name file (worker/healthcheck.py) is this stack's own
    private_tmp.mkdir()
    docs = render("dev", {"workerDefaults.metricsPort": free_port(), "webhooks.metricsPort": free_port(),
                          "webhooks.allowedHosts": "127.0.0.1", "secrets.webhookSecret": "whsec-test"})
    config, secret = configmap_data(docs), secret_data(docs)
    with RedisServer(work / "redis").start() as redis_server:
        common = base_env(redis_server.url, **{k: v for k, v in config.items() if k not in ("MODELS", "LOG_LEVEL")},
                          MODELS=f"default={tiny_multilabel_model}", WEBHOOK_SECRET=secret["WEBHOOK_SECRET"],
                          TMPDIR=str(private_tmp))
        worker_container = containers(deployment(docs, "-worker-default"))[0]
        worker_env = {**common, **env_of(worker_container), "ENGINE": "torch", "QUANTIZE": "none"}
        worker = start_worker(worker_env, work / "worker.log", models=["default"])
        hooks_container = containers(deployment(docs, "-webhooks"))[0]
        hooks_env = {**common, **env_of(hooks_container)}
        command = [sys.executable if part == "python" else part for part in hooks_container["command"]]
        hooks = Proc(command, hooks_env, work / "webhooks.log")
        try:
            yield {"redis": redis_server, "worker": (worker, worker_container, worker_env),
                   "webhooks": (hooks, hooks_container, hooks_env)}
        finally:
            hooks.stop()
            worker.stop()


@pytest.mark.parametrize("name", ["worker", "webhooks"])
def test_every_probe_passes_while_redis_answers(pods, name):
    _, _, env = pods[name]
    for probe_name, probe in wait_ready(pods, name).items():
        assert probe_passes(probe, env), f"{name}: {probe_name} fails with Redis up"


@pytest.mark.parametrize("name", ["worker", "webhooks"])
def test_a_redis_outage_fails_readiness_and_restarts_nothing(pods, name):
    process, _, env = pods[name]
    probes = wait_ready(pods, name)
    pods["redis"].stop()
    try:
        assert not probe_passes(probes["readinessProbe"], env), f"{name} is still ready without Redis"
        assert probe_passes(probes["livenessProbe"], env), \
            f"{name}: liveness fails while Redis is down: the kubelet would restart it ({probes['livenessProbe']})"
        if "startupProbe" in probes:
            assert probe_passes(probes["startupProbe"], env), f"{name}: its startup probe reads Redis"
        assert process.alive(), process.log_tail()
    finally:
        pods["redis"].start()
    wait_ready(pods, name)
