"""Queue depth and oldest-message age, read straight from Celery's Redis lists.

Kombu's Redis transport LPUSHes new messages and BRPOPs from the right, so the last element
of each list is the oldest message. Each message carries an `enqueued_at` header (epoch seconds)
set by the API. Lists that do not exist count as 0.

`client` must be a client on the broker's Redis (CELERY_BROKER_URL), which may not be the record Redis:
the API and the CLI's `status` read these through shared/broker.py (RedisBrokerQueues), which picks
the right server and covers RabbitMQ too; call these directly only with a broker client in hand.
"""

from __future__ import annotations

import json
import time

import redis

from shared.queues import broker_lists


def queue_depth(client: redis.Redis, queue: str) -> int:
    pipe = client.pipeline(transaction=False)
    count = add_queue_depth(pipe, queue)
    return sum(pipe.execute()[:count])


def add_queue_depth(pipe: redis.client.Pipeline, queue: str) -> int:
    """Queue the reads of one queue's depth on `pipe` (to share a round trip); returns how many of the
    pipeline's first results to add up."""
    names = broker_lists(queue)
    for name in names:
        pipe.llen(name)
    return len(names)


def oldest_enqueued_at(client: redis.Redis, queue: str) -> float | None:
    """`enqueued_at` of the oldest message waiting in the queue; None when it is empty."""
    pipe = client.pipeline(transaction=False)
    for name in broker_lists(queue):
        pipe.lindex(name, -1)
    oldest = None
    for raw in pipe.execute():
        try:
            enqueued_at = float(json.loads(raw)["headers"]["enqueued_at"]) if raw else None
        except (ValueError, KeyError, TypeError):
            continue
        if enqueued_at is not None and (oldest is None or enqueued_at < oldest):
            oldest = enqueued_at
    return oldest


def oldest_job_age(client: redis.Redis, queue: str) -> float:
    oldest = oldest_enqueued_at(client, queue)
    return 0.0 if oldest is None else max(0.0, time.time() - oldest)
