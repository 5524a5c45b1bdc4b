"""Pause consumption while the job store (REDIS_URL) takes no writes, and resume when it does.

A batch that fails on the store is neither acknowledged nor rejected: rejecting with requeue would
hand the message straight back (a spin that, on RabbitMQ, raises each message's delivery count until
the quorum queue's x-delivery-limit removes it). Instead the batch thread that met the outage stops
the consumer with Celery's own remote-control operations (Consumer.cancel_task_queue: no more
messages are delivered; what was delivered stays unacknowledged, so its delivery count is unchanged),
backs off while it probes the store with a real write (a store that answers PING but refuses writes,
READONLY, MISCONF or OOM, is as unusable as one that is down), then consumes again
(Consumer.add_task_queue) and runs the held batch again. Other batches that meet the same outage wait
for the same recovery.

The consumer's methods run on the consumer's event loop (Consumer.call_soon), never on a pool thread.
StoreGateStep (worker/bootsteps.py) attaches the consumer on each (re)start and stops the wait on
shutdown: a worker stopped during an outage leaves its batch unacknowledged for the broker to redeliver.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 5.0


class StoreGate:
    def __init__(self):
        self._lock = threading.Lock()
        self._open = threading.Event()  # set: consuming; clear: paused for an outage
        self._open.set()
        self._stopping = threading.Event()
        self._consumer = None
        self._queues: list[str] = []
        self._resume_pending = False  # a resume did not complete (no consumer, or it failed): redo on attach

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    def attach(self, consumer, queues: list[str]) -> None:
        """On each consumer (re)start: a consumer that starts during an outage starts paused too; otherwise
        make sure it consumes every queue (a resume that met a consumer mid-restart is completed here)."""
        with self._lock:
            self._consumer, self._queues = consumer, list(queues)
            self._stopping.clear()
            if self.paused:
                self._on_loop(self._cancel)
            elif self._resume_pending:
                self._on_loop(self._resume)

    def detach(self) -> None:
        with self._lock:
            self._consumer = None

    def shutdown(self) -> None:
        self._stopping.set()
        self._open.set()

    def hold_until_store_answers(self, store_answers: Callable[[], bool]) -> bool:
        """Called by a batch thread whose batch failed while the store did not answer. Returns True once
        the store answers (run the batch again), False if the worker is shutting down meanwhile."""
        with self._lock:
            leader = self._open.is_set()
            if leader:
                self._open.clear()
                log.warning("the job store does not answer: pausing consumption of %s until it does",
                            ", ".join(self._queues))
                self._on_loop(self._cancel)
        if not leader:
            self._open.wait()
            return not self._stopping.is_set()
        delay, waited = FIRST_BACKOFF, 0.0
        while not self._stopping.wait(delay):
            waited += delay
            if store_answers():
                break
            delay = min(2 * delay, MAX_BACKOFF)
        with self._lock:
            if not self._stopping.is_set():
                log.warning("the job store answers again after ~%.0fs: resuming consumption", waited)
                self._resume_pending = True
                self._on_loop(self._resume)
            self._open.set()
        return not self._stopping.is_set()

    def _on_loop(self, operation: Callable) -> None:
        consumer = self._consumer
        if consumer is not None:
            consumer.call_soon(self._logged, operation, consumer, list(self._queues))

    def _logged(self, operation: Callable, consumer, queues: list[str]) -> None:
        """Never let a failed cancel/resume break the consumer's event loop (a broker reconnect can race
        it); the next consumer start completes a resume (attach)."""
        try:
            operation(consumer, queues)
        except Exception:  # noqa: BLE001
            log.exception("could not %s consumption of %s", operation.__name__.strip("_"), ", ".join(queues))
        else:
            if operation == self._resume:
                self._resume_pending = False

    @staticmethod
    def _cancel(consumer, queues: list[str]) -> None:
        for queue in queues:
            if consumer.task_consumer is not None and consumer.task_consumer.consuming_from(queue):
                consumer.cancel_task_queue(queue)

    @staticmethod
    def _resume(consumer, queues: list[str]) -> None:
        selected = consumer.app.amqp.queues
        for queue in queues:
            # cancel_task_queue deselected it; select the same Queue again (a name alone would lose its
            # quorum-queue arguments), so a consumer restarted later consumes it too.
            if queue in selected:
                selected.select_add(selected[queue])
            if consumer.task_consumer is not None:
                consumer.add_task_queue(queue)


GATE = StoreGate()
