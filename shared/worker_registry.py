"""Which workers are alive and which models they serve.

Each worker refreshes its entry in a per-model sorted set (score = last heartbeat time) every
HEARTBEAT_INTERVAL seconds; an entry older than LIVE_WINDOW counts as dead. This answers
/readyz and /models with one Redis call instead of a Celery broadcast that waits for replies.
"""

from __future__ import annotations

import time

import redis

HEARTBEAT_INTERVAL = 2.0
LIVE_WINDOW = 3 * HEARTBEAT_INTERVAL + 1


def _key(model: str) -> str:
    return f"moderation:workers:{model}"


def heartbeat(client: redis.Redis, hostname: str, models: list[str]) -> None:
    now = time.time()
    pipe = client.pipeline()
    for model in models:
        pipe.zadd(_key(model), {hostname: now})
        pipe.zremrangebyscore(_key(model), 0, now - LIVE_WINDOW)
    pipe.execute()


def leave(client: redis.Redis, hostname: str, models: list[str]) -> None:
    pipe = client.pipeline()
    for model in models:
        pipe.zrem(_key(model), hostname)
    pipe.execute()


def live_workers(client: redis.Redis, models: list[str]) -> dict[str, int]:
    now = time.time()
    pipe = client.pipeline()
    for model in models:
        pipe.zcount(_key(model), now - LIVE_WINDOW, "+inf")
    return dict(zip(models, pipe.execute()))


def is_live(client: redis.Redis, hostname: str, models: list[str]) -> bool:
    """Has this worker sent a heartbeat within LIVE_WINDOW for every one of its models?"""
    pipe = client.pipeline()
    for model in models:
        pipe.zscore(_key(model), hostname)
    oldest = time.time() - LIVE_WINDOW
    return all(score is not None and score >= oldest for score in pipe.execute())
