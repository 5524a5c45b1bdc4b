"""What operators expect of a chart (item 11): the webhook Deployment probed, budgeted and scraped; the
dev Redis pulled while the service's images are loaded; credentials that roll the pods when they change;
images pinned to the chart's version or a digest, never `latest`; NOTES.txt; a `helm test` hook that
submits one job; extension points (extraEnv, extraVolumes, podAnnotations, affinity, priorityClassName).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from contextlib import ExitStack

import pytest
import yaml

from scripts.chart import CHART, RELEASE, containers, helm, of_kind, render, values_file
from tests.support import base_env, start_api, start_worker

DIGEST = "sha256:" + "ab" * 32


def deployment(docs: list[dict], suffix: str) -> dict:
    (found,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith(suffix)]
    return found


def app_pods(docs: list[dict]) -> list[dict]:
    return [d["spec"]["template"] for d in of_kind(docs, "Deployment")]


WEBHOOKS = {"webhooks.allowedHosts": "hooks.test", "secrets.webhookSecret": "s", "metrics.prometheusOperator": True}


def test_the_webhook_worker_is_probed_budgeted_and_scraped():
    docs = render("dev", WEBHOOKS)
    hooks = deployment(docs, "-webhooks")
    (container,) = containers(hooks)
    assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(container)
    assert container["livenessProbe"]["httpGet"]["port"] == "metrics"
    assert container["readinessProbe"]["exec"]["command"][-1] == "--dependencies"
    assert container["command"][-2:] == ["--metrics-port", str(container["ports"][0]["containerPort"])]
    (pdb,) = [p for p in of_kind(docs, "PodDisruptionBudget") if p["metadata"]["name"].endswith("-webhooks")]
    assert pdb["spec"]["selector"] == hooks["spec"]["selector"]
    (monitor,) = [m for m in of_kind(docs, "PodMonitor") if m["metadata"]["name"].endswith("-webhooks")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= hooks["spec"]["template"]["metadata"]["labels"].items()
    annotations = hooks["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(container["ports"][0]["containerPort"])


def test_the_dev_redis_is_pulled_while_the_services_images_are_not():
    docs = render("dev")
    (redis,) = of_kind(docs, "StatefulSet")
    assert containers(redis)[0]["imagePullPolicy"] == "IfNotPresent"
    for pod in app_pods(docs):
        assert pod["spec"]["containers"][0]["imagePullPolicy"] == "Never"


def test_changed_credentials_roll_every_pod():
    before, after = render("dev", {"secrets.apiKeys": "key-one"}), render("dev", {"secrets.apiKeys": "key-two"})
    for old, new in zip(of_kind(before, "Deployment") + of_kind(before, "StatefulSet"),
                        of_kind(after, "Deployment") + of_kind(after, "StatefulSet"), strict=True):
        assert old["spec"]["template"]["metadata"]["annotations"]["checksum/secret"] != \
            new["spec"]["template"]["metadata"]["annotations"]["checksum/secret"], old["metadata"]["name"]
    # An existing Secret: hashed as the cluster holds it at `helm upgrade` (lookup; empty without a cluster).
    for pod in app_pods(render("prod")):
        assert pod["metadata"]["annotations"]["checksum/secret"]


@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_images_are_the_charts_version_or_a_digest_never_latest(environment):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for pod in app_pods(render("dev", {"images.api.tag": "", "images.worker.tag": ""})):
        assert pod["spec"]["containers"][0]["image"].endswith(":" + chart["appVersion"])
    for pod in app_pods(render(environment)):
        assert not pod["spec"]["containers"][0]["image"].endswith(":latest")
    docs = render(environment, {"images.api.digest": DIGEST, "images.worker.digest": DIGEST})
    assert containers(deployment(docs, "-api"))[0]["image"] == f"registry.example.com/moderation/api@{DIGEST}"
    assert containers(deployment(docs, "-worker-default"))[0]["image"].endswith(f"/worker@{DIGEST}")


def notes(environment: str, tmp_path, *args: str) -> str:
    """NOTES.txt as `helm install` prints it: `helm template` skips it, so a copy of the chart renders it
    inside a ConfigMap."""
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy, symlinks=False)
    (copy / "templates" / "NOTES.txt").rename(copy / "files" / "NOTES.txt")
    (copy / "templates" / "notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n'
        '  notes: {{ tpl (.Files.Get "files/NOTES.txt") . | toJson }}\n')
    out = helm("template", RELEASE, str(copy), "-f", str(values_file(environment)), "--show-only",
               "templates/notes.yaml", *args).stdout
    return yaml.safe_load(out)["data"]["notes"]


def test_notes_say_how_to_reach_and_test_the_release(tmp_path):
    assert (CHART / "templates" / "NOTES.txt").is_file()
    text = notes("dev", tmp_path)
    assert "port-forward svc/moderation-api" in text and f"helm test {RELEASE}" in text
    assert "scales to zero" in text and "REDIS_PASSWORD" in text
    text = notes("prod", tmp_path / "prod", "--api-versions", "keda.sh/v1alpha1")
    assert "https://moderation.example.com/" in text and "WARNING" not in text
    assert "existingSecret" not in text and "moderation-prod" in text


def test_pods_take_extra_env_volumes_annotations_affinity_and_priority():
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "preference": {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]}}]}}
    overrides = {**WEBHOOKS}
    for part in ("api", "workerDefaults", "webhooks"):
        overrides.update({f"{part}.extraEnv[0].name": "EXTRA", f"{part}.extraEnv[0].value": part,
                          f"{part}.extraVolumes[0].name": "certs", f"{part}.extraVolumes[0].secret.secretName": "ca",
                          f"{part}.extraVolumeMounts[0].name": "certs",
                          f"{part}.extraVolumeMounts[0].mountPath": "/etc/ssl/extra",
                          f"{part}.podAnnotations.team": "trust", f"{part}.podLabels.tier": "backend",
                          f"{part}.priorityClassName": "moderation-high"})
    args = [arg for key, value in overrides.items() for arg in ("--set-string" if isinstance(value, str) else "--set",
                                                                 f"{key}={value}")]
    for part in ("api", "workerDefaults", "webhooks"):
        args += ["--set-json", f"{part}.affinity={json.dumps(affinity)}"]
    out = helm("template", RELEASE, str(CHART), "-f", str(values_file("dev")), *args).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    for suffix, part in (("-api", "api"), ("-worker-default", "workerDefaults"), ("-webhooks", "webhooks")):
        pod = deployment(docs, suffix)["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert {"name": "EXTRA", "value": part} in container["env"], suffix
        assert {"name": "certs", "secret": {"secretName": "ca"}} in pod["spec"]["volumes"]
        assert {"name": "certs", "mountPath": "/etc/ssl/extra"} in container["volumeMounts"]
        assert pod["metadata"]["annotations"]["team"] == "trust" and pod["metadata"]["labels"]["tier"] == "backend"
        assert pod["spec"]["affinity"] == affinity and pod["spec"]["priorityClassName"] == "moderation-high"


# --------------------------------------------------------------------------------------------
# `helm test`: the rendered hook pod's script, run against a real API and worker


def hook_pod(docs: list[dict]) -> dict:
    (pod,) = [p for p in of_kind(docs, "Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    return pod


def run_test_pod(pod: dict, api_url: str, api_keys: str = "", timeout: str = "120") -> subprocess.CompletedProcess:
    (container,) = pod["spec"]["containers"]
    command = [sys.executable if part == "python" else part for part in container["command"]]
    env = {item["name"]: item.get("value", "") for item in container["env"]}
    assert env["MODERATION_URL"] == "http://moderation-api:80"  # the API's Service
    env.update(MODERATION_URL=api_url, API_KEYS=api_keys, TIMEOUT_SECONDS=timeout)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_the_test_hook_is_a_hardened_pod_of_the_api_image():
    docs = render("prod")
    pod = hook_pod(docs)
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["automountServiceAccountToken"] is False
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == containers(deployment(docs, "-api"))[0]["image"]
    keys = [e for e in container["env"] if e["name"] == "API_KEYS"]
    assert keys[0]["valueFrom"]["secretKeyRef"] == {"name": "moderation-prod", "key": "API_KEYS", "optional": True}
    assert not [p for p in of_kind(render("prod", {"tests.enabled": False}), "Pod")]


@pytest.fixture(scope="module")
def live_stack(redis_server, tiny_multilabel_model, tmp_path_factory):
    logs = tmp_path_factory.mktemp("chart-helm-test")
    redis_server.client().flushall()
    env = base_env(redis_server.url, MODELS=f"default={tiny_multilabel_model}", API_KEYS="first-key,second-key")
    with ExitStack() as stack:
        api = stack.enter_context(start_api(env, logs / "api.log"))
        worker = start_worker(env, logs / "worker.log", models=["default"])
        stack.callback(worker.stop)
        yield api


def test_the_test_hook_submits_a_job_and_waits_for_its_result(live_stack):
    result = run_test_pod(hook_pod(render("dev")), live_stack.url, api_keys="first-key,second-key")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout
    print(result.stdout)


def test_the_test_hook_fails_when_the_service_does(live_stack):
    result = run_test_pod(hook_pod(render("dev")), live_stack.url, api_keys="wrong-key")
    assert result.returncode != 0 and "401" in result.stderr, result.stdout + result.stderr
    result = run_test_pod(hook_pod(render("dev")), "http://127.0.0.1:9", timeout="3")
    assert result.returncode != 0 and "Connection refused" in result.stderr, result.stderr
