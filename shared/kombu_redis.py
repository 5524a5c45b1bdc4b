"""kombu's Redis transport with one redis-py client per channel instead of one per command, and
publishes that can be captured instead of written.

Stock kombu builds a new `redis.Redis` for every publish and ack (`Channel.conn_or_acquire`), and
its constructor rebuilds the response-callback table each time: ~0.2 ms CPU per job in the API.
redis-py clients are thread-safe (each command borrows a pooled connection), so one per channel
serves every thread; it is rebuilt whenever kombu replaces the channel's connection pool.

`captured_publishes()`: Celery and kombu build the message as always, but the final LPUSH is handed
to the caller, who writes it in its own round trip (the API accepts a job with one script call that
writes the record and pushes its message: shared/jobs.py's create script).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from kombu.transport import redis as kombu_redis

TRANSPORT = "shared.kombu_redis:Transport"
_capture = threading.local()


@contextmanager
def captured_publishes():
    """On this thread, within the block, messages published through this transport are collected as
    (Redis list, payload) pairs, exactly what kombu would LPUSH, and not written."""
    captured: list[tuple[str, str]] = []
    _capture.messages = captured
    try:
        yield captured
    finally:
        _capture.messages = None


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

    def _put(self, queue, message, **kwargs):
        captured = getattr(_capture, "messages", None)
        # Batched publishes and queues with an expiry (more commands than one LPUSH) go the stock way.
        if captured is None or kwargs.get("_publish_batch") is not None or (self._expires and queue in self._expires):
            return super()._put(queue, message, **kwargs)
        priority = self._get_message_priority(message, reverse=False)
        captured.append((self._q_for_pri(queue, priority), kombu_redis.dumps(message)))
        return None


class Transport(kombu_redis.Transport):
    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """This transport for plain redis:// brokers; None (kombu picks by scheme) for rediss://, sentinel..."""
    return TRANSPORT if broker_url.split("://", 1)[0] == "redis" else None
