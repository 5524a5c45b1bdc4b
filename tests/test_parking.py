"""RabbitMQ parks, never drops: a message past the quorum queue's delivery limit is dead-lettered
(at-least-once) into its parking queue, the API reports it (moderation_queue_parked_messages), and a
worker's reconciler settles it: an unfinished job is published again and succeeds, a job with
MAX_DELIVERIES worker deaths is failed with the poison error, a finished job's copy is dropped. The end
states alone cannot tell these apart (a re-published poison job is failed by the next claim, a re-published
finished job is skipped), so the test also checks the reconciler's own counts (its log line per sweep) and
the worker's moderation_jobs_completed_total{status="failed"} (the poison finish counted once)."""

from __future__ import annotations

import re
import time
import uuid
from contextlib import ExitStack

import pytest
import requests
from kombu import Connection

from shared import metrics as names
from shared.celery_app import make_celery, model_queues, parking_queue
from shared.config import load_settings
from shared.jobs import DELIVERIES_PREFIX, JobRecord, JobStore
from shared.queues import publish_job, queue_for_model
from tests.scrape import metric, worker_samples
from tests.support import RabbitVhost, base_env, start_api, start_worker, wait_until
from worker.deliveries import poison_error

MODEL = "tiny"
QUEUE = queue_for_model(MODEL)
MAX_DELIVERIES = 2


SETTLED = re.compile(r"parked messages settled: republished=(\d+) failed=(\d+) dropped=(\d+)")


def settled_counts(log: str) -> dict[str, int]:
    """The reconciler's outcomes, added up over its sweeps' log lines (worker/parking.py)."""
    totals = {"republished": 0, "failed": 0, "dropped": 0}
    for match in SETTLED.finditer(log):
        for name, count in zip(totals, match.groups()):
            totals[name] += int(count)
    return totals


def parked_metric(api_url: str) -> float:
    text = requests.get(api_url + "/metrics", timeout=10).text
    match = re.search(rf'^moderation_queue_parked_messages{{queue="{re.escape(QUEUE)}"}} ([0-9.e+-]+)$', text, re.M)
    assert match, "moderation_queue_parked_messages not on /metrics"
    return float(match.group(1))


@pytest.fixture
def rabbit_stack(redis_server, tiny_multilabel_model, tmp_path):
    client = redis_server.client()
    client.flushall()
    with ExitStack() as cleanup:
        vhost = cleanup.enter_context(RabbitVhost(f"test-parking-{uuid.uuid4().hex[:12]}"))
        env = base_env(redis_server.url, MODELS=f"{MODEL}={tiny_multilabel_model}", DEFAULT_MODEL=MODEL,
                       CELERY_BROKER_URL=vhost.url, MAX_DELIVERIES=str(MAX_DELIVERIES))
        api = cleanup.enter_context(start_api(env, tmp_path / "api.log"))
        yield env, vhost, api, JobStore(client, 3600), cleanup


def test_messages_past_the_delivery_limit_are_parked_then_republished_or_failed(rabbit_stack, tmp_path):
    env, vhost, api, store, cleanup = rabbit_stack
    settings = load_settings(env)
    celery = make_celery(settings)
    jobs = {name: str(uuid.uuid4()) for name in ("unfinished", "poison", "finished")}
    for name, job_id in jobs.items():
        store.create(JobRecord(job_id=job_id, model=MODEL, queue=QUEUE, texts=[f"the {name} job"]))
        publish_job(celery, job_id, MODEL, time.time())
    store.finish_many([(jobs["finished"], [], None)])
    # Two workers died running the poison job (as worker/deliveries.py counts them).
    store.redis.hset(DELIVERIES_PREFIX + jobs["poison"], "deaths", MAX_DELIVERIES)

    # A consumer that hands every message back, as a crash loop would: past the limit, each is parked.
    # (Counts come from passive declares: rabbitmqctl's queue statistics lag by seconds.)
    with Connection(vhost.url) as connection:
        channel = connection.default_channel
        parking_queue(QUEUE)(channel).declare()  # as every worker does at start
        [queue] = [q(channel) for q in model_queues(settings) if q.name == QUEUE]

        def parked() -> int:
            return channel.queue_declare(queue=QUEUE + ".parked", passive=True).message_count

        def hand_back() -> bool:
            message = queue.get(no_ack=False)
            if message is not None:
                message.reject(requeue=True)
            return parked() == len(jobs)
        wait_until(hand_back, timeout=60, interval=0.01, what="every message to be parked")
        assert channel.queue_declare(queue=QUEUE, passive=True).message_count == 0
    assert parked_metric(api.url) == 3

    worker = cleanup.enter_context(start_worker(env, tmp_path / "worker.log", models=[MODEL]))
    wait_until(lambda: all(store.get(j).finished for j in jobs.values()) and parked_metric(api.url) == 0,
               timeout=90, what="the parked jobs to be settled")
    assert store.get(jobs["unfinished"]).status == "succeeded"
    poison = store.get(jobs["poison"])
    assert poison.status == "failed" and poison.error == poison_error(MAX_DELIVERIES)
    assert store.get(jobs["finished"]).status == "succeeded"

    # Each job took its own one of the three outcomes (the log line follows the sweep's last ack).
    expected = {"republished": 1, "failed": 1, "dropped": 1}
    wait_until(lambda: sum(settled_counts(worker.log_tail(1_000_000)).values()) >= len(jobs), timeout=10,
               what="the reconciler's log line")
    assert settled_counts(worker.log_tail(1_000_000)) == expected
    # The poison finish is counted once as failed; the re-published job once as succeeded, by its batch.
    metrics_url = f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics"

    def completed() -> dict[str, float]:
        samples = worker_samples(metrics_url)
        return {status: metric(samples, names.JOBS_COMPLETED_TOTAL, MODEL, status=status)
                for status in ("succeeded", "failed")}
    # (A batch counts its jobs just after storing them: wait for that, then check the exact counts.)
    wait_until(lambda: completed()["succeeded"] >= 1, timeout=10, what="the re-published job to be counted")
    assert completed() == {"succeeded": 1, "failed": 1}

