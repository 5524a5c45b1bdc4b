"""A job-store outage while the worker consumes a backlog loses nothing (issue 17's scenario).

A few hundred jobs are queued; the worker starts on them; then the job-store Redis (REDIS_URL, behind a
proxy the test stops: connections refused and cut) is gone for ~20 s, and comes back. The worker must
pause consumption instead of rejecting and requeueing its batches in a loop (on RabbitMQ that loop ends
with the quorum queue dropping every message past its delivery limit: the whole backlog lost), and
resume when the store answers: every job succeeds, each stored once and counted once. On RabbitMQ the
pause itself is checked: the queue's ready count does not move during the outage, and it has no consumer.

Both brokers: RabbitMQ (a private vhost), and the Redis transport on a SEPARATE broker Redis (with one
Redis for both, a store outage is a broker outage too: tests/test_redis_outage.py).
"""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack
from types import SimpleNamespace

import pytest
import redis as redis_py
from kombu import Connection

from shared import metrics as names
from shared.jobs import FINISHED, JobStore
from shared.queues import queue_for_model
from tests.hooked_worker import command as hooked_worker
from tests.scrape import metric, worker_samples
from tests.support import (
    Proc,
    RabbitVhost,
    RedisServer,
    TcpProxy,
    base_env,
    distinct_texts,
    start_api,
    start_worker,
    submit_all,
    wait_until,
)
from worker.deliveries import DeliveryCounter

MODEL = "tiny"
QUEUE = queue_for_model(MODEL)
JOBS = 400
OUTAGE_SECONDS = 20


@pytest.fixture(params=["rabbitmq", "separate-redis"])
def outage_stack(request, tiny_multilabel_model, tmp_path):
    with ExitStack() as cleanup:
        store_server = cleanup.enter_context(RedisServer(tmp_path / "store").start())
        store_proxy = TcpProxy(store_server.port).start()
        cleanup.callback(store_proxy.stop)
        if request.param == "rabbitmq":
            vhost = cleanup.enter_context(RabbitVhost(f"test-store-outage-{uuid.uuid4().hex[:12]}"))
            broker_url, broker_redis = vhost.url, None
        else:
            broker_server = cleanup.enter_context(RedisServer(tmp_path / "broker").start())
            broker_url = broker_server.url
            broker_redis, vhost = broker_server.client(), None
        # BATCH_MAX_TEXTS=4: small batches, so the backlog takes a while and the outage meets it mid-way.
        env = base_env(f"redis://127.0.0.1:{store_proxy.port}/0", MODELS=f"{MODEL}={tiny_multilabel_model}",
                       DEFAULT_MODEL=MODEL, CELERY_BROKER_URL=broker_url, BATCH_MAX_TEXTS="4",
                       BATCH_MAX_WAIT_MS="20")
        api = cleanup.enter_context(start_api(env, tmp_path / "api.log"))
        yield SimpleNamespace(kind=request.param, env=env, api=api, proxy=store_proxy, logs=tmp_path,
                              store=JobStore(store_server.client(), 3600), broker_redis=broker_redis, vhost=vhost,
                              cleanup=cleanup)


def test_a_store_outage_pauses_the_worker_and_every_queued_job_finishes_once(outage_stack):
    stack = outage_stack
    job_ids = submit_all(stack.api.url, distinct_texts(JOBS, "store outage"))

    def finished() -> int:
        return sum(status in FINISHED for status, _ in stack.store.states(job_ids))

    worker = stack.cleanup.enter_context(start_worker(stack.env, stack.logs / "worker.log", models=[MODEL]))
    wait_until(lambda: finished() >= 20, timeout=120, interval=0.02, what="the worker to finish its first jobs")
    stack.proxy.stop()
    outage_started = time.monotonic()
    at_outage = JOBS - finished()
    try:
        time.sleep(5)  # into the outage: the worker has met it
        pushes = _list_pushes(stack.broker_redis) if stack.broker_redis is not None else None
        # RabbitMQ: the queue's ready count through the rest of the fault (passive declares, which answer at
        # once; rabbitmqctl's statistics lag by seconds), and its consumers at both ends of that span.
        ready = consumers = None
        if stack.vhost is not None:
            consumers = [stack.vhost.consumers(QUEUE)]
            ready = _ready_counts(stack.vhost.url, until=outage_started + OUTAGE_SECONDS - 1)
            consumers.append(stack.vhost.consumers(QUEUE))
        time.sleep(max(0.0, outage_started + OUTAGE_SECONDS - time.monotonic()))  # the fault's length
        if stack.broker_redis is not None:
            # Paused, not spinning: nothing was put back on the broker's lists while the store was away.
            assert _list_pushes(stack.broker_redis) == pushes, "the worker requeued messages in a loop"
        else:
            # Paused: the worker takes nothing (and hands nothing back) while the store is away, so the ready
            # count does not move; a consumer still taking messages, or rejecting them, changes it.
            assert len(ready) >= 10 and len(set(ready)) == 1 and ready[0] > 0, \
                f"the queue's ready count moved during the outage: {_runs(ready)}"
            # And the pause is the worker's cancel, not only its prefetch window (which also stops deliveries
            # once held batches fill it): the queue has no consumer.
            assert consumers == [0, 0], f"the queue's consumers during the outage: {consumers} (not paused)"
            # Every unfinished job's message waits in the broker (ready, or held by the paused worker).
            waiting = stack.vhost.queue_info(QUEUE)
            assert waiting >= at_outage, f"messages left the queue during the outage: {waiting} for {at_outage} jobs"
    finally:
        stack.proxy.start()
    outage = time.monotonic() - outage_started
    wait_until(lambda: finished() == JOBS, timeout=180, interval=0.5,
               what=f"every job to finish after the outage ({finished()} of {JOBS})")
    drained = time.monotonic() - outage_started - outage

    statuses = [status for status, _ in stack.store.states(job_ids)]
    assert statuses.count("succeeded") == JOBS, {s: statuses.count(s) for s in set(statuses)}
    assert completed_count(stack.env, JOBS) == JOBS  # each counted once
    # A batch the outage interrupted is no worker death: nothing counts toward MAX_DELIVERIES.
    assert not any(DeliveryCounter(stack.store.redis, 3600, 3).counts(job_ids))
    log = worker.log_tail(1_000_000)
    assert "pausing consumption" in log and "resuming consumption" in log and worker.alive()
    if ready:
        print(f"\n[store outage] rabbitmq: {ready[0]} ready in all {len(ready)} samples from 5s into the outage "
              f"to its end, consumers {consumers}")
    print(f"\n[store outage] {stack.kind}: {JOBS} jobs, {at_outage} unfinished when the store went away for "
          f"{outage:.1f}s; all {JOBS} succeeded {drained:.1f}s after it came back, each counted once")


def test_a_finish_whose_reply_was_lost_is_counted_once(redis_server, tiny_multilabel_model, tmp_path):
    """The store ran a batch's finish but the worker never saw the reply (tests/hooked_worker.py): the batch
    is tried again, finds its jobs finished by this worker, and counts them then, neither zero times nor twice."""
    redis_server.client().flushall()
    env = base_env(redis_server.url, MODELS=f"{MODEL}={tiny_multilabel_model}", DEFAULT_MODEL=MODEL,
                   BATCH_MAX_TEXTS="4", BATCH_MAX_WAIT_MS="20")
    with start_api(env, tmp_path / "api.log") as api, \
            Proc(hooked_worker("lose-a-finish-reply"), env, tmp_path / "worker.log") as worker:
        store = JobStore(redis_server.client(), 3600)
        job_ids = submit_all(api.url, distinct_texts(12, "lost reply"))
        wait_until(lambda: all(status == "succeeded" for status, _ in store.states(job_ids)), timeout=120,
                   interval=0.1, what="every job to succeed")
        assert completed_count(env, len(job_ids)) == len(job_ids)
        assert "results stored; the reply is lost" in worker.log_tail(1_000_000)
        finishers = set(store.finishers(job_ids))
        assert len(finishers) == 1 and finishers.pop().startswith(f"moderation-{worker.process.pid}@")


def completed_count(env: dict, expected: int) -> float:
    """The worker's moderation_jobs_completed_total once it reaches `expected` (its counter moves just after
    the results it counts are stored), or after 10 s; the caller asserts it is exactly that."""
    url = f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics"

    def count():
        return metric(worker_samples(url), names.JOBS_COMPLETED_TOTAL, MODEL, status="succeeded")

    def reached():
        value = count()
        return value >= expected and value
    try:
        return wait_until(reached, timeout=10, what="the completed count")
    except AssertionError:
        return count()


def _ready_counts(broker_url: str, until: float, interval: float = 0.25) -> list[int]:
    """The queue's ready messages (a passive queue_declare) every `interval` s until time.monotonic() `until`."""
    counts = []
    with Connection(broker_url) as connection:
        channel = connection.default_channel
        while True:
            counts.append(channel.queue_declare(queue=QUEUE, passive=True).message_count)
            if time.monotonic() + interval >= until:
                return counts
            time.sleep(interval)


def _runs(counts: list[int]) -> str:
    """`counts` with repeats folded (`364 x40, 360 x2`), for a failure message."""
    runs: list[list[int]] = []
    for count in counts:
        if runs and runs[-1][0] == count:
            runs[-1][1] += 1
        else:
            runs.append([count, 1])
    return ", ".join(f"{count} x{times}" for count, times in runs)


def _list_pushes(client: redis_py.Redis) -> int:
    """LPUSH + RPUSH calls the broker Redis has served (kombu requeues a rejected message with one)."""
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("lpush", "rpush"))
