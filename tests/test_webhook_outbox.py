"""Webhooks are delivered at least once across crashes (shared/webhooks.py's outbox).

The crash test kills a real worker at the worst moment: right after a batch's results are stored and
before its webhooks are enqueued (tests/hooked_worker.py, `die-after-storing`), the whole process
group with it. The redelivered moderation message is then skipped as finished, so only the outbox can
bring the callback; a fresh worker's webhook sweeper must send it.
"""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest
from standardwebhooks.webhooks import Webhook

from shared.celery_app import make_celery
from shared.config import load_settings
from shared.jobs import JobRecord, JobStore
from shared.queues import MODERATE_TASK, queue_for_model
from shared.webhooks import OUTBOX_KEY, WebhookOutbox
from tests.hooked_worker import command as hooked_worker
from tests.support import Proc, base_env, start_worker, wait_until
from tests.webhook_receiver import Receiver

SECRET = "whsec_b3V0Ym94LXNlY3JldC1vZi0yNC1ieXRlcw=="  # WEBHOOK_SECRET in the Standard Webhooks form
MODEL = "tiny"
QUEUE = queue_for_model(MODEL)
GRACE = 4


@pytest.fixture
def receiver():
    with Receiver() as server:
        yield server


@pytest.fixture
def env(redis_server, tiny_multilabel_model):
    redis_server.client().flushall()
    return base_env(redis_server.url, MODELS=f"{MODEL}={tiny_multilabel_model}", VISIBILITY_TIMEOUT="3",
                    WEBHOOK_ALLOWED_HOSTS="127.0.0.1", WEBHOOK_SECRET=SECRET, WEBHOOK_SWEEP_GRACE=str(GRACE))


def _submit(store: JobStore, env: dict, text: str, callback_url: str | None) -> str:
    job_id = str(uuid.uuid4())
    store.create(JobRecord(job_id=job_id, model=MODEL, queue=QUEUE, texts=[text], callback_url=callback_url))
    make_celery(load_settings(env)).send_task(MODERATE_TASK, args=[job_id, MODEL, [text]], queue=QUEUE,
                                              task_id=job_id)
    return job_id


def test_the_finish_script_records_the_callback_with_the_result(redis_server):
    client = redis_server.client()
    client.flushall()
    store, outbox = JobStore(client, 3600), WebhookOutbox(client)
    with_callback, without = str(uuid.uuid4()), str(uuid.uuid4())
    store.create(JobRecord(job_id=with_callback, model=MODEL, queue=QUEUE, texts=["a"], callback_url="http://h/x"))
    store.create(JobRecord(job_id=without, model=MODEL, queue=QUEUE, texts=["b"]))
    store.finish_many([(with_callback, [{"flagged": False}], None), (without, None, "boom")])
    assert client.zrange(OUTBOX_KEY, 0, -1) == [with_callback]
    # A duplicate finish (a redelivered message) changes nothing, the outbox entry included.
    client.zadd(OUTBOX_KEY, {with_callback: 1.0})
    store.finish_many([(with_callback, None, "late duplicate")])
    assert client.zscore(OUTBOX_KEY, with_callback) == 1.0 and store.get(with_callback).status == "succeeded"
    # Due entries are handed out once per grace period: a second sweep right after finds none.
    assert outbox.take_due(grace=10) == [with_callback]
    assert outbox.take_due(grace=10) == []
    assert outbox.is_pending(with_callback)
    outbox.done(with_callback)
    assert not outbox.is_pending(with_callback)


def test_a_worker_killed_between_storing_and_enqueueing_still_calls_back(redis_server, env, receiver, tmp_path):
    client = redis_server.client()
    store = JobStore(client, 3600)
    with Proc(hooked_worker("die-after-storing"), env, tmp_path / "dying-worker.log") as dying:
        job_id = _submit(store, env, "you are an idiot", receiver.url("/after-crash"))
        wait_until(lambda: not dying.alive(), timeout=180, interval=0.1, what="the hooked worker to die")
        dying.signal_group(signal.SIGKILL)  # its webhook worker child too: the whole container is gone
        assert dying.process.returncode == -signal.SIGKILL
        assert "die-after-storing: results stored; SIGKILL before webhooks are enqueued" in dying.log_tail(100_000)
    record = store.get(job_id)
    assert record.status == "succeeded", (record.status, record.error)
    assert client.zscore(OUTBOX_KEY, job_id) is not None, "the stored result has no pending callback"
    assert receiver.calls_to("/after-crash") == [], "the callback went out before the crash"

    started = time.monotonic()
    worker = start_worker(env, tmp_path / "worker.log", models=[MODEL])
    try:
        [call] = wait_until(lambda: receiver.calls_to("/after-crash"), timeout=120, interval=0.2,
                            what="the swept callback")
        elapsed = time.monotonic() - started
        body = json.loads(call["body"])
        assert body["job_id"] == job_id and body["status"] == "succeeded"
        assert body["results"] == record.results
        Webhook(SECRET).verify(call["body"], call["headers"])  # no API keys: WEBHOOK_SECRET signs
        assert call["headers"]["webhook-id"] == job_id
        wait_until(lambda: client.zscore(OUTBOX_KEY, job_id) is None, timeout=30, what="the outbox entry to go")
        # The sweeper sent it (the webhook worker is the worker's child and shares its log).
        assert f"job {job_id}: its webhook was pending for over {float(GRACE)}s; sending it" in worker.log_tail(500_000)
        # The moderation message the dead worker held is redelivered and skipped: the job ran once.
        wait_until(lambda: f"job {job_id} is succeeded; skipping" in worker.log_tail(500_000), timeout=60,
                   what="the redelivered message to be skipped")
        # A new job's callback still goes out at once, and only once.
        fresh = _submit(store, env, "the weather is nice today", receiver.url("/fresh"))
        wait_until(lambda: receiver.calls_to("/fresh"), timeout=60, what="the fresh job's callback")
        wait_until(lambda: client.zscore(OUTBOX_KEY, fresh) is None, timeout=30, what="its outbox entry to go")
        time.sleep(GRACE + 1)  # a negative check: sweeps after the grace period must not send it again
        assert len(receiver.calls_to("/fresh")) == 1 and len(receiver.calls_to("/after-crash")) == 1
    finally:
        worker.stop()
    print(f"\n[webhook outbox] callback of a job stored by a SIGKILLed worker delivered {elapsed:.1f} s after a "
          f"fresh worker started (WEBHOOK_SWEEP_GRACE={GRACE})")
