"""CELERY_BROKER_URL names another Redis than REDIS_URL (records, cache, heartbeats): every broker read
goes to the broker's Redis. Queue depth (/metrics and MAX_QUEUE_DEPTH) counts the broker's lists, and
the re-publisher does not mistake a healthy backlog for lost messages."""

from __future__ import annotations

import re
from contextlib import ExitStack

import pytest
import requests

from shared.queue_stats import queue_depth
from shared.queues import queue_for_model
from tests.support import RedisServer, base_env, start_api, start_worker, wait_for_job, wait_until


@pytest.fixture(scope="module")
def two_redis_stack(tiny_multilabel_model, tmp_path_factory):
    logs = tmp_path_factory.mktemp("two-redis-logs")
    with ExitStack() as cleanup:
        records = cleanup.enter_context(RedisServer(tmp_path_factory.mktemp("records")).start())
        broker = cleanup.enter_context(RedisServer(tmp_path_factory.mktemp("broker")).start())
        # "idle" has a queue but no worker, so its jobs wait against MAX_QUEUE_DEPTH.
        env = base_env(records.url, CELERY_BROKER_URL=broker.url, DEFAULT_MODEL="tiny", WORKER_MODELS="tiny",
                       MODELS=f"tiny={tiny_multilabel_model},idle={tiny_multilabel_model}", MAX_QUEUE_DEPTH="3")
        api = cleanup.enter_context(start_api(env, logs / "api.log"))
        worker = cleanup.enter_context(start_worker(env, logs / "worker.log", models=["tiny"]))
        yield api, worker, records.client(), broker.client()


def queue_metric(api_url: str, name: str, queue: str) -> float:
    text = requests.get(api_url + "/metrics", timeout=10).text
    match = re.search(rf'^{name}{{queue="{re.escape(queue)}"}} ([0-9.e+-]+)$', text, re.M)
    assert match, f"{name} for {queue} not on /metrics"
    return float(match.group(1))


def test_depth_and_backpressure_read_the_broker_redis(two_redis_stack):
    api, _, records, broker = two_redis_stack
    idle = queue_for_model("idle")
    accepted = [requests.post(api.url + "/generate", json={"input_text": f"waiting {i}", "model": "idle"},
                              timeout=10) for i in range(3)]
    assert [r.status_code for r in accepted] == [202] * 3
    assert queue_depth(broker, idle) == 3 and queue_depth(records, idle) == 0
    assert queue_metric(api.url, "moderation_queue_depth", idle) == 3
    assert queue_metric(api.url, "moderation_queue_oldest_job_age_seconds", idle) > 0
    full = requests.post(api.url + "/generate", json={"input_text": "one too many", "model": "idle"}, timeout=10)
    assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
    assert full.headers["Retry-After"] == "1"


def test_jobs_flow_through_the_broker_redis_and_nothing_is_published_again(two_redis_stack):
    api, worker, records, broker = two_redis_stack
    tiny = queue_for_model("tiny")
    responses = []
    for i in range(20):
        # MAX_QUEUE_DEPTH is 3 here: on a busy machine the worker may be 3 jobs behind, so each job goes in
        # once the broker's queue has room (only this test feeds it), as a client honouring 503 would.
        wait_until(lambda: queue_depth(broker, tiny) < 3, timeout=60, what="room in the tiny queue")
        responses.append(requests.post(api.url + "/generate", json={"input_text": f"the weather is nice {i}"},
                                       timeout=10))
    assert [r.status_code for r in responses] == [202] * 20, responses[0].text
    job_ids = [r.json()["job_id"] for r in responses]
    for job_id in job_ids:
        assert wait_for_job(api.url, job_id)["status"] == "succeeded"
    # The re-publisher swept at least once with the jobs in flight (it sweeps every 5 s): it read the
    # broker's queue and `unacked` hash, so it found no job to publish again.
    assert "redelivery sweep failed" not in worker.log_tail(1_000_000)
    assert "again whose message was lost" not in worker.log_tail(1_000_000)
    assert not records.keys("_kombu*") and not records.exists("unacked")
    assert broker.keys("_kombu.binding.*")  # the queues live in the broker Redis
