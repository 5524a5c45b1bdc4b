"""Jobs whose Celery message vanished (kombu's BRPOP -> unacked window) are published again, others not."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from shared.celery_app import make_celery
from shared.config import load_settings
from shared.jobs import JobRecord, JobStore, pending_key
from shared.queue_stats import queue_depth
from shared.queues import publish_job, queue_for_model
from worker.redelivery import UNACKED_HASH, republish_lost_jobs

MODEL = "m"
QUEUE = queue_for_model(MODEL)


@pytest.fixture
def parts(redis_client, redis_server):
    store = JobStore(redis_client, 600)
    celery = make_celery(load_settings({"REDIS_URL": redis_server.url}))
    return redis_client, store, celery


def make_job(store: JobStore, age: float, text: str = "hello") -> JobRecord:
    record = JobRecord(job_id=str(uuid.uuid4()), model=MODEL, queue=QUEUE, texts=[text],
                       enqueued_ts=time.time() - age)
    store.create(record)
    return record


def test_only_the_job_whose_message_vanished_is_published_again(parts):
    client, store, celery = parts
    waiting = make_job(store, age=60)  # its message is still in the queue: a backlog, not a loss
    publish_job(celery, waiting.job_id, MODEL, waiting.texts, waiting.enqueued_ts)
    lost = make_job(store, age=120, text="lost one")  # record and pending entry, no message anywhere
    held = make_job(store, age=120)  # a worker holds its message (unacknowledged)
    client.hset(UNACKED_HASH, "tag-1", json.dumps([{"headers": {"id": held.job_id}}, "", QUEUE]))
    recent = make_job(store, age=1)  # within the grace period: may be between pop and unacked write

    assert republish_lost_jobs(client, store, celery, [MODEL]) == [lost.job_id]
    assert queue_depth(client, QUEUE) == 2
    republished = json.loads(client.lindex(QUEUE, 0))
    assert republished["headers"]["id"] == lost.job_id
    # Published again means "new" for the FIFO rule: the next sweep leaves it alone.
    assert republish_lost_jobs(client, store, celery, [MODEL]) == []
    assert recent.job_id in client.zrange(pending_key(QUEUE), 0, -1)


def test_finished_or_expired_jobs_leave_the_pending_set(parts):
    client, store, celery = parts
    done = make_job(store, age=120)
    store.finish_many([(done.job_id, [{"flagged": False}], None)])
    assert done.job_id not in client.zrange(pending_key(QUEUE), 0, -1)  # the finish script removed it
    assert "texts" not in client.hkeys(f"moderation:job:{done.job_id}")
    expired = make_job(store, age=120)
    client.delete(f"moderation:job:{expired.job_id}")
    assert republish_lost_jobs(client, store, celery, [MODEL]) == []
    assert client.zcard(pending_key(QUEUE)) == 0 and queue_depth(client, QUEUE) == 0
