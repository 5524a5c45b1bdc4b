"""The job store on a Redis Cluster (REDIS_CLUSTER=true): a real six-node cluster on 127.0.0.1:7100-7105
(scripts/redis_cluster.py: 3 masters, 3 replicas).

Store level (in this process): every key one script touches shares a hash slot, the buckets spread evenly over
the masters, every store step works across buckets, completions come over sharded pub/sub, WAIT refuses a job
whose record no replica holds. Then the service itself: gunicorn and `python -m worker` on the cluster with
RabbitMQ (a private vhost, REDIS_WAIT_REPLICAS=1) or a separate plain Redis as the broker: results, long polls,
cancel, webhooks (the outbox), a rate limit, the job keys on all three masters; and the combinations refused at
start (the broker in the cluster)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from types import SimpleNamespace

import pytest
import redis
import requests
from redis.crc import key_slot

from scripts.redis_cluster import start_cluster
from shared.completions import CompletionListener
from shared.config import ConfigError, load_settings
from shared.jobs import (
    RUN,
    SUCCEEDED,
    JobRecord,
    JobStore,
    NotReplicated,
    pending_age,
    pending_count,
    pending_oldest,
)
from shared.keyspace import BUCKET_TAGS, CLUSTER, CLUSTER_BUCKETS, PLAIN, keyspace_for
from shared.queues import queue_for_model
from shared.redis_client import check_broker_outside_cluster, limiter_storage_url, store_client
from shared.webhooks import WebhookOutbox
from tests.support import (
    ROOT,
    RabbitVhost,
    RedisServer,
    base_env,
    start_api,
    start_worker,
    submit_all,
    wait_for_job,
    wait_until,
    worker_command,
)
from tests.webhook_receiver import Receiver
from worker.pending_sweep import PendingIndex

BASE_PORT = 7100  # this module's cluster: 7100-7105 (the node-loss tests use other ports)
QUEUE = "moderation.cluster"
SECRET = "whsec_Y2x1c3Rlci13ZWJob29rLXNlY3JldC0yNC1i"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Redis's default node timeout (15 s), not the script's 2 s: on a loaded 2-core machine a master that misses
    # 2 s of pings is failed over, and nothing here wants a failover (the node-loss tests do).
    local = start_cluster(BASE_PORT, tmp_path_factory.mktemp("redis-cluster"), node_timeout_ms=15000)
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def client(cluster):
    cluster.flushall()
    return store_client(cluster.seed_url(), cluster=True)


def new_jobs(store: JobStore, count: int, queue: str = QUEUE, **fields) -> list[JobRecord]:
    records = [JobRecord(job_id=str(uuid.uuid4()), model="m", queue=queue, texts=[f"text {i}"], **fields)
               for i in range(count)]
    for record in records:
        store.create(record)
    return records


def keys_on(cluster, port: int, pattern: str) -> list[str]:
    return list(cluster.client(port).scan_iter(pattern, count=1000))


def test_the_plain_layout_is_the_one_plain_redis_always_had():
    job = "0b6c0c1e-5f0a-4d59-9a55-0ad2ce0e6a10"
    assert (PLAIN.job_key(job), PLAIN.deliveries_key(job), PLAIN.pending_key_of(QUEUE, job),
            PLAIN.outbox_key_of(job), PLAIN.done_channel(job), PLAIN.probe_keys("w")) == \
        (f"moderation:job:{job}", f"moderation:deliveries:{job}", f"moderation:pending:{QUEUE}",
         "moderation:webhooks:outbox", f"moderation:job:{job}:done", ["moderation:store-probe:w"])
    assert keyspace_for(redis.Redis()) is PLAIN


def test_one_jobs_keys_share_a_slot_and_the_buckets_spread_evenly(cluster):
    for job in (str(uuid.uuid4()) for _ in range(200)):
        names = [CLUSTER.job_key(job), CLUSTER.deliveries_key(job), CLUSTER.pending_key_of(QUEUE, job),
                 CLUSTER.outbox_key_of(job), CLUSTER.done_channel(job)]
        assert len({key_slot(name.encode()) for name in names}) == 1, names
    # Bucket i's slot lies in the i-th 64th of the slot space, so even slot ranges hold even shares of buckets.
    slots = [key_slot(tag.encode()) for tag in BUCKET_TAGS]
    assert [slot * CLUSTER_BUCKETS // 16384 for slot in slots] == list(range(CLUSTER_BUCKETS))
    per_master: dict[int, int] = {}
    for slot in slots:
        master = cluster.master_for_slot(slot)
        per_master[master] = per_master.get(master, 0) + 1
    assert sorted(per_master.values()) == [21, 21, 22], per_master


def test_every_store_step_works_across_the_buckets_of_a_cluster(client, cluster):
    store = JobStore(client, 600, [QUEUE])
    records = new_jobs(store, 150, callback_url="http://127.0.0.1/hook")
    ids = [r.job_id for r in records]
    assert pending_count(client, QUEUE) == 150
    assert pending_oldest(client, QUEUE) == pytest.approx(min(r.enqueued_ts for r in records))
    assert 0 <= pending_age(client, QUEUE) < 60
    assert len(store.keys.by_bucket(ids)) > 40  # the batch below spans most buckets
    # The records are on every master, in many buckets.
    for master in cluster.masters():
        assert len(keys_on(cluster, master, "moderation:job:*")) > 20, master

    # One claim call per bucket, pipelined; each job's reply back in the order asked for (with a duplicate).
    claims = store.claim(ids + ids[:1], "worker-a")
    assert [c.verdict for c in claims] == [RUN] * 151
    assert [c.texts for c in claims[:150]] == [r.texts for r in records]
    assert store.claim(ids[:5], "worker-b")[0].verdict == "held"
    leases = {job: c.token for job, c in zip(ids, claims)}
    assert store.renew("worker-a", leases) == []
    assert store.renew("worker-b", leases) == ids  # not its leases
    store.release("worker-a", {ids[-1]: leases[ids[-1]]})
    assert store.claim([ids[-1]], "worker-b")[0].verdict == RUN  # released: taken at once
    assert store.requeue(ids[-2], QUEUE, "worker-a", leases[ids[-2]], "cursor", [[0.5]], True)

    finished = store.finish_many([(job, [{"flagged": False}], None) for job in ids[:100]], "worker-a", leases)
    assert finished == [True] * 100
    assert pending_count(client, QUEUE) == 50
    assert {store.get(job).status for job in ids[:100]} == {SUCCEEDED}
    assert store.finishers(ids[:2]) == ["worker-a", "worker-a"]
    # The finish script put each callback in its bucket's outbox; a sweep takes them from every bucket once.
    outbox = WebhookOutbox(client)
    assert sorted(outbox.take_due(grace=0)) == sorted(ids[:100]) and outbox.take_due(grace=10) == []
    assert outbox.is_pending(ids[0]) and not outbox.is_pending(ids[120])

    # A store told of no queue still clears the pending entry (a second command, in the job's slot).
    blind = JobStore(client, 600)
    assert blind.finish_many([(ids[100], None, "boom")]) == [True]
    canceled = new_jobs(store, 2)
    assert blind.cancel(canceled[0].job_id) == (True, "canceled") and store.cancel(canceled[1].job_id)[0]
    assert pending_count(client, QUEUE) == 49

    # The pending sweep: entries of expired or finished jobs go, bucket by bucket.
    for job in ids[101:111]:
        client.delete(store.keys.job_key(job))
    assert PendingIndex(client).forget_gone(QUEUE) == 10
    assert pending_count(client, QUEUE) == 39
    assert len(store.pending_before(QUEUE, time.time() + 1, limit=7)) == 7
    assert store.takes_writes("worker-a")
    assert len(keys_on(cluster, cluster.masters()[0], "moderation:store-probe:*")) in (21, 22)


def test_completions_come_over_sharded_pub_sub(client, cluster):
    store = JobStore(client, 600, [QUEUE])
    listener = CompletionListener(store_client(cluster.seed_url(), cluster=True))
    records = new_jobs(store, 30)
    watches = [listener.watching(r.job_id) for r in records]
    waiters = [watch.__enter__() for watch in watches]
    try:
        wait_until(lambda: listener._subscribed_at is not None, timeout=20, what="the sharded subscriptions")
        # One connection per master, SSUBSCRIBEd to that master's buckets' channels: 64 in all.
        subscribed = {port: sum(int(c.get("ssub", 0)) for c in cluster.client(port).client_list())
                      for port in cluster.masters()}
        assert sum(subscribed.values()) == CLUSTER_BUCKETS and all(subscribed.values()), subscribed
        got = {}
        threads = [threading.Thread(target=lambda w=w: got.__setitem__(w.job_id, store.wait_watched(w, 20, listener)))
                   for w in waiters]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        store.finish_many([(r.job_id, [{"flagged": True}], None) for r in records])
        for thread in threads:
            thread.join(30)
        # Woken by the messages: with the subscription up nothing re-reads the records, so a lost message
        # would hold its waiter for the whole 20 s.
        assert time.monotonic() - started < 10
        assert {job: record.results for job, record in got.items()} == {r.job_id: [{"flagged": True}] for r in records}
    finally:
        for watch in watches:
            watch.__exit__(None, None, None)


def test_wait_refuses_a_job_no_replica_holds_and_counts_a_finish_none_holds(client, cluster):
    cluster.wait_ok(replicas=True)
    store = JobStore(client, 600, [QUEUE], wait_replicas=1, wait_timeout_ms=100)
    [accepted] = new_jobs(store, 1)  # replicas up: WAIT answers 1 at once
    record = JobRecord(job_id=str(uuid.uuid4()), model="m", queue=QUEUE, texts=["x"])
    replica = cluster.replica_of(cluster.master_for_slot(store.keys.job_key(record.job_id)))[0]
    print(f"freezing {replica}:\n{cluster.status()}")  # shown if the test fails
    cluster.kill(replica, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(NotReplicated, match="0 of REDIS_WAIT_REPLICAS=1"):
            store.create(record)
        assert time.monotonic() - started < 0.9  # within REDIS_WAIT_TIMEOUT_MS, not the socket timeout
        assert not store.exists(record.job_id) and pending_count(client, QUEUE) == 1  # deleted again
        same_master = next(r for r in (JobRecord(job_id=str(uuid.uuid4()), model="m", queue=QUEUE, texts=["y"])
                                       for _ in range(10_000))
                           if cluster.master_for_slot(store.keys.job_key(r.job_id)) ==
                           cluster.master_for_slot(store.keys.job_key(record.job_id)))
        JobStore(client, 600, [QUEUE]).create(same_master)
        # A finish is stored all the same (the worker goes on); the shortfall is counted and logged.
        assert store.finish_many([(same_master.job_id, [], None)]) == [True]
        assert store.unreplicated_finishes == 1
    finally:
        cluster.kill(replica, signal.SIGCONT)
    assert store.finish_many([(accepted.job_id, [], None)]) == [True] and store.unreplicated_finishes == 1


def test_the_broker_may_not_live_in_the_cluster(cluster):
    seeds = cluster.seed_url()
    env = {"REDIS_CLUSTER": "true", "REDIS_URL": seeds}
    with pytest.raises(ConfigError, match="CELERY_BROKER_URL is unset"):
        load_settings(env)
    with pytest.raises(ConfigError, match="names a node of REDIS_URL's cluster"):
        load_settings({**env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{BASE_PORT + 1}/0"})
    with pytest.raises(ConfigError, match="several nodes"):
        load_settings({"REDIS_URL": seeds})
    # Another node of the cluster (not a seed): the broker Redis itself says it is a cluster node, at start.
    inside = load_settings({**env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{BASE_PORT + 5}/0"})
    with pytest.raises(ConfigError, match="names a Redis Cluster node"):
        check_broker_outside_cluster(inside)
    check_broker_outside_cluster(load_settings({**env, "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"}))
    assert limiter_storage_url(inside) == "redis+cluster://127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102"
    # The processes refuse to start, with the reason.
    worker = subprocess.run(worker_command(), env={**base_env(seeds), **env,
                                                   "CELERY_BROKER_URL": f"redis://127.0.0.1:{BASE_PORT + 5}/0"},
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert worker.returncode == 2 and "has no cluster mode" in worker.stderr, worker.stderr[-2000:]
    api = subprocess.run([sys.executable, "-c", "from api import create_app; create_app()"],
                         env={**base_env(seeds), **env}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert api.returncode != 0 and "CELERY_BROKER_URL is unset" in api.stderr, api.stderr[-2000:]


def test_rate_limits_count_in_the_cluster(cluster, tmp_path):
    cluster.flushall()
    env = base_env(cluster.seed_url(), REDIS_CLUSTER="true", CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672//",
                   READ_RATE_LIMITER="3/minute")
    with start_api(env, tmp_path / "api.log", workers=1) as api:
        unknown = f"{api.url}/jobs/{uuid.uuid4()}"
        statuses = [requests.get(unknown, timeout=10).status_code for _ in range(4)]
    assert statuses == [404, 404, 404, 429]
    assert any(keys_on(cluster, port, "*moderation-limits*") for port in cluster.masters())


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as server:
        yield server


@pytest.fixture(scope="module", params=["rabbitmq", "separate-redis"])
def stack(request, cluster, tiny_multilabel_model, tmp_path_factory, receiver):
    """API + worker on the cluster: RabbitMQ (a private vhost) with REDIS_WAIT_REPLICAS=1, or a separate Redis."""
    cluster.flushall()
    logs = tmp_path_factory.mktemp(f"cluster-{request.param}")
    with ExitStack() as cleanup:
        if request.param == "rabbitmq":
            broker_url = cleanup.enter_context(RabbitVhost(f"test-{uuid.uuid4().hex[:12]}")).url
            extra = {"REDIS_WAIT_REPLICAS": "1"}
        else:
            broker_url = cleanup.enter_context(RedisServer(logs / "broker").start()).url
            extra = {}
        # "idle" has a queue but no worker: its jobs stay queued (cancel).
        env = base_env(cluster.seed_url(), REDIS_CLUSTER="true", CELERY_BROKER_URL=broker_url, DEFAULT_MODEL="tiny",
                       WORKER_MODELS="tiny", MODELS=f"tiny={tiny_multilabel_model},idle={tiny_multilabel_model}",
                       WEBHOOK_ALLOWED_HOSTS="127.0.0.1", WEBHOOK_SECRET=SECRET, **extra)
        api = cleanup.enter_context(start_api(env, logs / "api.log"))
        worker = cleanup.enter_context(start_worker(env, logs / "worker.log", models=["tiny"]))
        yield SimpleNamespace(api=api, worker=worker, env=env, kind=request.param,
                              client=store_client(cluster.seed_url(), cluster=True))


def test_jobs_on_the_cluster_come_back_and_their_keys_lie_on_every_master(stack, cluster):
    texts = [f"the weather is nice {i}" for i in range(60)]
    job_ids = submit_all(stack.api.url, texts, threads=6)
    bodies = [wait_for_job(stack.api.url, job_id, timeout=120) for job_id in job_ids]
    assert {body["status"] for body in bodies} == {"succeeded"}
    assert all(len(body["results"]) == 1 and set(body["results"][0]["category_scores"]) ==
               {"hate", "harassment", "violence"} for body in bodies)
    for master in cluster.masters():
        assert keys_on(cluster, master, "moderation:job:*"), f"no job keys on master {master}"
        assert keys_on(cluster, master, "moderation:deliveries:*"), f"no lease keys on master {master}"
    assert pending_count(stack.client, queue_for_model("tiny")) == 0  # every finish cleared its entry
    assert "Traceback" not in stack.worker.log_tail(1_000_000)


def test_a_long_poll_is_woken_by_the_sharded_completion(stack, cluster):
    started = time.monotonic()
    answer = requests.post(stack.api.url + "/generate", json={"input_text": "a long poll", "wait": 20}, timeout=40)
    assert answer.status_code == 200 and answer.json()["status"] == "succeeded", answer.text
    assert time.monotonic() - started < 15
    # The API processes that waited hold SSUBSCRIBEs on the masters (one connection per master each).
    assert sum(int(c.get("ssub", 0)) for port in cluster.masters() for c in cluster.client(port).client_list()) \
        >= CLUSTER_BUCKETS


def test_cancel_a_queued_job_on_the_cluster(stack):
    job_id = requests.post(stack.api.url + "/generate", json={"input_text": "never run", "model": "idle"},
                           timeout=10).json()["job_id"]
    assert pending_count(stack.client, queue_for_model("idle")) == 1
    canceled = requests.delete(f"{stack.api.url}/jobs/{job_id}", timeout=10)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert requests.get(f"{stack.api.url}/jobs/{job_id}", timeout=10).json()["status"] == "canceled"
    assert pending_count(stack.client, queue_for_model("idle")) == 0


def test_a_webhook_is_delivered_through_the_bucketed_outbox(stack, receiver):
    path = f"/hook-{stack.kind}"
    job_id = requests.post(stack.api.url + "/generate", json={"input_text": "call me back",
                                                              "callback_url": receiver.url(path)},
                           timeout=10).json()["job_id"]
    wait_until(lambda: receiver.calls_to(path), timeout=60, what="the webhook")
    assert receiver.calls_to(path)[0]["headers"]["webhook-id"] == job_id
    outbox = WebhookOutbox(stack.client)
    wait_until(lambda: not outbox.is_pending(job_id), timeout=30, what="the outbox entry to go")

