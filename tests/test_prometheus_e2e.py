"""A real Prometheus scrapes a local API and worker using the project's own scrape jobs and rules.

It must see the submitted and completed job counts and a queue depth that rose and fell.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import requests
import yaml

from shared import metrics as names
from tests.support import ROOT, base_env, free_port, start_api, start_worker

JOBS = 40


def derived_config(api_target: str, worker_target: str) -> dict:
    """prometheus.yml with its api/worker jobs pointed at local processes and a fast scrape."""
    shipped = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    targets = {"api": api_target, "worker": worker_target}
    jobs = []
    for job in shipped["scrape_configs"]:
        if job["job_name"] in targets:
            local = {k: v for k, v in job.items() if not k.endswith("sd_configs") and k != "static_configs"}
            local["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
            jobs.append(local)
    assert {job["job_name"] for job in jobs} == set(targets), "prometheus.yml lost its api or worker job"
    return {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / path) for path in shipped["rule_files"]],
            "scrape_configs": jobs}


class Prometheus:
    def __init__(self, config: dict, workdir):
        binary = shutil.which("prometheus")
        assert binary, "Debian's prometheus package is not installed (.ci/run installs it)"
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(workdir / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"], stdout=self.log, stderr=subprocess.STDOUT)

    def query(self, expr: str) -> list:
        response = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5)
        response.raise_for_status()
        return response.json()["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, predicate, timeout: float = 60) -> float | None:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.value(expr)
            except requests.RequestException:
                value = None
            if value is not None and predicate(value):
                return value
            time.sleep(0.5)
        pytest.fail(f"{expr} never satisfied the check; last value {value}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)
        self.log.close()


@pytest.fixture(scope="module")
def observed_stack(redis_server, tiny_multilabel_model, tmp_path_factory):
    redis_server.client().flushall()
    workdir = tmp_path_factory.mktemp("prometheus")
    env = base_env(redis_server.url, MODEL_PATH=str(tiny_multilabel_model))
    api = start_api(env, workdir / "api.log")
    worker_port = env["WORKER_METRICS_PORT"]
    prometheus = Prometheus(derived_config(f"127.0.0.1:{api.port}", f"127.0.0.1:{worker_port}"), workdir)
    yield {"api": api, "env": env, "prometheus": prometheus, "workdir": workdir,
           "worker_metrics": f"http://127.0.0.1:{worker_port}/metrics"}
    prometheus.stop()
    api.stop()


def test_prometheus_sees_jobs_and_a_queue_that_rose_and_fell(observed_stack):
    prom, api = observed_stack["prometheus"], observed_stack["api"]
    prom.wait_for('up{job="api"}', lambda v: v == 1)
    # No worker yet: the queue can only grow.
    for i in range(JOBS):
        response = requests.post(api.url + "/generate", json={"input_text": f"text number {i}"}, timeout=10)
        assert response.status_code == 202
    prom.wait_for(f'{names.QUEUE_DEPTH}{{queue="moderation.default"}}', lambda v: v == JOBS)
    prom.wait_for(f"sum({names.JOBS_SUBMITTED_TOTAL})", lambda v: v == JOBS)

    worker = start_worker(observed_stack["env"], observed_stack["workdir"] / "worker.log", models=["default"])
    try:
        prom.wait_for('up{job="worker"}', lambda v: v == 1)
        prom.wait_for(f'sum({names.JOBS_COMPLETED_TOTAL}{{status="succeeded"}})', lambda v: v == JOBS)
        prom.wait_for(f'{names.QUEUE_DEPTH}{{queue="moderation.default"}}', lambda v: v == 0)
        peak = prom.value(f'max_over_time({names.QUEUE_DEPTH}{{queue="moderation.default"}}[5m])')
        assert peak == JOBS
        assert prom.value(f"sum({names.TEXTS_PROCESSED_TOTAL})") == JOBS
        assert prom.value(f"sum({names.BATCH_SIZE}_count)") >= 1
        print("PromQL sum(moderation_jobs_completed_total) by status:",
              prom.query(f"sum by (status) ({names.JOBS_COMPLETED_TOTAL})"))
    finally:
        worker.stop()


def test_prometheus_loaded_the_shipped_alert_rules(observed_stack):
    groups = requests.get(observed_stack["prometheus"].url + "/api/v1/rules", timeout=5).json()["data"]["groups"]
    shipped = yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())["groups"]
    assert sorted(g["name"] for g in groups) == sorted(g["name"] for g in shipped)


def test_live_metrics_pages_carry_every_declared_name(observed_stack):
    api_page = requests.get(observed_stack["api"].url + "/metrics", timeout=5).text
    for name in names.API_METRICS:
        assert f"\n# TYPE {name.removesuffix('_total')}" in api_page, name
    worker = start_worker(observed_stack["env"], observed_stack["workdir"] / "worker2.log", models=["default"])
    try:
        requests.post(observed_stack["api"].url + "/generate", json={"input_text": "one more", "wait": 20}, timeout=30)
        worker_page = requests.get(observed_stack["worker_metrics"], timeout=5).text
    finally:
        worker.stop()
    for name in names.WORKER_METRICS:
        assert f"\n# TYPE {name.removesuffix('_total')}" in worker_page, name
