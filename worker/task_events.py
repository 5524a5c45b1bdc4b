"""Celery's task events for the jobs of a celery-batches batch, so that Celery's own tools see them.

Celery's default strategy sends `task-received` and its tracer `task-started`, `task-succeeded` and
`task-failed`; celery-batches (worker/tasks.py) buffers requests and runs one batch task for many of
them, so none of these were sent: `celery events`, Flower and celery-exporter saw only heartbeats
(`processed=0`). Here each request of a batch gets the events Celery would send for a task, with the same
fields, through the consumer's own event dispatcher (`consumer.event_dispatcher`, which Celery's
`Request.send_event` uses), and only when the worker sends task events (`worker_send_task_events`, the
setting WORKER_SEND_TASK_EVENTS, or `-E`; Flower's and `celery control enable_events` switch them on at
run time). The task id is the job id (shared/queues.py), so an event's `uuid` is the job's id.

What became of the job -> the event (fields beyond Celery's `uuid`, `hostname`, `timestamp`):
- message taken in -> `task-received` (name, args, kwargs, root_id, parent_id, retries, eta, expires, queue)
- its batch starts (once per message) -> `task-started`
- result stored -> `task-succeeded` (result: `{'texts': N, 'flagged': M}`, runtime in seconds)
- stored failed (inference error, worker deaths, deadline, malformed task) -> `task-failed`
  (exception: `JobFailed('<the job's error>')`, traceback)
- back in its queue with a new message (a slice done, or postponed) -> `task-retried`
  (exception: `JobRequeued('sliced')` or `JobRequeued('postponed')`)
- canceled before it ran, or its record expired -> `task-revoked` (terminated=False, expired)
- not run: already finished (a redelivered copy) or a second copy in the batch -> `task-rejected` (requeue=False)
- the batch failed and its messages go back to the broker -> `task-rejected` (requeue=True, sent by Celery's
  own `Request.reject`)

`runtime` is how long the batch that settled the job ran, from its start to its end (shared by its jobs:
the batch task is one call for all of them; a batch held during a job-store outage counts the hold). A
job that another live worker holds is tried again after a pause (worker/tasks.py): it gets no second
`task-started`, and its terminal event comes from the run that settles it. Events are sent on the
consumer's event loop, where Celery's own worker sends them (the dispatcher buffers them and publishes
`task.multi` groups), the terminal ones after the batch's acknowledgements. celery-exporter labels its
counters with the event's `queue` (Celery puts it in `task-sent` only) and its failure counter with the
exception's class: always `JobFailed` here, never the job's own error text.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from celery import signals
from celery.utils.saferepr import saferepr
from celery.worker import state as worker_state
from celery_batches import Batches

from shared.jobs import FAILED, SUCCEEDED
from worker.pipeline import REQUEUED, SKIPPED, BatchReport

TASK_GROUP = "task"

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """What a failed job's stored error looks like in a `task-failed` event's `exception` field."""


class JobRequeued(Exception):
    """What a job put back in its queue looks like in a `task-retried` event's `exception` field."""


def task_dispatcher(consumer):
    """The consumer's event dispatcher if it sends task events now, else None. As Celery's
    EventDispatcher.send decides: enabled, and `task` among its groups (when it has any)."""
    dispatcher = getattr(consumer, "event_dispatcher", None)
    if dispatcher is None or not dispatcher.enabled:
        return None
    if dispatcher.groups and TASK_GROUP not in dispatcher.groups:
        return None
    return dispatcher


def received_fields(request) -> dict:
    """Celery's `task-received` fields (celery.worker.strategy.default), plus the queue."""
    return {"uuid": request.id, "name": request.name, "args": request.argsrepr, "kwargs": request.kwargsrepr,
            "root_id": request.root_id, "parent_id": request.parent_id,
            "retries": request.request_dict.get("retries", 0),
            "eta": request.eta and request.eta.isoformat(),
            "expires": request.expires and request.expires.isoformat(),
            "queue": (request.delivery_info or {}).get("routing_key")}


def _on_task_received(sender=None, request=None, **_) -> None:
    """celery-batches sends the `task_received` signal for each buffered request (on the consumer's event
    loop), but no event: send Celery's. Other tasks' requests already got theirs from Celery's strategy."""
    if request is None or not isinstance(request.task, Batches):
        return
    if task_dispatcher(sender) is not None:
        send_events(sender, [("task-received", received_fields(request))])


signals.task_received.connect(_on_task_received, weak=False, dispatch_uid="moderation.task_events.received")


def batch_started(consumer, requests) -> None:
    """A batch is starting (on a pool thread): `task-started` for each request that has not started before,
    and the worker's processed-task count (what heartbeats report as `processed`) as Celery's
    state.task_accepted keeps it. Both on the event loop."""
    try:
        fresh = [request for request in requests if request.time_start is None]
        if not fresh:
            return
        now = time.time()
        for request in fresh:
            request.time_start = now  # as Celery's Request.on_accepted
        queue_events(consumer, [("task-started", {"uuid": request.id}) for request in fresh])
        consumer.call_soon(_count_started, len(fresh), fresh[0].name)
    except Exception:  # noqa: BLE001 (monitoring must never fail a batch)
        log.exception("could not send the task-started events of a batch")


def _count_started(count: int, name: str) -> None:
    worker_state.total_count[name] += count
    worker_state.all_total_count[0] += count


def outcome_events(requests, report: BatchReport, runtime: float) -> list[tuple[str, dict]]:
    """The terminal event of each acknowledged (done) request, from what became of its job."""
    done = set(report.done)
    events = []
    for request in requests:
        if request.id not in done:
            continue  # deferred (runs again later) or requeued (Celery's Request.reject sends task-rejected)
        state, detail = report.outcomes.get(request.id) or (SKIPPED, None)
        fields = {"uuid": request.id}
        if state == SUCCEEDED:
            results = detail or []
            flagged = sum(1 for result in results if isinstance(result, dict) and result.get("flagged"))
            summary = {"texts": len(results), "flagged": flagged}
            events.append(("task-succeeded", {**fields, "result": saferepr(summary), "runtime": runtime}))
        elif state == FAILED:
            events.append(("task-failed", {**fields, "exception": saferepr(JobFailed(detail)),
                                           "traceback": f"JobFailed: {detail}"}))
        elif state == REQUEUED:
            events.append(("task-retried", {**fields, "exception": saferepr(JobRequeued(detail)),
                                            "traceback": ""}))
        elif detail in ("canceled", "expired"):
            events.append(("task-revoked", {**fields, "terminated": False, "signum": None,
                                            "expired": detail == "expired"}))
        else:  # already finished (a redelivered copy), a second copy in this batch, or no longer this worker's
            events.append(("task-rejected", {**fields, "requeue": False}))
    return events


# Events in the order they happened, waiting for the event loop. The loop runs the callbacks scheduled in one
# turn in no set order (kombu's Hub keeps them in a set): a batch that settles at once would otherwise send
# a copy's `task-rejected` before its `task-started`. Appended from any thread, drained on the loop only.
_PENDING: deque = deque()


def queue_events(consumer, events: list[tuple[str, dict]]) -> None:
    """From any thread: these events go out after every event queued before them, on the event loop."""
    _PENDING.extend(events)
    consumer.call_soon(send_events, consumer, [])


def send_events(consumer, events: list[tuple[str, dict]]) -> None:
    """On the event loop: the events queued so far, then these, in order; sent if the worker (still) sends
    task events. Never raises (an exception in an event-loop callback would stop the consumer); a failed
    publish is kept by Celery's dispatcher and sent again after a reconnect (buffer_while_offline)."""
    _PENDING.extend(events)
    try:
        dispatcher = task_dispatcher(consumer)
        while _PENDING:
            event_type, fields = _PENDING.popleft()
            if dispatcher is not None:
                dispatcher.send(event_type, **fields)
    except Exception:  # noqa: BLE001
        log.exception("could not send task events (%d still queued)", len(_PENDING))


def merge_outcomes(earlier: dict, later: dict) -> dict:
    """A batch run again after a store failure: the later run's outcome, except where it only skipped a job
    that the earlier run had settled (it stored the job before the store failed)."""
    merged = dict(later)
    for request_id, outcome in earlier.items():
        if outcome[0] != SKIPPED and (request_id not in later or later[request_id][0] == SKIPPED):
            merged[request_id] = outcome
    return merged
