"""Publish again the jobs whose Celery message vanished.

Kombu's Redis transport pops a message (BRPOP) and only then records it as unacknowledged, so a
worker killed between the two loses it for good: the visibility timeout cannot bring back what was
never recorded (celery/kombu#305). Every job is therefore also listed in its queue's pending set
(shared/jobs.py) until it finishes. A job is lost when it is unfinished, was published before the
oldest message still in its queue (queues are FIFO, so its message has left the queue), is not in
kombu's unacknowledged hash, and is older than a grace period (a message can be in flight between
the pop and the unacked write). Such a job is published again (its texts are in its record). A duplicate
is harmless: finishing is idempotent and the worker skips finished jobs.
One sweep per SWEEP_INTERVAL across all workers (a lock in the broker's Redis).

Only on the Redis transport (RabbitMQ acknowledges on the broker: nothing is lost between a pop and
a record). The queue and the `unacked` hash are read from the broker's Redis (CELERY_BROKER_URL), the
records and the pending sets from the record Redis (REDIS_URL): they may be two servers. An `unacked`
entry this code cannot parse stops the sweep (fail closed): if kombu's format changed, every held job
would otherwise look lost and be published again.
"""

from __future__ import annotations

import json
import logging
import time

import redis
from celery import Celery

from shared.jobs import JobStore
from shared.queue_stats import oldest_enqueued_at
from shared.queues import publish_job, queue_for_model
from worker.background import BackgroundThread

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 5.0
GRACE_SECONDS = 15.0
UNACKED_HASH = "unacked"  # kombu's default unacked_key
LOCK_KEY = "moderation:redelivery-lock"


class UnreadableUnacked(RuntimeError):
    """kombu's `unacked` hash holds an entry in a shape this code does not know."""


def unacked_task_ids(client: redis.Redis) -> set[str]:
    """Task ids of messages some worker holds (delivered, not yet acknowledged); `client` is the broker's."""
    ids = set()
    for tag, raw in client.hgetall(UNACKED_HASH).items():
        try:
            task_id = json.loads(raw)[0]["headers"]["id"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UnreadableUnacked(f"cannot read kombu's unacked entry {tag!r}: {exc!r}") from exc
        if not isinstance(task_id, str):
            raise UnreadableUnacked(f"kombu's unacked entry {tag!r} has no string task id")
        ids.add(task_id)
    return ids


def republish_lost_jobs(broker: redis.Redis, store: JobStore, celery: Celery, models: list[str]) -> list[str]:
    """`broker`: a client on the broker's Redis; `store`: the job records (possibly another Redis)."""
    republished = []
    for model in models:
        queue = queue_for_model(model)
        cutoff = time.time() - GRACE_SECONDS
        oldest = oldest_enqueued_at(broker, queue)
        if oldest is not None:
            cutoff = min(cutoff, oldest - 0.001)
        candidates = store.pending_before(queue, cutoff)
        if not candidates:
            continue
        held = unacked_task_ids(broker)
        for job_id in candidates:
            if job_id in held:
                continue
            record = store.get(job_id)
            if record is None or record.finished:
                store.forget_pending(queue, job_id)
                continue
            now = time.time()
            publish_job(celery, job_id, model, now)
            store.mark_republished(queue, job_id, now)
            republished.append(job_id)
    if republished:
        log.warning("published %d job(s) again whose message was lost: %s", len(republished),
                    ", ".join(republished[:10]))
    return republished


class RedeliverySweeper(BackgroundThread):
    """The sweep loop, in its own thread (started and stopped by worker/bootsteps.py)."""

    def __init__(self, broker: redis.Redis, store: JobStore, celery: Celery, hostname: str, models: list[str]):
        super().__init__("redelivery")
        self.broker, self.store, self.celery = broker, store, celery
        self.hostname, self.models = hostname, models

    def _run(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL):
            try:
                if self.broker.set(LOCK_KEY, self.hostname, nx=True, ex=int(SWEEP_INTERVAL)):
                    republish_lost_jobs(self.broker, self.store, self.celery, self.models)
            except Exception as exc:  # Redis down, a broker error, an unreadable unacked entry: next sweep
                log.warning("redelivery sweep failed: %s", exc)
