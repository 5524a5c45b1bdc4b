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

Per-batch fetch (transport option `fetch_max`, set to BATCH_MAX_TEXTS by shared/celery_app.py): kombu
BRPOPs one message per round trip and then records it as unacknowledged (QoS.append: ZADD to the
unacked index + HSET of `[message, exchange, routing_key]` in the unacked hash) in a second one. Here,
once a BRPOP returns a message, one script call pops up to the remaining prefetch room (at most
`fetch_max` in all) more from the same queue and records each exactly as QoS.append would, atomically:
a popped message is never outside both the queue and the unacked hash. They are then delivered like
the first, and QoS.append skips the write already done. restore_visible, restore at shutdown and
worker/redelivery.py read the same entries as ever. While a fetched group is being delivered,
`more_in_fetch()` is true: the batching task waits for the group's last message before it starts a
batch (worker/tasks.py).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

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


def more_in_fetch() -> bool:
    """True on the consuming thread while a fetched group is delivered and more of it follow."""
    return getattr(_capture, "fetch_left", 0) > 0


# KEYS: the queue's lists in BRPOP's order (priorities), then kombu's unacked index and unacked hash.
# ARGV: how many more at most, the time for the index, then the delivery tag and unacked entry of the
# message BRPOP just popped. Records that message, then pops and records up to n more, each as
# QoS.append does. A message without kombu's properties is pushed back where it was and ends the fetch
# (BRPOP delivers it next, and kombu handles it as it always has).
FETCH_SCRIPT = """
local n, now = tonumber(ARGV[1]), ARGV[2]
local index, hash = KEYS[#KEYS - 1], KEYS[#KEYS]
redis.call('ZADD', index, now, ARGV[3])
redis.call('HSET', hash, ARGV[3], ARGV[4])
local out = {}
for i = 1, #KEYS - 2 do
  while #out < n do
    local raw = redis.call('RPOP', KEYS[i])
    if not raw then break end
    local ok, message = pcall(cjson.decode, raw)
    local props = ok and type(message) == 'table' and message['properties']
    local tag = type(props) == 'table' and props['delivery_tag']
    local info = type(props) == 'table' and props['delivery_info']
    if type(tag) ~= 'string' or type(info) ~= 'table' then
      redis.call('RPUSH', KEYS[i], raw)
      return out
    end
    redis.call('ZADD', index, now, tag)
    redis.call('HSET', hash, tag,
      '[' .. raw .. ', ' .. cjson.encode(info['exchange']) .. ', ' .. cjson.encode(info['routing_key']) .. ']')
    out[#out + 1] = raw
  end
end
return out
"""


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
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorded: set[str] = set()  # fetched tags already in the unacked hash and index

    def append(self, message, delivery_tag):
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            return super(kombu_redis.QoS, self).append(message, delivery_tag)  # in-process bookkeeping only
        return super().append(message, delivery_tag)

    def ack(self, delivery_tag):
        deferred = getattr(_capture, "acks", None)
        if deferred is None:
            return super().ack(delivery_tag)
        deferred.append((self, delivery_tag))
        return None

    def ack_many(self, delivery_tags: list[str]) -> None:
        """kombu's `ack` for several messages: the same commands, one round trip.

        The in-process bookkeeping is done even when the round trip fails (the error is raised after it):
        a message whose removal did not reach Redis stays in the unacked hash and comes back after the
        visibility timeout (its job is stored, so the worker drops the copy), whereas one left among the
        QoS's delivered messages would hold a prefetch slot for good. With every slot held that way, a
        worker whose acks met a frozen broker never consumed again (tests/faults: broker frozen, Redis)."""
        try:
            with self.channel.conn_or_acquire() as client:
                pipe = client.pipeline()
                for tag in delivery_tags:
                    self._remove_from_indices(tag, pipe)
                pipe.execute()
        finally:
            for tag in delivery_tags:
                super(kombu_redis.QoS, self).ack(tag)  # the in-process bookkeeping kombu's ack does next


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client = None
    _fetch_script = None
    fetch_max = 1  # messages per round trip; 1: kombu's own one BRPOP per message
    from_transport_options = kombu_redis.Channel.from_transport_options + ("fetch_max",)

    def _brpop_read(self, **options):
        """kombu's, except that the popped message is recorded as unacknowledged together with the fetch
        of more from the same queue, in one script call (the module's docstring)."""
        if self.fetch_max <= 1 or self.global_keyprefix:
            return super()._brpop_read(**options)
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise kombu_redis.Empty()
            dest, item = dest__item
            queue = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()
        raw = bytes_to_str(item)
        message = loads(raw)
        self._deliver_group([message, *self._record_and_fetch(queue, raw, message)], queue)
        return True

    def _record_and_fetch(self, queue: str, raw: str, message) -> list[dict]:
        """Record `message` in the unacked hash and index and fetch up to the prefetch room more, recorded too."""
        try:
            properties = message["properties"]
            tag, info = properties["delivery_tag"], properties["delivery_info"]
            entry = f"[{raw}, {dumps(info['exchange'])}, {dumps(info['routing_key'])}]"
        except (TypeError, KeyError):
            return []  # not kombu's shape: delivered alone, as kombu would
        if self._expires and queue in self._expires:
            return []  # queues with x-expires get their TTL refreshed on each read: kombu's path
        room = self.qos.can_consume_max_estimate()
        more = self.fetch_max - 1 if room is None else max(0, min(self.fetch_max, room) - 1)
        try:
            with self.conn_or_acquire() as client:
                if self._fetch_script is None:
                    self._fetch_script = client.register_script(FETCH_SCRIPT)
                keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
                raws = self._fetch_script(keys=[*keys, self.unacked_index_key, self.unacked_key],
                                          args=[more, time.time(), tag, entry], client=client)
        except self.connection_errors as exc:
            # The message is delivered all the same (QoS.append then tries its own write); what the script
            # may have moved is in the unacked hash and comes back after the visibility timeout.
            log.warning("could not record and fetch messages from %s: %s", queue, exc)
            return []
        fetched = [loads(bytes_to_str(r)) for r in raws]
        self.qos.recorded.update([tag, *(m["properties"]["delivery_tag"] for m in fetched)])
        return fetched

    def _deliver_group(self, messages: list[dict], queue: str) -> None:
        try:
            for left, message in zip(range(len(messages) - 1, -1, -1), messages):
                _capture.fetch_left = left
                self.connection._deliver(message, queue)
        finally:
            _capture.fetch_left = 0
            undelivered = [tag for tag in self.qos.recorded]
            self.qos.recorded.clear()
            for tag in undelivered:  # a delivery raised: put the rest back now, not after the visibility timeout
                try:
                    self.qos.restore_by_tag(tag, leftmost=True)
                except Exception as exc:  # noqa: BLE001 (the visibility timeout restores it)
                    log.warning("could not restore fetched message %s: %s", tag, exc)

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
