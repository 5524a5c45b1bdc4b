"""Celery's task events for every job (worker/task_events.py), read with Celery's own event receiver
(`app.events.Receiver`, what `celery events`, Flower and celery-exporter use) from a real `python -m worker`
on a real broker: both brokers (the module's stack is parametrised by `broker_kind`).

Before: celery-batches runs one batch task for many requests and sends no task event at all; the receiver
saw worker heartbeats only, with `processed=0`.
"""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack

import pytest

from shared.celery_app import make_celery
from shared.jobs import FINISHED, JobRecord, JobStore
from shared.queues import MODERATE_TASK, queue_for_model
from tests.celery_events import EventLog
from tests.support import base_env, broker_for, distinct_texts, start_worker, wait_until

MODEL = "tiny"
QUEUE = queue_for_model(MODEL)


class Stack:
    def __init__(self, env, logs, redis_client, broker):
        self.env, self.logs, self.broker = env, logs, broker
        self.store = JobStore(redis_client, 3600)
        self.celery = make_celery(broker.settings(env))

    def publish(self, texts: list[str], job_id: str | None = None, record: bool = True) -> str:
        """A job as the API would make it: its record, then its task message (task id = job id)."""
        job_id = job_id or str(uuid.uuid4())
        if record:
            self.store.create(JobRecord(job_id=job_id, model=MODEL, queue=QUEUE, texts=texts))
        self.celery.send_task(MODERATE_TASK, args=[job_id, MODEL], queue=QUEUE, task_id=job_id,
                              headers={"enqueued_at": time.time()})
        return job_id

    def wait_finished(self, job_ids: list[str]) -> None:
        wait_until(lambda: all(status in FINISHED for status, _ in self.store.states(job_ids)), timeout=60,
                   what="the jobs to finish")


@pytest.fixture(scope="module")
def stack(broker_kind, redis_server, tiny_multilabel_model, tmp_path_factory):
    client = redis_server.client()
    client.flushall()
    logs = tmp_path_factory.mktemp(f"task-events-{broker_kind}")
    with broker_for(broker_kind, redis_server.url) as broker:
        # BATCH_MAX_WAIT_MS=200: jobs published together share a batch.
        env = base_env(redis_server.url, MODELS=f"{MODEL}={tiny_multilabel_model}", DEFAULT_MODEL=MODEL,
                       BATCH_MAX_WAIT_MS="200", WORKER_CONCURRENCY="1", CELERY_BROKER_URL=broker.url)
        yield Stack(env, logs, client, broker)


def test_every_job_gets_celerys_task_events(stack):
    with ExitStack() as cleanup:
        events = cleanup.enter_context(EventLog(stack.celery))
        worker = start_worker(stack.env, stack.logs / "worker-events-on.log", models=[MODEL])
        cleanup.callback(worker.stop)
        events.wait_for_heartbeat(worker.nodename)

        good = [stack.publish([text]) for text in distinct_texts(3, "events")]
        # The API refuses lone surrogates; the tokenizer raises on one: the job is stored failed.
        poison = stack.publish(["fine words \ud800 then more"])
        canceled = str(uuid.uuid4())
        stack.store.create(JobRecord(job_id=canceled, model=MODEL, queue=QUEUE, texts=["you are an idiot"]))
        assert stack.store.cancel(canceled)[0]
        stack.publish([], job_id=canceled, record=False)
        stack.wait_finished(good + [poison])
        stack.publish([], job_id=good[0], record=False)  # a second copy of a finished job's message
        wait_until(lambda: events.types(canceled) and events.types(good[0])[-1:] == ["task-rejected"],
                   timeout=30, what=lambda: f"the canceled job's and the copy's events: {events.types(canceled)}, "
                   f"{events.types(good[0])}; all: {events.task_event_counts()}\n{worker.log_tail()}")

        for job_id in good:
            wait_until(lambda job_id=job_id: "task-succeeded" in events.types(job_id), timeout=30,
                       what=f"task-succeeded for {job_id}: {events.types(job_id)}\n{worker.log_tail()}")
            received, started, succeeded = events.of(job_id)[:3]
            assert [received["type"], started["type"], succeeded["type"]] == \
                ["task-received", "task-started", "task-succeeded"]
            assert received["name"] == MODERATE_TASK and job_id in received["args"]
            assert received["queue"] == QUEUE and received["retries"] == 0
            assert {event["hostname"] for event in (received, started, succeeded)} == {worker.nodename}
            assert received["timestamp"] <= started["timestamp"] <= succeeded["timestamp"]
            assert 0 < succeeded["runtime"] < 30
            assert succeeded["result"] in ("{'texts': 1, 'flagged': 0}", "{'texts': 1, 'flagged': 1}")
            assert events.state.tasks[job_id].state == "SUCCESS"  # what Flower's task list shows
            assert events.state.tasks[job_id].name == MODERATE_TASK

        wait_until(lambda: "task-failed" in events.types(poison), timeout=30,
                   what=f"task-failed for the poison job: {events.types(poison)}")
        assert events.types(poison) == ["task-received", "task-started", "task-failed"]
        failed = events.of(poison)[-1]
        assert failed["exception"].startswith("JobFailed('inference failed: "), failed
        assert stack.store.get(poison).error in failed["traceback"]
        assert events.state.tasks[poison].state == "FAILURE"

        # Canceled before it ran: revoked (as Celery discards a revoked task). A copy of a finished job's
        # message is not run again: rejected, not a second success, and the job's state stays SUCCESS.
        assert events.types(canceled)[-1] == "task-revoked" and events.of(canceled)[-1]["expired"] is False
        assert events.types(good[0]).count("task-succeeded") == 1
        assert events.of(good[0])[-1]["requeue"] is False
        assert events.state.tasks[good[0]].state == "SUCCESS"

        # Heartbeats count processed tasks again (the first batch's and the copy's: 6 messages started).
        beat = events.wait_for_heartbeat(worker.nodename, after=time.time())
        assert beat["processed"] == 6, beat


def test_no_task_events_when_the_setting_is_off_until_enabled_at_run_time(stack):
    with ExitStack() as cleanup:
        events = cleanup.enter_context(EventLog(stack.celery))
        worker = start_worker({**stack.env, "WORKER_SEND_TASK_EVENTS": "false"},
                              stack.logs / "worker-events-off.log", models=[MODEL])
        cleanup.callback(worker.stop)
        events.wait_for_heartbeat(worker.nodename)

        quiet = stack.publish(["the weather is nice today"])
        stack.wait_finished([quiet])
        events.wait_for_heartbeat(worker.nodename, after=time.time())  # anything sent is on the broker by now
        assert events.types(quiet) == []
        assert not [event for event in events.events if event["type"].startswith("task-")]

        # Flower (and `celery control enable_events`) switch task events on at run time: they are honoured.
        replies = stack.celery.control.enable_events(destination=[worker.nodename], reply=True, timeout=10)
        assert replies, "the worker did not answer enable_events"
        loud = stack.publish(["we should hate all martians"])
        wait_until(lambda: "task-succeeded" in events.types(loud), timeout=30,
                   what=f"task events after enable_events: {events.types(loud)}")
        assert events.types(loud) == ["task-received", "task-started", "task-succeeded"]


def test_each_outcome_maps_to_celerys_event():
    """worker/task_events.py's table, without processes: what became of each job -> its terminal event."""
    from types import SimpleNamespace

    from worker.pipeline import REQUEUED, SKIPPED, BatchReport
    from worker.task_events import merge_outcomes, outcome_events

    outcomes = {"ok": ("succeeded", [{"flagged": True}, {"flagged": False}]), "bad": ("failed", "inference failed: X"),
                "sliced": (REQUEUED, "sliced"), "canceled": (SKIPPED, "canceled"), "gone": (SKIPPED, "expired"),
                "copy": (SKIPPED, "succeeded"), "twice": (SKIPPED, "duplicate")}
    ids = [*outcomes, "lost", "deferred"]
    report = BatchReport(done=ids[:-1], deferred=["deferred"], outcomes=outcomes)
    events = {fields["uuid"]: (kind, fields) for kind, fields in
              outcome_events([SimpleNamespace(id=i) for i in ids], report, 0.25)}
    assert "deferred" not in events  # it runs again later; its terminal event comes then
    assert {uuid: kind for uuid, (kind, _) in events.items()} == {
        "ok": "task-succeeded", "bad": "task-failed", "sliced": "task-retried", "canceled": "task-revoked",
        "gone": "task-revoked", "copy": "task-rejected", "twice": "task-rejected", "lost": "task-rejected"}
    assert events["ok"][1]["result"] == "{'texts': 2, 'flagged': 1}" and events["ok"][1]["runtime"] == 0.25
    assert events["bad"][1]["exception"] == "JobFailed('inference failed: X')"
    assert events["sliced"][1]["exception"] == "JobRequeued('sliced')"
    assert events["gone"][1]["expired"] is True and events["canceled"][1]["expired"] is False
    assert events["copy"][1]["requeue"] is False

    # A batch run again after a store failure: a job the first run stored is only skipped by the second.
    merged = merge_outcomes({"a": ("succeeded", []), "b": (SKIPPED, "duplicate")},
                            {"a": (SKIPPED, "succeeded"), "b": ("failed", "x"), "c": ("succeeded", [])})
    assert merged == {"a": ("succeeded", []), "b": ("failed", "x"), "c": ("succeeded", [])}


def test_events_keep_their_order_whatever_order_the_event_loop_runs_its_callbacks():
    """kombu's Hub runs the callbacks of one loop turn in no set order (a set): a batch that settles at once
    (a copy of a finished job's message) must still send `task-started` before its `task-rejected`. The
    dispatcher here stands in for the broker; the scheduling is the worker's own."""
    from types import SimpleNamespace

    from worker.task_events import batch_started, send_events

    sent, callbacks = [], []
    dispatcher = SimpleNamespace(enabled=True, groups=None,
                                 send=lambda event_type, **fields: sent.append((event_type, fields["uuid"])))
    consumer = SimpleNamespace(event_dispatcher=dispatcher, call_soon=lambda fn, *args: callbacks.append((fn, args)))
    batch_started(consumer, [SimpleNamespace(id="copy", time_start=None, name=MODERATE_TASK)])
    callbacks.append((send_events, (consumer, [("task-rejected", {"uuid": "copy", "requeue": False})])))  # the ack
    for callback, args in reversed(callbacks):
        callback(*args)
    assert sent == [("task-started", "copy"), ("task-rejected", "copy")]
