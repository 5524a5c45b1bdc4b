"""Jobs whose Celery message vanished (kombu's BRPOP -> unacked window) are published again, others not.

The `unacked` entries are written by kombu itself (a real consumer that receives and holds a message),
so a change in kombu's format fails these tests; an entry the parser cannot read stops the sweep.
The records and the broker are two Redis servers here, as CELERY_BROKER_URL allows: every broker read
must go to the broker's Redis.
"""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager

import pytest
from kombu import Consumer, Queue

from shared.celery_app import make_celery
from shared.config import load_settings
from shared.jobs import JobRecord, JobStore, pending_key
from shared.queue_stats import queue_depth
from shared.queues import publish_job, queue_for_model
from tests.support import RedisServer
from worker.redelivery import UNACKED_HASH, UnreadableUnacked, republish_lost_jobs, unacked_task_ids

MODEL = "m"
QUEUE = queue_for_model(MODEL)


@pytest.fixture(scope="module")
def broker_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("broker-redis")).start() as server:
        yield server


@pytest.fixture
def parts(redis_client, redis_server, broker_server):
    broker = broker_server.client()
    broker.flushall()
    store = JobStore(redis_client, 600)
    celery = make_celery(load_settings({"REDIS_URL": redis_server.url, "CELERY_BROKER_URL": broker_server.url}))
    return broker, store, celery


def make_job(store: JobStore, age: float, text: str = "hello") -> JobRecord:
    record = JobRecord(job_id=str(uuid.uuid4()), model=MODEL, queue=QUEUE, texts=[text],
                       enqueued_ts=time.time() - age)
    store.create(record)
    return record


@contextmanager
def held_by_a_consumer(celery, record: JobRecord):
    """Publish the job's message and receive it with a real kombu consumer that does not acknowledge it:
    kombu writes its own `unacked` entry, as it does for a worker mid-batch."""
    publish_job(celery, record.job_id, MODEL, record.enqueued_ts)
    received = []
    with celery.connection_for_read() as connection:
        channel = connection.channel()
        with Consumer(channel, queues=[Queue(QUEUE)], callbacks=[lambda body, message: received.append(message)],
                      accept=["json"]):
            connection.drain_events(timeout=10)
            assert len(received) == 1
            yield received[0]
            received[0].ack()


def test_only_the_job_whose_message_vanished_is_published_again(parts, redis_client):
    broker, store, celery = parts
    held = make_job(store, age=120)  # a consumer holds its message (delivered, not acknowledged)
    with held_by_a_consumer(celery, held):
        assert unacked_task_ids(broker) == {held.job_id}
        waiting = make_job(store, age=60)  # its message is still in the queue: a backlog, not a loss
        publish_job(celery, waiting.job_id, MODEL, waiting.enqueued_ts)
        lost = make_job(store, age=120, text="lost one")  # record and pending entry, no message anywhere
        recent = make_job(store, age=1)  # within the grace period: may be between pop and unacked write

        assert republish_lost_jobs(broker, store, celery, [MODEL]) == [lost.job_id]
        assert queue_depth(broker, QUEUE) == 2 and queue_depth(redis_client, QUEUE) == 0
        assert broker.lindex(QUEUE, 0) and lost.job_id in broker.lindex(QUEUE, 0)
        # Published again means "new" for the FIFO rule: the next sweep leaves it alone.
        assert republish_lost_jobs(broker, store, celery, [MODEL]) == []
        assert recent.job_id in redis_client.zrange(pending_key(QUEUE), 0, -1)


def test_an_unreadable_unacked_entry_stops_the_sweep(parts):
    """Fail closed: if kombu's format changed, every held job would look lost and be published again."""
    broker, store, celery = parts
    held = make_job(store, age=120)
    with held_by_a_consumer(celery, held):
        broker.hset(UNACKED_HASH, "tag-from-the-future", '{"a": "shape this code does not know"}')
        with pytest.raises(UnreadableUnacked, match="tag-from-the-future"):
            republish_lost_jobs(broker, store, celery, [MODEL])
        assert queue_depth(broker, QUEUE) == 0
        broker.hdel(UNACKED_HASH, "tag-from-the-future")


def test_finished_or_expired_jobs_leave_the_pending_set(parts, redis_client):
    broker, store, celery = parts
    done = make_job(store, age=120)
    store.finish_many([(done.job_id, [{"flagged": False}], None)])
    assert done.job_id not in redis_client.zrange(pending_key(QUEUE), 0, -1)  # the finish script removed it
    assert "texts" not in redis_client.hkeys(f"moderation:job:{done.job_id}")
    expired = make_job(store, age=120)
    redis_client.delete(f"moderation:job:{expired.job_id}")
    assert republish_lost_jobs(broker, store, celery, [MODEL]) == []
    assert redis_client.zcard(pending_key(QUEUE)) == 0 and queue_depth(broker, QUEUE) == 0
