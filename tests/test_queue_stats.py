"""GET /queue (the web page's queue panel) and `moderation status` read queue depth and oldest-job age
from the broker, through the same reader as /metrics' queue gauges (shared/broker.py), on every broker:
the record Redis itself, a second Redis named by CELERY_BROKER_URL, and RabbitMQ (a private vhost).

No worker runs: jobs queued for the model stay in the broker, so depth and age must be above 0 and
equal to what /metrics says. Reading the record Redis instead (what /queue once did) shows 0 queued on
a separate broker Redis and on RabbitMQ."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
import requests

from shared.queues import queue_for_model
from tests.support import ROOT, ApiServer, RedisServer, base_env, broker_for, start_api, wait_until

MODEL = "idle"  # served by no worker: its jobs wait in the broker
QUEUE = queue_for_model(MODEL)
JOBS = 3
BROKERS = ["redis", "separate-redis", "rabbitmq"]


@dataclass
class Stack:
    kind: str
    api: ApiServer
    # Stop and start the broker alone (the record Redis keeps answering); None on the single Redis.
    stop_broker: Callable[[], object] | None = None
    start_broker: Callable[[], object] | None = None


@pytest.fixture(scope="module", params=BROKERS)
def stack(request, tiny_multilabel_model, tmp_path_factory):
    kind = request.param
    logs = tmp_path_factory.mktemp(f"queue-stats-{kind}")
    with ExitStack() as cleanup:
        records = cleanup.enter_context(RedisServer(tmp_path_factory.mktemp("records")).start())
        overrides, switch = {}, (None, None)
        if kind == "separate-redis":
            broker = cleanup.enter_context(RedisServer(tmp_path_factory.mktemp("broker")).start())
            overrides["CELERY_BROKER_URL"], switch = broker.url, (broker.stop, broker.start)
        elif kind == "rabbitmq":
            # A private vhost, reached through a proxy the test can cut (tests/support.py).
            rabbit = cleanup.enter_context(broker_for("rabbitmq", records.url, proxied=True))
            overrides["CELERY_BROKER_URL"], switch = rabbit.url, (rabbit.proxy.stop, rabbit.proxy.start)
        env = base_env(records.url, MODELS=f"{MODEL}={tiny_multilabel_model}", DEFAULT_MODEL=MODEL, **overrides)
        api = cleanup.enter_context(start_api(env, logs / "api.log"))
        yield Stack(kind, api, *switch)


def metric(api_url: str, name: str) -> float:
    text = requests.get(api_url + "/metrics", timeout=10).text
    match = re.search(rf'^{name}{{queue="{re.escape(QUEUE)}"}} ([0-9.e+-]+)$', text, re.M)
    assert match, f"{name} for {QUEUE} not on /metrics:\n{text[-2000:]}"
    return float(match.group(1))


def queue_entry(api_url: str) -> dict:
    response = requests.get(api_url + "/queue", timeout=10)
    assert response.status_code == 200, response.text
    (entry,) = [m for m in response.json()["models"] if m["model"] == MODEL]
    return entry


def status(api_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client", "--url", api_url, "status", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_queue_and_status_show_the_jobs_waiting_in_the_broker(stack):
    url = stack.api.url
    for i in range(JOBS):
        response = requests.post(url + "/generate", json={"input_text": f"waiting {i}"}, timeout=10)
        assert response.status_code == 202, response.text
    # /metrics is the reference: wait until it sees every job, and some age (an enqueue time in the past).
    wait_until(lambda: metric(url, "moderation_queue_depth") == JOBS
               and metric(url, "moderation_queue_oldest_job_age_seconds") > 0,
               timeout=30, what=f"/metrics to show {JOBS} jobs queued on {stack.kind}")

    age_before = metric(url, "moderation_queue_oldest_job_age_seconds")
    entry = queue_entry(url)
    age_after = metric(url, "moderation_queue_oldest_job_age_seconds")
    assert entry["depth"] == JOBS == metric(url, "moderation_queue_depth"), entry
    assert entry["live_workers"] == 0 and entry["queue"] == QUEUE
    # The same reading as /metrics: the age, rounded to ms on /queue, lies between the two scrapes around it.
    assert entry["oldest_job_age_seconds"] > 0, entry
    assert age_before - 0.001 <= entry["oldest_job_age_seconds"] <= age_after + 0.001, (age_before, entry, age_after)

    # `moderation status` shows the same (it reads GET /queue). Not ready: no worker serves the default model.
    run = status(url, "--json")
    assert run.returncode == 1, run.stderr
    (model,) = json.loads(run.stdout)["models"]
    assert model["name"] == MODEL and model["depth"] == JOBS and model["oldest_job_age_seconds"] > 0, model
    run = status(url)
    assert run.returncode == 1 and "NOT READY" in run.stdout, run.stdout
    line = next(line for line in run.stdout.splitlines() if line.startswith(MODEL))
    assert line.split()[1:4] == ["*", "0", str(JOBS)], line  # default model, live workers, queued


def test_queue_answers_503_when_the_broker_is_down(stack):
    """/queue reads the broker: when the broker alone is down, /queue cannot count and answers 503 (as POST
    /generate does), rather than 0 queued read from the record Redis, which still answers."""
    if stack.stop_broker is None:
        pytest.skip("the broker is the record Redis: nothing to stop alone")
    url = stack.api.url
    stack.stop_broker()
    try:
        response = requests.get(url + "/queue", timeout=30)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "unavailable" and response.headers["Retry-After"] == "1"
        assert requests.get(url + "/models", timeout=10).status_code == 200  # the record Redis answers
    finally:
        stack.start_broker()
    wait_until(lambda: requests.get(url + "/queue", timeout=30).status_code == 200, timeout=60,
               what="/queue to answer again once the broker is back")
