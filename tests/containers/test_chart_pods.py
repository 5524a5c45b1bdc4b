"""The chart's dev pods, run for real with docker: `make test-chart` (not part of `make test`).

Builds the API image and the lean CPU worker image (docker/*.Dockerfile, on the local Debian base),
renders the chart with values-dev.yaml, and starts every Deployment's container as its pod spec says
(scripts/containers/pods.py: command, args, env from the rendered ConfigMap and Secret, user,
read-only root, limits, probes). A private redis-server on a free port stands in for the dev Redis
StatefulSet (whose image comes from a registry), with the password of the rendered Secret; its
Service name resolves to 127.0.0.1. Each readiness probe must pass, a job submitted through the API
container must finish and be delivered, signed, by the webhook Deployment to a receiver on 127.0.0.1,
the `helm test` pod's container must submit a job through the API's Service name and see it succeed,
and the worker must exit 0 on SIGTERM within its grace period. Figures go to stdout and
var/chart-pods/report.json.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from scripts.chart import RELEASE, of_kind
from scripts.containers.pods import dev_pods, docker, run_pod
from tests.support import RedisServer, wait_for_job, wait_until

pytestmark = pytest.mark.skipif(os.environ.get("MODERATION_CHART_POD_TESTS") != "1",
                                reason="needs Docker: run by `make test-chart`")

ROOT = Path(__file__).resolve().parents[2]
WORK_DIR = ROOT / "var" / "chart-pods"
BASE_IMAGE = "moderation-debian-base:bookworm"
WEBHOOK_SECRET = secrets.token_hex(16)
IMAGES = {"moderation-api:latest": "docker/api.Dockerfile", "moderation-worker:latest": "docker/worker.Dockerfile"}


def log(message: str) -> None:
    print(f"[chart-pods {time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_images(report: dict) -> None:
    for script in ("debian_base_image.sh", "build_extras.sh"):
        subprocess.run([str(ROOT / "scripts" / "containers" / script)], cwd=ROOT, check=True, capture_output=True)
    for tag, dockerfile in IMAGES.items():
        started = time.monotonic()
        docker("build", "--network", "host", "-f", dockerfile, "-t", tag, "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}",
               "--build-arg", "TORCH_EXTRA_INDEX_URL=", str(ROOT), timeout=3600)
        seconds = round(time.monotonic() - started, 1)
        size = int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout)
        report.setdefault("images", {})[tag] = {"mb": round(size / 1e6), "build_s": seconds}
        log(f"{tag}: {size / 1e6:.0f} MB (built in {seconds:.0f} s)")


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    for tool in ("docker", "npm"):
        assert shutil.which(tool), f"{tool} missing: scripts/system_deps.sh containers installs Docker"
    report: dict = {}
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    build_images(report)
    # Webhooks on (values-dev.yaml leaves them off), so the webhook Deployment runs too.
    webhooks = {"webhooks.allowedHosts": "127.0.0.1", "secrets.webhookSecret": WEBHOOK_SECRET}
    try:
        with RedisServer(tmp_path_factory.mktemp("chart-redis")).start() as redis_server, \
                dev_pods(redis_server.port, webhooks, log=log) as pods:
            report["ready_s"] = pods.ready_s
            pods.report = report
            yield pods
    finally:
        WORK_DIR.joinpath("report.json").write_text(json.dumps(report, indent=2))
        log(f"report: {json.dumps(report)}")


def test_every_rendered_dev_deployment_runs_and_gets_ready(dev):
    names = {pod.deployment["metadata"]["name"] for pod in dev.pods}
    assert names == {f"{RELEASE}-api", f"{RELEASE}-worker-default", f"{RELEASE}-webhooks"}
    for pod in dev.pods:
        assert pod.running(), pod.logs()
    # The API's full readiness: Redis answers and a live worker serves the default model.
    assert requests.get(f"{dev.api}/readyz", timeout=5).status_code == 200


def test_a_job_submitted_through_the_api_container_finishes(dev):
    started = time.monotonic()
    response = requests.post(f"{dev.api}/generate", timeout=30,
                             json={"input_text": "martians are ruthless animals we should eradicate them all"})
    assert response.status_code == 202, response.text
    job = wait_for_job(dev.api, response.json()["job_id"], timeout=120)
    seconds = time.monotonic() - started
    dev.report["first_job_s"] = round(seconds, 2)
    log(f"job {job['job_id']}: {job['status']} in {seconds:.2f} s; flagged={job['results'][0]['flagged']}")
    assert job["status"] == "succeeded", job
    assert job["results"][0]["category_scores"]


class Receiver(BaseHTTPRequestHandler):
    deliveries: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.deliveries.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_webhook_deployment_delivers_a_signed_callback(dev):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        response = requests.post(f"{dev.api}/generate", json={"input_text": "hello", "callback_url": url}, timeout=30)
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        wait_until(lambda: Receiver.deliveries, timeout=120, interval=0.2, what="the webhook delivery")
    finally:
        server.shutdown()
    headers, body = Receiver.deliveries[0]
    assert json.loads(body)["job_id"] == job_id
    # Standard Webhooks headers; a plain-string WEBHOOK_SECRET is the HMAC key as its UTF-8 bytes.
    assert Webhook(WEBHOOK_SECRET.encode()).verify(body, headers)["job_id"] == job_id
    assert {k.lower(): v for k, v in headers.items()}["webhook-id"] == job_id
    log(f"webhook for job {job_id} delivered by the webhook pod, signature checked")


def test_the_helm_test_pod_submits_a_job_through_the_service(dev):
    (pod,) = [p for p in of_kind(dev.docs, "Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    hosts = [service["metadata"]["name"] for service in of_kind(dev.docs, "Service")]
    # Run as its pod spec says (pods.py takes a Deployment's pod template): image, command, env, user, limits.
    as_deployment = {"metadata": pod["metadata"], "spec": {"template": {"spec": pod["spec"]}}}
    started = time.monotonic()
    test = run_pod(as_deployment, {}, hosts, f"chart-pod-{pod['metadata']['name']}")
    try:
        code = int(docker("wait", test.name, timeout=300).stdout.strip())
        logs = test.logs()
    finally:
        test.remove()
    dev.report["helm_test_s"] = round(time.monotonic() - started, 1)
    log(f"helm test pod: exit {code} in {dev.report['helm_test_s']} s: {logs.strip().splitlines()[-1:]}")
    assert code == 0, logs
    assert "succeeded" in logs


def test_the_worker_exits_cleanly_on_sigterm_within_its_grace_period(dev):
    worker = dev.pod("-worker-default")
    started = time.monotonic()
    code = worker.stop()
    dev.report["worker_stop_s"] = round(time.monotonic() - started, 1)
    assert code == 0, worker.logs()
