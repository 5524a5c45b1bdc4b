"""How many times each job was handed to inference: the cap on poison jobs, on both brokers.

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

import redis

KEY_PREFIX = "moderation:deliveries:"


def poison_error(count: int) -> str:
    return f"the worker died while processing this job {count} times"


class DeliveryCounter:
    def __init__(self, client: redis.Redis, ttl_seconds: int, max_deliveries: int):
        self.redis, self.ttl, self.max_deliveries = client, ttl_seconds, max_deliveries

    def counts(self, job_ids: list[str]) -> list[int]:
        """How many times each job already reached the model (0: a first delivery)."""
        if not job_ids:
            return []
        return [int(value or 0) for value in self.redis.mget([KEY_PREFIX + job_id for job_id in job_ids])]

    def record(self, job_ids: list[str]) -> None:
        """Count one more attempt for each job, before its texts reach the model."""
        if not job_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.incr(KEY_PREFIX + job_id)
            pipe.expire(KEY_PREFIX + job_id, self.ttl)
        pipe.execute()
