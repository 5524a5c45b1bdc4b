"""Redis connections with short timeouts, so an outage answers fast instead of hanging a request.

Where a command is sent again after a connection error or a socket timeout is a choice made here, not left
to redis-py (whose `from_url` clients retry nothing). The worker's client retries (WORKER_RETRIES, short
backoff): a store that stalls for a second or two (a fork for a snapshot, a VM pause) is ridden out
inside the call instead of failing the batch. That is safe because every command the worker sends may
run twice without harm, the first having run on a server that stalled after reading it: the job scripts
are idempotent (shared/job_scripts.py: a second create writes nothing, a second finish or requeue by the
same claim answers as the first), and the other writes set values (SET, HSET, ZADD, EXPIRE) rather than
add to them. The API's client does not retry: with the store hung, a request answers 503 + Retry-After
within REDIS_SOCKET_TIMEOUT and the client retries it (tests/test_redis_outage.py), which an
Idempotency-Key makes safe too (api/idempotency.py).
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from shared.config import Settings

WORKER_RETRIES = 2


def make_redis(settings: Settings, retries: int = 0) -> redis.Redis:
    """A client on REDIS_URL; `retries`: times a command is sent again after a connection error or timeout."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries),
        decode_responses=True,
    )
