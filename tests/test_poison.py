"""A job whose processing kills the worker process is failed after MAX_DELIVERIES attempts instead of
killing every worker forever, and the innocent jobs of the batch it crashed all succeed. On both brokers.

The crash comes from a test-only model type (tests/crash_model.py) that only workers started by
tests/hooked_worker.py can load: a forward pass over a text with its marker word SIGKILLs the worker
process, as an out-of-memory kill or a native crash in a tokenizer would. The service has no test switch.
"""

from __future__ import annotations

import threading
import uuid
from contextlib import ExitStack

import pytest

from shared.celery_app import make_celery
from shared.jobs import FINISHED, JobRecord, JobStore
from shared.queues import MODERATE_TASK, queue_for_model
from tests.conftest import MULTI_LABELS
from tests.crash_model import build_crash_model
from tests.hooked_worker import command as hooked_worker
from tests.support import Proc, base_env, broker_for, wait_until
from tests.tiny_models import WORDS
from worker.deliveries import ModelGate, poison_error

MODEL = "tiny"
QUEUE = queue_for_model(MODEL)
MARKER = "eradicate"  # a whole word of the tiny vocabulary: one token the crash model looks for
assert MARKER in WORDS
INNOCENT = 20


@pytest.fixture(scope="module")
def crash_model(tmp_path_factory):
    return build_crash_model(tmp_path_factory.mktemp("crash-model"), MULTI_LABELS, MARKER)


@pytest.fixture
def poison_stack(broker_kind, redis_server, crash_model, tmp_path):
    client = redis_server.client()
    client.flushall()
    with broker_for(broker_kind, redis_server.url) as broker:
        # BATCH_MAX_WAIT_MS=300: the marker job and the innocent ones arrive in one batch.
        env = base_env(redis_server.url, MODELS=f"{MODEL}={crash_model}", DEFAULT_MODEL=MODEL,
                       CELERY_BROKER_URL=broker.url, VISIBILITY_TIMEOUT="3", BATCH_MAX_WAIT_MS="300",
                       MAX_DELIVERIES="3", WORKER_CONCURRENCY="2")  # two batches in one process: one crash
        yield env, broker, JobStore(client, 3600)


def test_a_job_that_kills_its_worker_fails_after_max_deliveries_and_the_rest_succeed(poison_stack, tmp_path):
    env, broker, store = poison_stack
    celery = make_celery(broker.settings(env))
    texts = [f"innocent text number {i}" for i in range(INNOCENT)]
    texts.insert(INNOCENT // 2, f"this one is poison {MARKER}")
    job_ids = [str(uuid.uuid4()) for _ in texts]
    for job_id, text in zip(job_ids, texts):  # all queued before any worker runs: they share a batch
        store.create(JobRecord(job_id=job_id, model=MODEL, queue=QUEUE, texts=[text]))
        celery.send_task(MODERATE_TASK, args=[job_id, MODEL, [text]], queue=QUEUE, task_id=job_id)
    poison_id = job_ids[INNOCENT // 2]

    def all_finished() -> bool:
        return all(status in FINISHED for status, _ in store.states(job_ids))

    deaths = 0
    with ExitStack() as cleanup:
        while not all_finished():
            assert deaths <= 3, "the poison job killed more workers than MAX_DELIVERIES allows"
            worker = cleanup.enter_context(Proc(hooked_worker("crash-model"), env, tmp_path / f"worker-{deaths}.log"))
            wait_until(lambda w=worker: not w.alive() or all_finished(), timeout=180, interval=0.2,
                       what="the worker to die on the marker or every job to finish")
            if not worker.alive():
                assert "crash-bert: marker token in a forward pass; SIGKILL" in worker.log_tail(100_000)
                deaths += 1

    records = {job_id: store.get(job_id) for job_id in job_ids}
    poison = records.pop(poison_id)
    assert poison.status == "failed" and poison.error == poison_error(3) == \
        "the worker died while processing this job 3 times"
    assert {record.status for record in records.values()} == {"succeeded"}, \
        {job_id: (r.status, r.error) for job_id, r in records.items() if r.status != "succeeded"}
    assert deaths == 3
    print(f"\n[poison] {broker.kind}: {INNOCENT} innocent jobs succeeded, the marker job failed after {deaths} "
          f"worker deaths")



def test_a_suspect_job_has_the_model_to_itself():
    """worker/deliveries.py ModelGate: a suspect waits for the passes in flight and holds back new ones, so the
    crash it may cause counts against it alone (two batches of one process: the innocent job of the other
    batch would otherwise die with it, and after MAX_DELIVERIES such crashes be failed as poison)."""
    gate, log = ModelGate(), []
    first_in, release_first, later_in = threading.Event(), threading.Event(), threading.Event()

    def batch(name, entered, release=None):
        with gate.shared():
            log.append(f"{name} in")
            entered.set()
            if release:
                release.wait(10)
            log.append(f"{name} out")

    def suspect():
        with gate.alone():
            log.append("suspect in")
            log.append("suspect out")

    threads = [threading.Thread(target=batch, args=("first", first_in, release_first))]
    threads[0].start()
    first_in.wait(10)
    threads.append(threading.Thread(target=suspect))
    threads[1].start()
    wait_until(lambda: gate._suspects_waiting == 1, timeout=10, what="the suspect to wait for the first batch")
    threads.append(threading.Thread(target=batch, args=("later", later_in)))
    threads[2].start()
    assert not later_in.wait(0.5), "a batch started beside a pass while a suspect waited for the model"
    release_first.set()
    for thread in threads:
        thread.join(10)
    assert log == ["first in", "first out", "suspect in", "suspect out", "later in", "later out"]
