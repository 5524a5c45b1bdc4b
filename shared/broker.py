"""What the API and the worker read from the broker: queue depth and oldest-job age.

Everything here talks to the broker's own connection (CELERY_BROKER_URL), never to the job-record
Redis (REDIS_URL), which may be another server.
- Redis broker: Celery's lists, read with a Redis client on the broker's URL (shared/queue_stats.py).
- RabbitMQ: a passive queue_declare answers the number of ready messages (and of parked ones, on the
  queue's parking queue: shared/celery_app.py); RabbitMQ keeps no
  enqueue time we can read without consuming, so the age is that of the oldest unfinished job in
  our own enqueue-time index (the queue's pending set in the record Redis, shared/jobs.py).
"""

from __future__ import annotations

import threading

import amqp.exceptions
import kombu.exceptions
import redis
from celery import Celery

from shared.celery_app import is_redis_url, parking_queue_name
from shared.config import Settings
from shared.jobs import pending_age
from shared.queue_stats import add_queue_depth, oldest_job_age, queue_depth
from shared.redis_client import STORE_ERRORS

# What a broker read raises when the broker (or the record Redis) is unreachable.
BROKER_ERRORS = (*STORE_ERRORS, kombu.exceptions.OperationalError)


def broker_redis(settings: Settings) -> redis.Redis:
    """A Redis client on the broker's URL (only for a Redis broker)."""
    return redis.Redis.from_url(settings.broker_url, socket_timeout=settings.redis_socket_timeout,
                                socket_connect_timeout=settings.redis_socket_timeout,
                                health_check_interval=30, decode_responses=True)


class RedisBrokerQueues:
    def __init__(self, settings: Settings):
        self.client = broker_redis(settings)
        # The broker lives in the record Redis: the API reads depth in the same round trip as it writes.
        self.shares_record_redis = settings.broker_url == settings.redis_url

    def depth(self, queue: str) -> int:
        return queue_depth(self.client, queue)

    def parked(self, queue: str) -> int:
        return 0  # nothing is dead-lettered on Redis (no broker-side delivery limit)

    def add_depth(self, pipe: redis.client.Pipeline, queue: str) -> int:
        return add_queue_depth(pipe, queue)

    def oldest_age(self, queue: str) -> float:
        return oldest_job_age(self.client, queue)


class AmqpBrokerQueues:
    """One connection and channel per process for passive declares (sub-millisecond each, so a lock
    is cheaper than a pool), with socket timeouts so a hung broker cannot hold a request."""

    shares_record_redis = False
    SOCKET_TIMEOUT = 2.0

    def __init__(self, celery: Celery, record_redis: redis.Redis):
        self.celery, self.record_redis = celery, record_redis
        self._lock = threading.Lock()
        self._connection = self._channel = None

    def _reset(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.collect()  # drop the socket without talking to a broker that may be gone
            except Exception:  # noqa: BLE001 (already broken: nothing more to release)
                pass

    def depth(self, queue: str) -> int:
        with self._lock:
            reused = self._connection is not None
            try:
                return self._depth(queue)
            except kombu.exceptions.OperationalError as exc:
                if not reused or isinstance(exc.__cause__, TimeoutError):
                    raise
            # A connection kept from before a broker restart fails on its first use (closed, reset): one
            # retry on a fresh one, so the first submission after a recovery is accepted. Not after a
            # timeout: a hung broker must still answer 503 fast.
            return self._depth(queue)

    def _depth(self, queue: str) -> int:
        try:
            if self._connection is None:
                self._connection = self.celery.connection_for_read(transport_options={
                    "read_timeout": self.SOCKET_TIMEOUT, "write_timeout": self.SOCKET_TIMEOUT})
                # Each node of a failover list (CELERY_BROKER_URL `amqp://n1;amqp://n2;...`) once: a lost node's
                # refusal switches to the next at once; one URL: one retry, as before.
                self._connection.ensure_connection(max_retries=max(1, len(self._connection.alt) - 1))
            if self._channel is None:
                self._channel = self._connection.channel()
            return self._channel.queue_declare(queue=queue, passive=True).message_count
        except amqp.exceptions.NotFound:  # not declared yet: nothing was ever published to it
            self._channel = None  # the broker closed the channel
            return 0
        except (OSError, amqp.exceptions.AMQPError, kombu.exceptions.OperationalError) as exc:
            self._reset()
            raise kombu.exceptions.OperationalError(f"broker unreachable: {exc}") from exc

    def parked(self, queue: str) -> int:
        return self.depth(parking_queue_name(queue))

    def oldest_age(self, queue: str) -> float:
        return pending_age(self.record_redis, queue)  # every bucket of the index on a Redis Cluster


def broker_queues(settings: Settings, celery: Celery, record_redis: redis.Redis):
    if is_redis_url(settings.broker_url):
        return RedisBrokerQueues(settings)
    return AmqpBrokerQueues(celery, record_redis)
