"""Queue depth and oldest-message age, read straight from Celery's Redis lists.

Kombu's Redis transport LPUSHes new messages and BRPOPs from the right, so the last element
of each list is the oldest message. Each message carries an `enqueued_at` header (epoch seconds)
set by the API. Lists that do not exist count as 0.
"""

from __future__ import annotations

import json
import time

import redis

from shared.queues import broker_lists


def queue_depth(client: redis.Redis, queue: str) -> int:
    pipe = client.pipeline(transaction=False)
    for name in broker_lists(queue):
        pipe.llen(name)
    return sum(pipe.execute())


def oldest_job_age(client: redis.Redis, queue: str) -> float:
    pipe = client.pipeline(transaction=False)
    for name in broker_lists(queue):
        pipe.lindex(name, -1)
    now, age = time.time(), 0.0
    for raw in pipe.execute():
        if not raw:
            continue
        try:
            enqueued_at = float(json.loads(raw)["headers"]["enqueued_at"])
        except (ValueError, KeyError, TypeError):
            continue
        age = max(age, now - enqueued_at)
    return age
