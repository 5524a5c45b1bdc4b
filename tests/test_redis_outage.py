"""Redis and broker outages and a full queue, against a private Redis these tests stop, freeze and start
again, on both brokers (Redis, and RabbitMQ in a private vhost reached through a proxy the test stops).

While Redis is unreachable the API answers 503 + Retry-After fast (short socket timeouts, no retry
back-off), /readyz says why and /healthz stays 200; when Redis is back, the same API and worker
processes carry on. Past MAX_QUEUE_DEPTH, POST /generate answers 503 queue_full.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import ExitStack
from types import SimpleNamespace

import pytest
import requests

from shared.queues import queue_for_model
from tests.support import RedisServer, base_env, broker_for, start_api, start_worker, wait_for_job, wait_until

FAST_ANSWER_SECONDS = 3  # "about a second" (REDIS_SOCKET_TIMEOUT=1), with room for a loaded machine


@pytest.fixture(scope="module")
def stack(broker_kind, tiny_multilabel_model, tmp_path_factory):
    logs = tmp_path_factory.mktemp(f"outage-logs-{broker_kind}")
    with ExitStack() as cleanup:  # each process is stopped even if a later set-up step fails
        server = cleanup.enter_context(RedisServer(tmp_path_factory.mktemp("outage-redis")).start())
        broker = cleanup.enter_context(broker_for(broker_kind, server.url, proxied=True))
        # "idle" has a queue but no worker, so its jobs pile up against MAX_QUEUE_DEPTH.
        env = base_env(server.url, MODELS=f"tiny={tiny_multilabel_model},idle={tiny_multilabel_model}",
                       DEFAULT_MODEL="tiny", WORKER_MODELS="tiny", MAX_QUEUE_DEPTH="5", CELERY_BROKER_URL=broker.url)
        api = cleanup.enter_context(start_api(env, logs / "api.log"))
        worker = cleanup.enter_context(start_worker(env, logs / "worker.log", models=["tiny"]))
        yield SimpleNamespace(redis=server, broker=broker, env=env, api=api, url=api.url, worker=worker)


def submit(url: str, text: str, model: str = "tiny") -> requests.Response:
    return requests.post(url + "/generate", json={"input_text": text, "model": model}, timeout=30)


def timed(method: str, url: str, **kwargs) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.request(method, url, timeout=30, **kwargs)
    return response, time.monotonic() - started


def assert_unavailable_fast(stack, job_id: str) -> None:
    for method, path, kwargs in [("POST", "/generate", {"json": {"input_text": "hello"}}),
                                 ("POST", "/v1/moderations", {"json": {"input": "hello"}}),
                                 ("GET", f"/jobs/{job_id}", {}),
                                 ("GET", f"/jobs/{job_id}", {"params": {"wait": 5}})]:
        response, seconds = timed(method, stack.url + path, **kwargs)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"]["code"] == "unavailable" and response.headers["Retry-After"] == "1"
        assert seconds < FAST_ANSWER_SECONDS, (path, seconds)
    ready, seconds = timed("GET", stack.url + "/readyz")
    assert ready.status_code == 503 and seconds < FAST_ANSWER_SECONDS
    assert ready.json()["error"]["message"].startswith("Redis is unreachable")
    assert requests.get(stack.url + "/healthz", timeout=5).status_code == 200


def assert_recovered(stack, worker_pid: int) -> None:
    """The same processes serve again: a new job is accepted and finishes."""
    wait_until(lambda: requests.get(stack.url + "/readyz", timeout=5).status_code == 200, timeout=60,
               what="/readyz to recover")
    # /readyz reads Redis; a separate broker's connections come back on the next publish that finds them
    # gone (one retry), so the first submissions after the outage may still answer 503 for a moment.
    response = wait_until(lambda: (r := submit(stack.url, "great food from mexico")).status_code == 202 and r,
                          timeout=30, interval=0.5, what="a submission to be accepted again")
    job = wait_for_job(stack.url, response.json()["job_id"], timeout=90)
    assert job["status"] == "succeeded", job
    assert stack.worker.alive() and stack.worker.process.pid == worker_pid and stack.api.alive()


def finished_job(stack) -> str:
    response = submit(stack.url, "i love my new puppy")
    assert response.status_code == 202
    assert wait_for_job(stack.url, response.json()["job_id"])["status"] == "succeeded"
    return response.json()["job_id"]


def test_redis_stopped_answers_503_fast_and_recovers_without_restarts(stack):
    job_id = finished_job(stack)
    worker_pid = stack.worker.process.pid
    stack.redis.stop()
    try:
        assert_unavailable_fast(stack, job_id)
    finally:
        stack.redis.start()
    assert_recovered(stack, worker_pid)
    assert requests.get(f"{stack.url}/jobs/{job_id}", timeout=5).json()["status"] == "succeeded"


def test_a_hung_redis_times_out_into_503_and_recovers(stack):
    """SIGSTOP: connections open but nothing answers, as with a network partition."""
    job_id = finished_job(stack)
    worker_pid = stack.worker.process.pid
    os.kill(stack.redis.process.pid, signal.SIGSTOP)
    try:
        assert_unavailable_fast(stack, job_id)
    finally:
        os.kill(stack.redis.process.pid, signal.SIGCONT)
    assert_recovered(stack, worker_pid)


def test_broker_stopped_answers_503_fast_and_recovers_without_restarts(stack):
    """The broker alone is down (for Redis, the one server is both): nothing is accepted, fast."""
    job_id = finished_job(stack)
    worker_pid = stack.worker.process.pid
    outage = stack.redis if stack.broker.is_redis else stack.broker.proxy
    outage.stop()
    try:
        for _ in range(3):
            response, seconds = timed("POST", stack.url + "/generate", json={"input_text": "hello"})
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "unavailable" and response.headers["Retry-After"] == "1"
            assert seconds < FAST_ANSWER_SECONDS, seconds
    finally:
        outage.start()
    assert_recovered(stack, worker_pid)
    assert requests.get(f"{stack.url}/jobs/{job_id}", timeout=5).json()["status"] == "succeeded"


def test_past_max_queue_depth_generate_answers_503_queue_full(stack):
    accepted = [submit(stack.url, f"queued text {i}", model="idle") for i in range(5)]
    assert [r.status_code for r in accepted] == [202] * 5
    sixth = submit(stack.url, "one too many", model="idle")
    assert sixth.status_code == 503 and sixth.headers["Retry-After"] == "1"
    assert sixth.json()["error"]["code"] == "queue_full"
    assert stack.broker.depth(stack.env, queue_for_model("idle")) == 5
    for response in accepted:
        job = requests.get(f"{stack.url}/jobs/{response.json()['job_id']}", timeout=5).json()
        assert job["status"] == "queued"
    # The limit is per model queue: a model whose worker drains its queue still accepts jobs.
    served = submit(stack.url, "the weather is nice today")
    assert served.status_code == 202
    assert wait_for_job(stack.url, served.json()["job_id"])["status"] == "succeeded"


def test_every_submission_after_a_broker_restart_is_accepted(stack):
    """Each API process holds broker connections from before the restart (two gunicorn workers here); the
    first publish or depth read that finds its connection dead retries once on a fresh one, so not even
    the first submission after the broker is back is refused."""
    def accepted(text: str) -> int:
        # One job at a time, waited for, so MAX_QUEUE_DEPTH=5 never comes into play.
        response = requests.post(stack.url + "/generate", json={"input_text": text, "wait": 20}, timeout=40)
        assert response.status_code in (200, 202), response.text
        return wait_for_job(stack.url, response.json()["job_id"], timeout=90)["status"]

    for n in range(6):  # every API process has used (and keeps) its broker connections
        assert accepted(f"before the restart {n}") == "succeeded"
    outage = stack.redis if stack.broker.is_redis else stack.broker.proxy
    outage.stop()
    outage.start()
    wait_until(lambda: requests.get(stack.url + "/readyz", timeout=5).status_code == 200, timeout=60,
               what="/readyz to answer 200 (it reads the record Redis, never publishes)")
    for n in range(6):
        assert accepted(f"after the restart {n}") == "succeeded"
