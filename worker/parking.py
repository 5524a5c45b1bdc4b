"""Parked messages (RabbitMQ only): publish them again, or fail their job; never leave a job stuck.

A quorum queue dead-letters a message delivered more than x-delivery-limit times into its model's
parking queue (shared/celery_app.py) instead of dropping it. The broker counts every return to the
queue, including those of innocent messages a killed worker had prefetched, so the broker's count is
not the job's: the worker's own count of deaths (worker/deliveries.py) decides. Every SWEEP_INTERVAL
one worker (a lock in the job store) reads each parking queue:
- a finished, canceled or expired job: the parked copy is dropped (acknowledged);
- a job with MAX_DELIVERIES deaths or more: failed with the poison error (counted once in
  moderation_jobs_completed_total{status="failed"}, only if this call stored it), then acknowledged;
- any other job: published again (a fresh message, delivery count 0, with publisher confirms), then
  the parked copy is acknowledged. A crash in between leaves the parked copy, so the worst case is a
  duplicate message, which the worker skips or runs once (shared/jobs.py: claim).
Each sweep that settles anything logs its counts ("parked messages settled: republished=N failed=N dropped=N").
Also declares the parking exchange and queues at start, so the first dead-letter has somewhere to go
(with at-least-once dead-lettering RabbitMQ keeps a message in its queue until it can be routed).
"""

from __future__ import annotations

import logging
import time

from celery import Celery
from kombu import Connection

from shared.celery_app import parking_queue
from shared.jobs import FAILED, JobStore
from shared.queues import publish_job, queue_for_model
from worker import metrics
from worker.background import BackgroundThread
from worker.deliveries import DeliveryCounter, poison_error

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 5.0
BATCH = 200  # parked messages handled per queue and sweep
LOCK_KEY = "moderation:parking-lock"


def reconcile_parked(connection: Connection, store: JobStore, deliveries: DeliveryCounter, celery: Celery,
                     models: list[str], max_deliveries: int) -> dict[str, int]:
    """One pass over every model's parking queue; returns how many messages were re-published, failed, dropped."""
    done = {"republished": 0, "failed": 0, "dropped": 0}
    channel = connection.default_channel
    for model in models:
        queue = parking_queue(queue_for_model(model))(channel)
        queue.declare()
        for _ in range(BATCH):
            message = queue.get(no_ack=False, accept=["json"])
            if message is None:
                break
            done[_settle(message, store, deliveries, celery, model, max_deliveries)] += 1
    if any(done.values()):
        # One line per sweep that settled anything (tests/test_parking.py reads the counts from it).
        log.log(logging.WARNING if done["republished"] or done["failed"] else logging.INFO,
                "parked messages settled: republished=%d failed=%d dropped=%d",
                done["republished"], done["failed"], done["dropped"])
    return done


def _settle(message, store: JobStore, deliveries: DeliveryCounter, celery: Celery, model: str,
            max_deliveries: int) -> str:
    args = message.payload[0] if isinstance(message.payload, (list, tuple)) and message.payload else []
    job_id = args[0] if args and isinstance(args[0], str) else message.headers.get("id")
    record = store.get(job_id) if job_id else None
    if record is None or record.finished:
        message.ack()
        return "dropped"
    [deaths] = deliveries.counts([job_id])
    if deaths >= max_deliveries:
        [stored] = store.finish_many([(job_id, None, poison_error(deaths))])
        message.ack()
        if not stored:  # a worker finished it meanwhile: it counted it, and this copy was a spare
            return "dropped"
        metrics.JOBS_COMPLETED.labels(record.model or model, FAILED).inc()  # counted once, by the call that failed it
        return "failed"
    publish_job(celery, job_id, record.model or model, time.time())
    message.ack()
    return "republished"


class ParkingReconciler(BackgroundThread):
    """The sweep loop, in its own thread with its own broker connection (started by worker/bootsteps.py)."""

    def __init__(self, celery: Celery, store: JobStore, deliveries: DeliveryCounter, hostname: str,
                 models: list[str], max_deliveries: int):
        super().__init__("parking")
        self.celery, self.store, self.deliveries = celery, store, deliveries
        self.hostname, self.models, self.max_deliveries = hostname, models, max_deliveries

    def _run(self) -> None:
        connection = None
        first = True
        while not self._stop.wait(0 if first else SWEEP_INTERVAL):
            first = False
            try:
                if connection is None:
                    connection = self.celery.connection_for_write()
                    connection.ensure_connection(max_retries=1)
                # Declaring is every worker's job (the first dead-letter needs the queue); draining, one's.
                if self.store.redis.set(LOCK_KEY, self.hostname, nx=True, ex=int(SWEEP_INTERVAL)):
                    reconcile_parked(connection, self.store, self.deliveries, self.celery, self.models,
                                     self.max_deliveries)
                else:
                    for model in self.models:
                        parking_queue(queue_for_model(model))(connection.default_channel).declare()
            except Exception as exc:  # broker or store unreachable: the next sweep tries again
                log.warning("parking sweep failed: %s", exc)
                if connection is not None:
                    connection.collect()
                connection = None
        if connection is not None:
            connection.release()
