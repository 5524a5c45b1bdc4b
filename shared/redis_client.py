"""Redis connections with short timeouts, so an outage answers fast instead of hanging a request."""

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
