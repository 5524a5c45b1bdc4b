"""The Celery task. Only tasks here; the work is in worker/pipeline.py.

`moderate` is a celery-batches task: the worker buffers incoming messages and calls it with a list
of up to BATCH_MAX_TEXTS requests. A request that arrives while no batch is running goes to the model
at once: the batch window (BATCH_MAX_WAIT_MS) applies only while the model is busy, as in Triton's
dynamic batcher. While WORKER_CONCURRENCY batches are running, new requests are held back and go into
the next batch when one returns: celery-batches alone would hand the pool a tiny batch every
BATCH_MAX_WAIT_MS, which queue up behind the busy model one or two texts at a time.
A batch that fails because the job store does not answer is held, and consumption paused, until the
store answers (worker/store_gate.py); then it runs again.
Each request gets the task events Celery would send for a task of its own (worker/task_events.py).
"""

from __future__ import annotations

import logging
import threading
import time

from celery.worker import state as worker_state
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from shared.celery_app import celery_app
from shared.config import Settings
from shared.kombu_redis import batched_acks, more_in_fetch
from shared.queues import MODERATE_TASK
from shared.redis_client import STORE_ERRORS
from worker.deliveries import worker_name
from worker.pipeline import BatchReport, process_batch
from worker.runtime import get_runtime
from worker.store_gate import GATE
from worker.task_events import batch_started, merge_outcomes, outcome_events, send_events, task_dispatcher

# A job another live worker holds (shared/jobs.py: its lease) is tried again after this long.
DEFER_SECONDS = 2.0
# A batch the store failed while it takes writes (a stall past the client's retries) runs again this often.
STORE_RETRIES = 5
STORE_RETRY_PAUSE = 0.5

log = logging.getLogger(__name__)


class AckStoredBatches(Batches):
    """Batches that runs at most WORKER_CONCURRENCY batches at once and acknowledges only requests
    whose outcome was stored.

    celery-batches acknowledges every late-ack request when the batch returns, even after an
    exception. Here the task returns a BatchReport: the stored requests are acknowledged, those whose
    job another live worker holds are kept and tried again after DEFER_SECONDS, and the rest are
    requeued. A batch that failed while the job store does not answer is neither: it is held
    (unacknowledged, so the broker's delivery count does not move) and run again once the store answers.
    """

    max_in_flight = 1  # configure_batching() sets it and the batch size from the settings

    def __init__(self):
        super().__init__()
        self._lock = threading.Condition()
        self._held: list = []
        self._in_flight = 0

    def flush(self, requests):
        """Called by celery-batches (count or timer); starts a batch now only if the pool has room."""
        with self._lock:
            self._held.extend(requests)
            self._lock.notify_all()
            if self._in_flight >= self.max_in_flight or not self._held or _shutting_down():
                return None  # held: run when a batch returns, or (shutting down) left to the broker to requeue
            batch, self._held = self._held, []
            self._in_flight += 1
        return self._pool.apply_async(self._run, (batch,))

    def Strategy(self, task, app, consumer):
        buffer_request = super().Strategy(task, app, consumer)
        self._consumer = consumer

        def buffer_or_run_now(*args, **kwargs):
            buffer_request(*args, **kwargs)
            # The model has room (no batch in flight, or fewer than WORKER_CONCURRENCY): nothing to wait
            # for, so the buffer goes now instead of at the next tick of the BATCH_MAX_WAIT_MS timer, once
            # the last message of a group fetched in one round trip is in (shared/kombu_redis.py).
            if self._in_flight < self.max_in_flight and not self._buffer.empty() and not more_in_fetch():
                self._do_flush()
        return buffer_or_run_now

    def restart_flush_timer(self) -> None:
        """After a lost broker connection the consumer restarts with a cleared timer, but celery-batches
        keeps its handle to the dead repeating flush and never schedules another: buffered requests
        would wait for a full batch. Called by worker/bootsteps.py on every consumer (re)start."""
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        self.flush([])

    def _run(self, requests):
        report = BatchReport()
        started = time.monotonic()
        try:
            batch_started(self._consumer, requests)
            report = self._run_until_stored(requests)
        finally:
            done, deferred = set(report.done), set(report.deferred)
            events = self._outcome_events(requests, report, time.monotonic() - started)
            try:
                stored = [request for request in requests if request.id in done]
                acknowledge_on_event_loop(self._consumer, stored, events)
                for request in requests:
                    if request.id not in done and request.id not in deferred and not report.unacknowledged:
                        request.reject(requeue=True)
            except Exception as exc:  # noqa: BLE001
                # The broker connection died under us: the broker redelivers these messages itself
                # (RabbitMQ at once, Redis after the visibility timeout). The slot below must still be
                # freed, or this worker would hold every later batch forever.
                log.warning("could not acknowledge a batch (the broker will redeliver it): %s", exc)
            if deferred:
                later = threading.Timer(DEFER_SECONDS, self.flush, ([r for r in requests if r.id in deferred],))
                later.daemon = True
                later.start()
            with self._lock:
                # Under load (a backlog is forming), give it up to BATCH_MAX_WAIT_MS to fill the next
                # batch: clients whose jobs just finished are sending their next ones. Idle: go at once.
                if self._held:
                    self._lock.wait_for(lambda: len(self._held) >= self.flush_every, timeout=self.flush_interval)
                self._in_flight -= 1
            self.flush([])

    def _outcome_events(self, requests, report: BatchReport, runtime: float) -> list:
        """The batch's terminal task events, only when the worker sends task events (no cost otherwise)."""
        try:
            return outcome_events(requests, report, runtime) if task_dispatcher(self._consumer) is not None else []
        except Exception:  # noqa: BLE001 (monitoring must never keep a batch from being acknowledged)
            log.exception("could not build the task events of a batch")
            return []

    def _run_until_stored(self, requests) -> BatchReport:
        """Run the batch; while it fails on the job store, hold it (consumption paused while the store takes
        no writes) and run it again. An empty report (requeue everything) if it failed otherwise, or if the
        store keeps failing it while it takes writes (STORE_RETRIES times)."""
        failures, outcomes = 0, {}
        while True:
            report = apply_batches_task(self, ([SimpleRequest.from_request(r) for r in requests],), 0, None)
            if report is None:
                return BatchReport()
            # A job stored before the store failed is skipped by the next run: its task event is the earlier one.
            outcomes = report.outcomes = merge_outcomes(outcomes, report.outcomes)
            if not report.store_failed:
                return report
            failures += 1
            if store_answers():
                if failures >= STORE_RETRIES:
                    log.error("the job store failed this batch %d times while it takes writes; requeueing it",
                              failures)
                    return BatchReport()
                time.sleep(STORE_RETRY_PAUSE)  # a stall past the client's retries: run it again
                continue
            if not GATE.hold_until_store_answers(store_answers):
                # Shutting down during the outage: leave the messages unacknowledged for the broker to redeliver.
                return BatchReport(unacknowledged=True)


def acknowledge_on_event_loop(consumer, requests, events=()) -> None:
    """Acknowledge these requests in one callback on the consumer's event loop, where Celery itself
    acknowledges (request.acknowledge() schedules one callback per message), and on the Redis transport
    in one pipeline (batched_acks). The loop wakes as for Celery's own acks, so the freed prefetch room
    is used at once. The batch's task events (worker/task_events.py) are sent in the same callback, after
    the acknowledgements, as Celery sends task-succeeded after acknowledging."""
    messages = [request.message for request in requests if not request.acknowledged]
    for request in requests:
        request.acknowledged = True
    if events:
        consumer.call_soon(_ack_messages_then_send, consumer, messages, events)
    elif messages:
        consumer.call_soon(_ack_messages, consumer, messages)


def _ack_messages_then_send(consumer, messages, events) -> None:
    if messages:
        _ack_messages(consumer, messages)
    send_events(consumer, events)


def _ack_messages(consumer, messages) -> None:
    try:
        with batched_acks():
            for message in messages:
                message.ack_log_error(log, (Exception,))
    except Exception as exc:  # noqa: BLE001 (as Celery's own ack: the broker redelivers them)
        log.warning("could not acknowledge a batch (the broker will redeliver it): %s", exc)
    if consumer.restart_count > 0:
        # What Celery chains on each ack after a reconnect: the prefetch count it lowered while requests
        # were active climbs back one step per ack (a no-op once restored).
        for _ in messages:
            consumer._restore_prefetch_count_after_connection_restart(None)


def store_answers() -> bool:
    """Whether the job store takes a write now: a refused write (READONLY after a failover, MISCONF with its
    disk full, OOM at maxmemory) answers PING, but would fail every batch, so only a real write counts."""
    try:
        return get_runtime().store.takes_writes(worker_name())
    except STORE_ERRORS:
        return False


def _shutting_down() -> bool:
    """After SIGTERM no new batch starts: requests not yet started stay unacknowledged, and the broker
    puts them back (kombu restores them on Redis; RabbitMQ requeues them when the connection closes)."""
    return any(flag is not None and flag is not False
               for flag in (worker_state.should_stop, worker_state.should_terminate))


def configure_batching(settings: Settings) -> None:
    """Called by `python -m worker` before the worker starts (the task class is instantiated then)."""
    AckStoredBatches.max_in_flight = settings.worker_concurrency
    AckStoredBatches.flush_every = settings.batch_max_texts
    AckStoredBatches.flush_interval = settings.batch_max_wait_ms / 1000.0


@celery_app.task(name=MODERATE_TASK, base=AckStoredBatches, acks_late=True)
def moderate(requests):
    return process_batch(get_runtime(), requests)
