"""RabbitMQ: pending entries of expired or finished jobs are forgotten (worker/pending_sweep.py), so the API's
moderation_queue_oldest_job_age_seconds, read from the pending index on RabbitMQ, does not grow for ever.

The rule against real Redis (which entries go, oldest first, bounded per call), then a real worker on a
RabbitMQ vhost: a record that expires while queued leaves its entry, the worker's sweep removes it, and the
age on the API's /metrics drops back to that of the oldest job still waiting."""

from __future__ import annotations

import re
import time
import uuid
from contextlib import ExitStack

import requests

from shared.jobs import JobRecord, JobStore, job_key, pending_key
from shared.queues import queue_for_model
from tests.support import RabbitVhost, base_env, start_api, start_worker, wait_until
from worker.pending_sweep import PendingIndex, forget_gone_jobs

MODEL = "tiny"
QUEUE = queue_for_model(MODEL)


def add_record(store: JobStore, published: float, status: str = "queued") -> str:
    job_id = str(uuid.uuid4())
    store.create(JobRecord(job_id=job_id, model=MODEL, queue=QUEUE, texts=["hello"], status=status,
                           enqueued_ts=published))
    return job_id


def test_only_entries_of_gone_or_finished_jobs_are_forgotten_oldest_first(redis_client):
    store, index = JobStore(redis_client, 3600), PendingIndex(redis_client)
    now = time.time()
    expired = [add_record(store, now - 1000 + i) for i in range(6)]
    live = {status: add_record(store, now - 500, status) for status in ("queued", "running")}
    finished = {status: add_record(store, now - 400, status) for status in ("succeeded", "failed", "canceled")}
    for job_id in expired:
        redis_client.delete(job_key(job_id))

    # Bounded: one call looks at the `limit` oldest entries only (here four of the six expired ones).
    assert index.forget_gone(QUEUE, limit=4) == 4
    assert set(redis_client.zrange(pending_key(QUEUE), 0, -1)) == {*expired[4:], *live.values(), *finished.values()}
    # The live entries are kept, and the pass goes on past them to the finished ones.
    assert forget_gone_jobs(index, [MODEL, "other"]) == {QUEUE: 2 + len(finished)}
    assert set(redis_client.zrange(pending_key(QUEUE), 0, -1)) == set(live.values())
    assert forget_gone_jobs(index, [MODEL]) == {}


def oldest_age_metric(api_url: str) -> float:
    text = requests.get(api_url + "/metrics", timeout=10).text
    match = re.search(rf'^moderation_queue_oldest_job_age_seconds{{queue="{re.escape(QUEUE)}"}} ([0-9.e+-]+)$',
                      text, re.M)
    assert match, "moderation_queue_oldest_job_age_seconds not on /metrics"
    return float(match.group(1))


def test_a_rabbitmq_worker_forgets_expired_jobs_and_the_oldest_age_drops_back(redis_server, tiny_multilabel_model,
                                                                             tmp_path):
    client = redis_server.client()
    client.flushall()
    store = JobStore(client, 3600)
    with ExitStack() as cleanup:
        vhost = cleanup.enter_context(RabbitVhost(f"test-pending-sweep-{uuid.uuid4().hex[:12]}"))
        env = base_env(redis_server.url, MODELS=f"{MODEL}={tiny_multilabel_model}", DEFAULT_MODEL=MODEL,
                       CELERY_BROKER_URL=vhost.url)
        api = cleanup.enter_context(start_api(env, tmp_path / "api.log"))
        now = time.time()
        # A job accepted an hour ago whose record expired while it waited, and one whose entry outlived its
        # finish (a race); both leave an entry. The oldest job really waiting was published 60 s ago (no
        # message: nothing runs it, so its entry stays).
        expired = add_record(store, now - 3600)
        finished = add_record(store, now - 1800, status="succeeded")
        waiting = add_record(store, now - 60)
        client.pexpire(job_key(expired), 200)
        wait_until(lambda: not client.exists(job_key(expired)), timeout=10, what="the record to expire")
        assert client.zscore(pending_key(QUEUE), expired) is not None
        assert oldest_age_metric(api.url) >= 3600

        worker = cleanup.enter_context(start_worker(env, tmp_path / "worker.log", models=[MODEL]))
        wait_until(lambda: client.zcard(pending_key(QUEUE)) == 1, timeout=30,
                   what="the worker to forget the entries of the expired and the finished job")
        assert client.zrange(pending_key(QUEUE), 0, -1) == [waiting]
        age = oldest_age_metric(api.url)
        assert 60 <= age < 600, f"oldest-job age {age:.0f}s: not back to the job still waiting"
        assert "forgot the pending entries of expired or finished jobs" in worker.log_tail(1_000_000)
        assert store.get(finished).status == "succeeded"  # only its stray entry went
