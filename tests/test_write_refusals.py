"""A job store that answers PING but refuses writes, and job leases that outlive the broker connection.

- READONLY: the store Redis is made a replica of a master that does not exist (REPLICAOF), as after a
  failover that demoted it: it keeps its data and answers reads and PING, and refuses every write. The
  worker (RabbitMQ broker, a private vhost) must pause consumption as for a store that is down, not fail
  and requeue its batches in a loop (which on RabbitMQ climbs the delivery count until messages park),
  and resume once a write goes through: every job succeeds once.
- The lease keeper (worker/leases.py) keeps the jobs a worker runs its own on a thread of its own: no
  other worker's claim takes them while it renews, whatever the broker connection does.
"""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack

import pytest
import redis as redis_py
from kombu import Connection

from shared import metrics as names
from shared.jobs import LEASE_SECONDS, JobRecord, JobStore
from shared.queues import queue_for_model
from tests.scrape import metric, worker_samples
from tests.support import (
    RabbitVhost,
    RedisServer,
    base_env,
    distinct_texts,
    start_api,
    start_worker,
    submit_all,
    wait_until,
)
from worker.leases import HeldJobs, LeaseKeeper

MODEL = "tiny"
QUEUE = queue_for_model(MODEL)
JOBS = 200


def ready_count(broker_url: str) -> int:
    with Connection(broker_url) as connection:
        return connection.default_channel.queue_declare(queue=QUEUE, passive=True).message_count


@pytest.fixture
def rabbit_stack(tiny_multilabel_model, tmp_path):
    with ExitStack() as cleanup:
        store_server = cleanup.enter_context(RedisServer(tmp_path / "store").start())
        vhost = cleanup.enter_context(RabbitVhost(f"test-write-refusals-{uuid.uuid4().hex[:12]}"))
        env = base_env(store_server.url, CELERY_BROKER_URL=vhost.url, MODELS=f"{MODEL}={tiny_multilabel_model}",
                       DEFAULT_MODEL=MODEL, BATCH_MAX_TEXTS="8")
        api = cleanup.enter_context(start_api(env, tmp_path / "api.log", workers=1))
        yield env, vhost.url, store_server, api, tmp_path
        redis_py.Redis(port=store_server.port).execute_command("REPLICAOF", "NO", "ONE")


def test_a_store_that_refuses_writes_pauses_the_worker_until_it_takes_them(rabbit_stack):
    env, broker_url, store_server, api, logs = rabbit_stack
    store = redis_py.Redis(port=store_server.port, decode_responses=True)
    job_ids = submit_all(api.url, distinct_texts(JOBS, "readonly"))
    worker = start_worker(env, logs / "worker.log", models=[MODEL])
    try:
        wait_until(lambda: ready_count(broker_url) < JOBS - 20, timeout=60, what="the worker to start on the backlog")
        store.execute_command("REPLICAOF", "127.0.0.1", "1")  # demoted: READONLY from now on
        with pytest.raises(redis_py.ReadOnlyError):
            store.set("probe", "1")
        assert store.ping()
        wait_until(lambda: "pausing consumption" in worker.log_tail(1_000_000), timeout=30,
                   what="the worker to pause")
        # Paused: the backlog's ready count stays put (no batch taken, failed and requeued in a loop).
        time.sleep(0.5)  # batches in flight when the refusal began settle into the pause
        counts = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            counts.append(ready_count(broker_url))
            time.sleep(0.25)
        assert len(set(counts)) == 1 and counts[0] > 0, counts
        store.execute_command("REPLICAOF", "NO", "ONE")  # promoted again: writes go through
        js = JobStore(store, 3600)
        wait_until(lambda: all(status == "succeeded" for status, _ in js.states(job_ids)), timeout=180,
                   interval=0.25, what="every job to succeed")
        assert "resuming consumption" in worker.log_tail(1_000_000)
        url = f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics"
        wait_until(lambda: metric(worker_samples(url), names.JOBS_COMPLETED_TOTAL, MODEL, status="succeeded") >= JOBS,
                   timeout=20, what="the completed count")
        assert metric(worker_samples(url), names.JOBS_COMPLETED_TOTAL, MODEL, status="succeeded") == JOBS
        assert worker.alive()
    finally:
        worker.stop()


def test_the_lease_keeper_keeps_a_running_job_from_other_workers(redis_server):
    client = redis_server.client()
    client.flushall()
    store = JobStore(client, 3600)
    record = JobRecord(job_id=str(uuid.uuid4()), model=MODEL, queue=QUEUE, texts=["hello"])
    store.create(record)
    [claim] = store.claim([record.job_id], "worker-a")
    held = HeldJobs()
    held.take([record.job_id])
    held.hold(record.job_id, claim.token)
    keeper = LeaseKeeper(store, "worker-a", held)
    keeper.start()
    try:
        started = time.monotonic()
        while time.monotonic() - started < LEASE_SECONDS * 1.5:  # past one lease: only renewals keep it
            assert store.claim([record.job_id], "worker-b")[0].verdict == "held"
            time.sleep(1)
        held.release([record.job_id])  # the batch is done with it: no more renewals
        wait_until(lambda: store.claim([record.job_id], "worker-b")[0].verdict == "run", timeout=LEASE_SECONDS + 5,
                   what="the lease to expire once renewals stop")
    finally:
        keeper.stop()
