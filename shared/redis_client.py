"""Redis connections with short timeouts, so an outage answers fast instead of hanging a request.

redis-py sends a command again after a connection error or a socket timeout (its default retry policy,
kept on purpose: a short stall of the store is ridden out inside one call). That is safe for every command
this project sends to the job store, because each may run twice without harm: the job scripts are idempotent
(shared/job_scripts.py: a second create writes nothing, a second finish or requeue by the same claim
answers as the first), the other writes set values (SET, HSET, ZADD, EXPIRE) rather than add to them, and
the Idempotency-Key reservation recognises its own SET (api/idempotency.py).
"""

from __future__ import annotations

import redis

from shared.config import Settings


def make_redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=30,
        decode_responses=True,
    )
