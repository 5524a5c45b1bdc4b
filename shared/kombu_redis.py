"""kombu's Redis transport with one redis-py client per channel instead of one per command.

Stock kombu builds a new `redis.Redis` for every publish and ack (`Channel.conn_or_acquire`), and
its constructor rebuilds the response-callback table each time: ~0.2 ms CPU per job in the API.
redis-py clients are thread-safe (each command borrows a pooled connection), so one per channel
serves every thread; it is rebuilt whenever kombu replaces the channel's connection pool.
"""

from __future__ import annotations

from contextlib import contextmanager

from kombu.transport import redis as kombu_redis

TRANSPORT = "shared.kombu_redis:Transport"


class Channel(kombu_redis.Channel):
    _shared_client = None

    @contextmanager
    def conn_or_acquire(self, client=None):
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """This transport for plain redis:// brokers; None (kombu picks by scheme) for rediss://, sentinel..."""
    return TRANSPORT if broker_url.split("://", 1)[0] == "redis" else None
