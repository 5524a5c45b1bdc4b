"""Publish again the jobs whose Celery message vanished.

Kombu's Redis transport pops a message (BRPOP) and only then records it as unacknowledged, so a
worker killed between the two loses it for good: the visibility timeout cannot bring back what was
never recorded (celery/kombu#305). Every job is therefore also listed in its queue's pending set
(shared/jobs.py) until it finishes. A job is lost when it is unfinished, was published before the
oldest message still in its queue (queues are FIFO, so its message has left the queue), is not in
kombu's unacknowledged hash, and is older than a grace period (a message can be in flight between
the pop and the unacked write). Such a job is published again with its stored texts. A duplicate
is harmless: finishing is idempotent and the worker skips finished jobs.
One sweep per SWEEP_INTERVAL across all workers (a Redis lock).
"""

from __future__ import annotations

import json
import logging
import threading
import time

import redis
from celery import Celery

from shared.jobs import JobStore
from shared.queue_stats import oldest_enqueued_at
from shared.queues import publish_job, queue_for_model

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 5.0
GRACE_SECONDS = 15.0
UNACKED_HASH = "unacked"  # kombu's default unacked_key
LOCK_KEY = "moderation:redelivery-lock"


def unacked_task_ids(client: redis.Redis) -> set[str]:
    """Task ids of messages some worker holds (delivered, not yet acknowledged)."""
    ids = set()
    for raw in client.hvals(UNACKED_HASH):
        try:
            ids.add(json.loads(raw)[0]["headers"]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    return ids


def republish_lost_jobs(client: redis.Redis, store: JobStore, celery: Celery, models: list[str]) -> list[str]:
    republished = []
    for model in models:
        queue = queue_for_model(model)
        cutoff = time.time() - GRACE_SECONDS
        oldest = oldest_enqueued_at(client, queue)
        if oldest is not None:
            cutoff = min(cutoff, oldest - 0.001)
        candidates = store.pending_before(queue, cutoff)
        if not candidates:
            continue
        held = unacked_task_ids(client)
        for job_id in candidates:
            if job_id in held:
                continue
            record = store.get(job_id)
            if record is None or record.finished:
                store.forget_pending(queue, job_id)
                continue
            now = time.time()
            publish_job(celery, job_id, model, record.texts or [], now)
            store.mark_republished(queue, job_id, now)
            republished.append(job_id)
    if republished:
        log.warning("published %d job(s) again whose message was lost: %s", len(republished),
                    ", ".join(republished[:10]))
    return republished


class RedeliverySweeper:
    def __init__(self, client: redis.Redis, store: JobStore, celery: Celery, hostname: str, models: list[str]):
        self.client, self.store, self.celery = client, store, celery
        self.hostname, self.models = hostname, models
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redelivery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL):
            try:
                if self.client.set(LOCK_KEY, self.hostname, nx=True, ex=int(SWEEP_INTERVAL)):
                    republish_lost_jobs(self.client, self.store, self.celery, self.models)
            except Exception as exc:  # Redis down or a broker error: try again next sweep
                log.warning("redelivery sweep failed: %s", exc)
