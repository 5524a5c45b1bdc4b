"""Waking requests that wait for a job: one pub/sub listener thread per process, shared by all of them.

The worker publishes on each job's done channel (shared/jobs.py). A connection plus SUBSCRIBE and
UNSUBSCRIBE per waiting request cost ~1 ms CPU per job in the API; instead one thread per process
holds a single PSUBSCRIBE to every done channel and sets the Event of whichever requests wait for
that job. While that subscription is down (Redis outage, reconnect), waiters fall back to re-reading
their record once a second, so a completion published meanwhile is never missed for long.

On a Redis Cluster (shared/keyspace.py) completions use sharded pub/sub: the finish script SPUBLISHes
"<job id> <record>" on its bucket's channel, which lives on the master holding the bucket's slot (a classic
PUBLISH would be copied to every node of the cluster, which does not scale with it). The thread SSUBSCRIBEs
every bucket's channel, with one connection per master (the slot map says which channels each one holds),
and reads them all with one select(). Any error, or a channel the cluster moved away (Redis then unsubscribes
it), tears the subscriptions down; the thread reads the slot map again and subscribes afresh.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import defaultdict
from contextlib import contextmanager

import redis

from shared.keyspace import DONE_SUFFIX, KEY_PREFIX, keyspace_for
from shared.redis_client import is_cluster

log = logging.getLogger(__name__)

DONE_PATTERN = f"{KEY_PREFIX}*{DONE_SUFFIX}"
RECONNECT_SECONDS = 0.5


class ChannelsMoved(redis.RedisError):
    """The cluster unsubscribed a sharded channel (its slot moved): subscribe again from the new slot map."""


class CompletionListener:
    def __init__(self, client: redis.Redis):
        self.client = client
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = defaultdict(set)
        self._thread: threading.Thread | None = None
        self._pid = 0
        # When the current subscription was confirmed (monotonic), None while it is down.
        self._subscribed_at: float | None = None

    def _ensure_running(self) -> None:
        # Started on first use in the process that waits (gunicorn forks after importing the app).
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._pid, self._subscribed_at = os.getpid(), None
                self._thread = threading.Thread(target=self._run, name="job-completions", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        listen = self._listen_sharded if is_cluster(self.client) else self._listen
        again = False
        while True:
            pubsubs: list = []
            try:
                listen(pubsubs, again)
            except Exception as exc:  # noqa: BLE001 (the thread must outlive any error; waiters poll meanwhile)
                if self._subscribed_at is not None:  # once per outage, not every reconnect attempt
                    log.warning("job completion listener: %s; reconnecting", exc)
                self._subscribed_at = None
                again = True
                time.sleep(RECONNECT_SECONDS)
            finally:
                self._subscribed_at = None
                for pubsub in pubsubs:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass

    def _listen(self, pubsubs: list, again: bool) -> None:
        """Plain Redis: one PSUBSCRIBE to every job's done channel."""
        pubsub = self.client.pubsub()
        pubsubs.append(pubsub)
        pubsub.psubscribe(DONE_PATTERN)
        while True:
            message = pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            if message["type"] == "pmessage":
                self._wake(message["channel"][len(KEY_PREFIX):-len(DONE_SUFFIX)], message["data"])
            elif message["type"] == "psubscribe":
                self._subscribed_at = time.monotonic()

    def _listen_sharded(self, pubsubs: list, again: bool) -> None:
        """Redis Cluster: SSUBSCRIBE to every bucket's channel, one connection per master that holds some."""
        cluster = self.client
        if again:
            cluster.nodes_manager.initialize()  # after an error: the slot map may have changed (a failover)
        by_node: dict[str, tuple] = {}
        for channel in keyspace_for(cluster).done_channels():
            node = cluster.get_node_from_key(channel)
            by_node.setdefault(node.name, (node, []))[1].append(channel)
        waiting: dict[int, int] = {}  # id(pubsub) -> subscriptions not yet confirmed
        for node, channels in by_node.values():
            pubsub = cluster.get_redis_connection(node).pubsub()
            pubsubs.append(pubsub)
            for channel in channels:  # one command each: a command's channels must share a slot
                pubsub.ssubscribe(channel)
            waiting[id(pubsub)] = len(channels)
        while True:
            for pubsub in pubsubs:  # everything already read off the sockets, then wait for more
                while (message := pubsub.get_message(timeout=0)) is not None:
                    kind = message["type"]
                    if kind in ("smessage", "message"):
                        job_id, _, data = message["data"].partition(" ")
                        self._wake(job_id, data)
                    elif kind == "ssubscribe":
                        waiting[id(pubsub)] -= 1
                        if not any(waiting.values()) and self._subscribed_at is None:
                            self._subscribed_at = time.monotonic()
                    elif kind == "sunsubscribe":
                        raise ChannelsMoved(f"the cluster unsubscribed {message['channel']}")
            select.select([pubsub.connection._sock for pubsub in pubsubs], [], [], 1.0)

    def _wake(self, job_id: str, message: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(job_id, ()))
        for waiter in waiters:
            waiter.message = message
            waiter.event.set()

    def covers(self, since: float) -> bool:
        """True if every completion published after `since` (monotonic) reached this listener."""
        subscribed_at = self._subscribed_at
        return subscribed_at is not None and subscribed_at <= since

    @contextmanager
    def watching(self, job_id: str):
        """A Waiter whose event is set (and message filled) when `job_id` finishes, registered for the
        duration of the block."""
        self._ensure_running()
        waiter = Waiter(job_id)
        with self._lock:
            self._waiters[job_id].add(waiter)
        waiter.since = time.monotonic()  # after registering: from now on no message can be missed
        try:
            yield waiter
        finally:
            with self._lock:
                waiters = self._waiters.get(job_id)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[job_id]


class Waiter:
    """One waiting request: `event` is set when its job's done message arrives, `message` is that message;
    `since` is when it was registered (monotonic)."""

    __slots__ = ("job_id", "event", "message", "since")

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.event = threading.Event()
        self.message: str | None = None
        self.since = 0.0
