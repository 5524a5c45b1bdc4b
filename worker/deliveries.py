"""How many workers died holding each job: the cap on poison jobs, on both brokers.

Each job's hash `moderation:deliveries:<job id>` (shared/jobs.py, DELIVERIES_PREFIX) holds `owner` (the
worker whose lease holds the job), `attempt` (the worker that handed it to the model), `worker` (the last
worker that ran it: the one whose result was stored, since stored jobs are never run again) and `deaths`.

A job whose processing kills the worker process (out of memory, a native crash in a tokenizer or a
kernel) is never acknowledged, so the broker delivers it again, and it would kill the next worker
forever. Just before a job's texts go to the model, record() names this worker as its `attempt`. When
another worker later claims the job and finds that worker's lease expired (it stopped renewing: it
died), the claim script counts one death and clears `attempt`, so each death counts once. A job about
to run with MAX_DELIVERIES deaths is failed instead, with a clear error. Only deaths count: an error
the worker caught (a Redis outage, an exception in inference) leaves the lease alive and is not a
death, and a clean shutdown that puts prefetched messages back does not count either, since they never
reached the model. Counting here rather than trusting the broker works the same on Redis (no delivery
count at all) and RabbitMQ (whose quorum-queue x-delivery-limit is a backstop that parks, never drops,
shared/celery_app.py).

A process runs WORKER_CONCURRENCY batches at once, and a crash takes all of them down: a job a worker died
with (a suspect) therefore runs with nothing else of this process at the model (MODEL_GATE), so a death
counts against it alone, never against an innocent job that shared the process with it.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
import threading
from contextlib import contextmanager

import redis

from shared.keyspace import keyspace_for


@functools.cache
def worker_name() -> str:
    """This worker process's Celery hostname (also its heartbeat entry). The random part keeps names
    unique where containers share a host name and PID numbers (host networking)."""
    return f"moderation-{os.getpid()}@{socket.gethostname()}.{secrets.token_hex(3)}"


def poison_error(count: int) -> str:
    return f"the worker died while processing this job {count} times"


class DeliveryCounter:
    def __init__(self, client: redis.Redis, ttl_seconds: int, max_deliveries: int):
        self.redis, self.ttl, self.max_deliveries = client, ttl_seconds, max_deliveries
        self._key = keyspace_for(client).deliveries_key  # shared/keyspace.py: in the job's hash slot on a cluster

    def counts(self, job_ids: list[str]) -> list[int]:
        """How many workers died after handing each job to the model (0: none)."""
        if not job_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self._key(job_id), "deaths")
        return [int(value or 0) for value in pipe.execute()]

    def record(self, job_ids: list[str]) -> None:
        """Name this worker as the one handing each job to the model (a death is counted from it)."""
        if not job_ids:
            return
        name = worker_name()
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hset(self._key(job_id), mapping={"worker": name, "attempt": name})
            pipe.expire(self._key(job_id), self.ttl)
        pipe.execute()

    def last_workers(self, job_ids: list[str]) -> list[str | None]:
        """The worker process that last ran each job (None: never run)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self._key(job_id), "worker")
        return pipe.execute()


class ModelGate:
    """Model work of this process: first-time jobs share it; a suspect holds it alone (writer-preferring, so a
    waiting suspect is not starved). A batch waits at most for the passes in flight to be stored. The jobs
    of a batch waiting here are claimed but not yet handed to the model (`attempt` unset): a crash counts
    no death for them."""

    def __init__(self):
        self._changed = threading.Condition()
        self._sharing = 0
        self._alone = False
        self._suspects_waiting = 0

    @contextmanager
    def shared(self):
        with self._changed:
            self._changed.wait_for(lambda: not self._alone and not self._suspects_waiting)
            self._sharing += 1
        try:
            yield
        finally:
            with self._changed:
                self._sharing -= 1
                self._changed.notify_all()

    @contextmanager
    def alone(self):
        with self._changed:
            self._suspects_waiting += 1
            try:
                self._changed.wait_for(lambda: not self._alone and not self._sharing)
            finally:
                self._suspects_waiting -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._changed:
                self._alone = False
                self._changed.notify_all()


MODEL_GATE = ModelGate()
