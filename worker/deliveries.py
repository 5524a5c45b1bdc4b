"""How many times each job was handed to inference: the cap on poison jobs, on both brokers.

Each job's hash `moderation:deliveries:<job id>` holds `count` and `worker`, the last worker process
that ran it (the one whose result was stored, since stored jobs are never run again).

A job whose processing kills the worker process (out of memory, a native crash in a tokenizer or a
kernel) is never acknowledged, so the broker delivers it again, and it would kill the next worker
forever. Each job's count lives in Redis (`moderation:deliveries:<job id>`, expiring with the record)
and is incremented just before the job's texts go to the model. A job about to run a
MAX_DELIVERIES+1-th time is failed instead, with a clear error. Counting here rather than trusting
the broker works the same on Redis (no delivery count at all) and RabbitMQ (whose quorum-queue
x-delivery-limit is kept above MAX_DELIVERIES as a backstop, shared/celery_app.py), and a clean
shutdown that puts prefetched messages back does not count, since they never reached the model.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket

import redis

KEY_PREFIX = "moderation:deliveries:"


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

    def counts(self, job_ids: list[str]) -> list[int]:
        """How many times each job already reached the model (0: a first delivery)."""
        if not job_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(KEY_PREFIX + job_id, "count")
        return [int(value or 0) for value in pipe.execute()]

    def record(self, job_ids: list[str]) -> None:
        """Count one more attempt for each job, before its texts reach the model."""
        if not job_ids:
            return
        name = worker_name()
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hincrby(KEY_PREFIX + job_id, "count", 1)
            pipe.hset(KEY_PREFIX + job_id, "worker", name)
            pipe.expire(KEY_PREFIX + job_id, self.ttl)
        pipe.execute()

    def last_workers(self, job_ids: list[str]) -> list[str | None]:
        """The worker process that last ran each job (None: never run)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(KEY_PREFIX + job_id, "worker")
        return pipe.execute()
