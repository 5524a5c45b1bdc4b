"""kombu's Redis transport with one redis-py client per channel instead of one per command, and
publishes that can be captured instead of written.

Stock kombu builds a new `redis.Redis` for every publish and ack (`Channel.conn_or_acquire`), and
its constructor rebuilds the response-callback table each time: ~0.2 ms CPU per job in the API.
redis-py clients are thread-safe (each command borrows a pooled connection), so one per channel
serves every thread; it is rebuilt whenever kombu replaces the channel's connection pool.

`captured_publishes()`: Celery and kombu build the message as always, but the final LPUSH is handed
to the caller, who writes it in its own round trip (the API accepts a job with one script call that
writes the record and pushes its message: shared/jobs.py's create script).

`batched_acks()`: acknowledgements made on this thread within the block are applied at its end, with
kombu's own commands (ZREM from the unacked index + HDEL from the unacked hash, per message) in one
pipeline: one round trip per batch instead of one per message. The visibility protocol is unchanged:
a message stays in the unacked hash until that pipeline runs, so a worker killed before it has its
messages restored after the visibility timeout, as any unacknowledged message.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from kombu.transport import redis as kombu_redis

TRANSPORT = "shared.kombu_redis:Transport"
_capture = threading.local()


@contextmanager
def batched_acks():
    """On this thread, within the block, acknowledgements through this transport are collected and
    applied at its end, one pipeline per channel."""
    deferred: list[tuple[QoS, str]] = []
    _capture.acks = deferred
    try:
        yield
    finally:
        _capture.acks = None
        by_qos: dict[QoS, list[str]] = {}
        for qos, tag in deferred:
            by_qos.setdefault(qos, []).append(tag)
        for qos, tags in by_qos.items():
            qos.ack_many(tags)


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


class QoS(kombu_redis.QoS):
    def ack(self, delivery_tag):
        deferred = getattr(_capture, "acks", None)
        if deferred is None:
            return super().ack(delivery_tag)
        deferred.append((self, delivery_tag))
        return None

    def ack_many(self, delivery_tags: list[str]) -> None:
        """kombu's `ack` for several messages: the same commands, one round trip."""
        with self.channel.conn_or_acquire() as client:
            pipe = client.pipeline()
            for tag in delivery_tags:
                self._remove_from_indices(tag, pipe)
            pipe.execute()
        for tag in delivery_tags:
            super(kombu_redis.QoS, self).ack(tag)  # the in-process bookkeeping kombu's ack does next


class Channel(kombu_redis.Channel):
    QoS = QoS
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
        if captured is None:
            return super()._put(queue, message, **kwargs)
        if kwargs.get("_publish_batch") is not None or (self._expires and queue in self._expires):
            # More than one LPUSH: refuse rather than send it before the caller's record exists.
            raise NotImplementedError("captured_publishes(): only a plain single-message publish can be captured")
        priority = self._get_message_priority(message, reverse=False)
        captured.append((self._q_for_pri(queue, priority), kombu_redis.dumps(message)))
        return None


class Transport(kombu_redis.Transport):
    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """This transport for plain redis:// brokers; None (kombu picks by scheme) for rediss://, sentinel..."""
    return TRANSPORT if broker_url.split("://", 1)[0] == "redis" else None
