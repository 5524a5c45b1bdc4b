"""Three worker processes drain 3,000 jobs (8 texts each) while one of them is SIGKILLed every few seconds (and started
again): no job is lost or failed, every result is the model's, and every worker slot did part of the work.
On both brokers.

VISIBILITY_TIMEOUT (Redis only) is 30 s here so the suite stays short; on Redis the drain time is bounded
by it (docs/reliability.md explains the worst case). MANY_WORKERS_VISIBILITY_TIMEOUT=300 runs it with the
default, as measured for docs/reliability.md. RabbitMQ requeues a killed worker's messages at once.
Figures are printed (`pytest -s`).
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

from shared.celery_app import make_celery
from shared.jobs import FINISHED, JobRecord, JobStore
from shared.queues import MODERATE_TASK, queue_for_model
from tests.support import Proc, base_env, broker_for, wait_until, worker_command
from tests.tiny_models import WORDS
from worker.deliveries import DeliveryCounter
from worker.inference import TextClassifier

MODEL = "tiny"
QUEUE = queue_for_model(MODEL)
JOBS = 3000
TEXTS_PER_JOB = 8  # enough work that the drain outlasts several kills on a small machine
WORKERS = 3
KILL_EVERY_SECONDS = 2.0
MAX_KILLS = 8
PUBLISH_SECONDS = 20
VISIBILITY_TIMEOUT = int(os.environ.get("MANY_WORKERS_VISIBILITY_TIMEOUT", "30"))


@pytest.fixture
def chaos_env(broker_kind, redis_server, tiny_multilabel_model):
    client = redis_server.client()
    client.flushall()
    with broker_for(broker_kind, redis_server.url) as broker:
        env = base_env(redis_server.url, MODELS=f"{MODEL}={tiny_multilabel_model}", DEFAULT_MODEL=MODEL,
                       CELERY_BROKER_URL=broker.url, VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
                       TORCH_THREADS="1", WORKER_METRICS_PORT="0", CACHE_TTL="0")
        yield env, broker, client, tiny_multilabel_model


def test_three_workers_drain_3000_jobs_while_one_is_killed_every_few_seconds(chaos_env, tmp_path):
    env, broker, client, model_path = chaos_env
    store = JobStore(client, 3600)
    celery = make_celery(broker.settings(env))
    texts = [[f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7 + k) % len(WORDS)]} chaos {i} {k}" for k in range(TEXTS_PER_JOB)]
             for i in range(JOBS)]
    job_ids = [str(uuid.uuid4()) for _ in texts]

    def publish(pair):
        job_id, text = pair
        store.create(JobRecord(job_id=job_id, model=MODEL, queue=QUEUE, texts=text))
        celery.send_task(MODERATE_TASK, args=[job_id, MODEL, text], queue=QUEUE, task_id=job_id)

    def publish_stream(pairs) -> None:
        step = JOBS // PUBLISH_SECONDS
        for start_at in range(0, JOBS, step):
            began = time.monotonic()
            for pair in pairs[start_at:start_at + step]:
                publish(pair)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))

    def unfinished() -> int:
        return sum(status not in FINISHED for status, _ in store.states(job_ids))

    def consuming(proc: Proc) -> bool:
        return proc.alive() and f"moderation-{proc.process.pid}@" in proc.log_tail(200_000) and \
            " ready." in proc.log_tail(200_000)

    slots: dict[int, list[Proc]] = {slot: [] for slot in range(WORKERS)}
    kills = 0
    with ExitStack() as cleanup:
        def start(slot: int) -> None:
            log = tmp_path / f"worker-{slot}-{len(slots[slot])}.log"
            slots[slot].append(cleanup.enter_context(Proc(worker_command(), env, log)))

        for slot in slots:
            start(slot)
        wait_until(lambda: all(consuming(procs[-1]) for procs in slots.values()), timeout=300, interval=0.5,
                   what="three consuming workers")
        # Jobs arrive as a stream over PUBLISH_SECONDS, so the kills fall while there is work in flight
        # however fast this machine drains them.
        started = time.monotonic()
        publisher = ThreadPoolExecutor(1)
        published = publisher.submit(publish_stream, list(zip(job_ids, texts)))
        victims = itertools.cycle(slots)
        while kills < MAX_KILLS and (not published.done() or unfinished()):
            time.sleep(KILL_EVERY_SECONDS)
            # The next slot whose worker is consuming (one still loading its model has nothing to lose).
            slot = next((s for s in (next(victims) for _ in slots) if consuming(slots[s][-1])), None)
            if slot is None:
                continue
            slots[slot][-1].signal_group(signal.SIGKILL)
            slots[slot][-1].process.wait(10)
            kills += 1
            start(slot)
        published.result()
        publisher.shutdown()
        last_kill = time.monotonic()
        wait_until(lambda: unfinished() == 0, timeout=VISIBILITY_TIMEOUT + 180, interval=0.5,
                   what="every job to finish")
        drained = time.monotonic()

    records = [store.get(job_id) for job_id in job_ids]
    assert [r.status for r in records].count("succeeded") == JOBS, \
        {r.status: r.error for r in records if r.status != "succeeded"}
    reference = TextClassifier(str(model_path), device="cpu", threads=1, engine="torch", quantize="none")
    expected = iter(reference.scores([text for job_texts in texts for text in job_texts]))
    for record in records:  # each result is the model's, whoever stored it
        for result in record.results:
            got, want = list(result["category_scores"].values()), next(expected)
            assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(got, want)), (record.job_id, got)

    deliveries = DeliveryCounter(client, 3600, 3)
    pid_slot = {proc.process.pid: slot for slot, procs in slots.items() for proc in procs}
    per_slot = {slot: 0 for slot in slots}
    for name in deliveries.last_workers(job_ids):
        per_slot[pid_slot[int(name.split("-", 1)[1].split("@")[0])]] += 1
    attempts = deliveries.counts(job_ids)
    assert all(count >= 1 for count in per_slot.values()), per_slot
    assert kills >= 3, "the jobs drained before enough kills: nothing was tested"
    print(f"\n[many workers] {broker.kind}: {JOBS} jobs x {TEXTS_PER_JOB} texts, {WORKERS} workers, {kills} SIGKILLs "
          f"(one every {KILL_EVERY_SECONDS:g}s), 0 lost, 0 failed; drained {drained - started:.1f}s after the "
          f"first publish, {drained - last_kill:.1f}s after the last kill (VISIBILITY_TIMEOUT={VISIBILITY_TIMEOUT} on "
          f"Redis); jobs stored per worker slot {per_slot}; jobs run more than once: "
          f"{sum(a > 1 for a in attempts)}, max attempts {max(attempts)}")
