"""Node loss: the service on a three-node RabbitMQ cluster (and a Redis Cluster job store), 300 jobs in flight,
one node SIGKILLed; every accepted job finishes once.

Cases (each on clusters of its own, started fresh: scripts/rabbitmq_cluster.py, scripts/redis_cluster.py):
- rabbitmq-leader: the RabbitMQ node that leads the model's quorum queue (3 replicas) is SIGKILLed. The
  queue's two other replicas elect a leader; the API, whose connections were on that node, and the worker
  connected to it go to the next node of their failover lists (`amqp://n1;amqp://n2;amqp://n3`); the second
  worker, connected to another node from the start, keeps its consumer. The node stays down. The job store: a
  private plain Redis.
- redis-master: the master of the job store's Redis Cluster (three masters, one replica each) that holds the
  last job queued is SIGKILLed: its replica is promoted. Once it is, the lost node is started again, as a
  supervisor would, and rejoins as the new master's replica (REDIS_WAIT_REPLICAS=1: "accepted" means on a
  replica too, so until then that shard's submissions are refused with 503 and retried). The broker: the
  RabbitMQ cluster, untouched.
- node-of-both: the two at once (what a lost host running one of each does).

Every case: the API (its broker list from node 1) and 240 single-text jobs queued; two workers (the tiny model
behind tests/hooked_worker.py's slow-model hook, 0.25 s a batch, BATCH_MAX_TEXTS=4, WORKER_CONCURRENCY=1, so
the 300 jobs take some 10 s) started together, the first with the list from node 1, the second from node 2;
the node is killed once 20 jobs are done; clients then submit 60 more (a 503 is retried after Retry-After, as
clients do; the test counts them). Counted as in the fault matrix (tests/job_accounting.py): lost, failed,
duplicated (a done message seen twice, or the workers' completed counter past the jobs stored) must all be 0,
and the workers' counters must add up to the jobs stored. Recovery: from the kill to the first job finished
after it, and to the last one; the longest time after the kill in which none finished. The table is printed
and written to var/node-loss/report.json; docs/reliability.md "Clusters" records a run.

Run by `make test-cluster` (MODERATION_CLUSTER_TESTS=1), not by `make test`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from types import SimpleNamespace

import pytest
from redis.crc import key_slot

from scripts.launch import ROOT
from scripts.rabbitmq_cluster import start_rabbit_cluster
from shared.config import load_settings
from shared.jobs import JobStore
from shared.queues import queue_for_model
from shared.redis_client import make_redis
from tests.hooked_worker import command as hooked_worker
from tests.job_accounting import (
    DoneMessages,
    ShardedDoneMessages,
    Workers,
    submit_accepted,
    tally,
    unfinished,
    write_report,
)
from tests.support import RedisServer, base_env, distinct_texts, start_api, wait_until

pytestmark = pytest.mark.skipif(os.environ.get("MODERATION_CLUSTER_TESTS") != "1",
                                reason="node-loss tests on local clusters (a few minutes): run by `make test-cluster`")

MODEL = "tiny"
QUEUE = queue_for_model(MODEL)
JOBS_BEFORE, JOBS_AFTER = 240, 60  # queued before the kill, submitted right after it: 300 in all
DONE_BEFORE_KILL = 20
# Ports of their own, clear of `make run-cluster`'s (RabbitMQ 5701-5703, Redis 7100-7105) and of the machine's.
RABBIT_BASE_PORT, RABBIT_PREFIX = 5711, "modqt"
REDIS_BASE_PORT = 7200
CASES = ["rabbitmq-leader", "redis-master", "node-of-both"]
REPORT = ROOT / "var" / "node-loss" / "report.json"
ROWS: list[dict] = []


def redis_cluster_support():
    """scripts.redis_cluster, or a skip when the Redis Cluster job store has not landed in this tree."""
    try:
        from scripts import redis_cluster
    except ImportError:
        pytest.skip("scripts/redis_cluster.py is not in this tree")
    if not hasattr(load_settings({"REDIS_CLUSTER": "true", "CELERY_BROKER_URL": "amqp://x//"}), "redis_cluster"):
        pytest.skip("shared/config.py has no REDIS_CLUSTER")
    return redis_cluster


@pytest.fixture(scope="session", autouse=True)
def report():
    yield
    for row in ROWS:
        row.setdefault("redis_times", f"{row['redis_promoted_s']:.1f} s / {row['redis_replica_back_s']:.1f} s"
                       if "redis_promoted_s" in row else "—")
    write_report(REPORT, ROWS, {
        "fault": "{fault}", "jobs": "{jobs}", "in flight at the kill": "{in_flight_at_kill}", "lost": "{lost}",
        "duplicated": "{duplicated}", "failed": "{failed}",
        "first job finished after the kill": "{first_finish_s:.1f} s", "all finished": "{all_finished_s:.1f} s",
        "longest pause": "{longest_pause_s:.1f} s", "Redis replica promoted / lost node back": "{redis_times}",
        "503s retried": "{refused}"})


def build_stack(case: str, model_path, logs, cleanup: ExitStack) -> SimpleNamespace:
    """The case's clusters (or private Redis), the API, the env the workers get."""
    stack = SimpleNamespace(case=case, logs=logs, workers=0, redis_cluster=None)
    stack.rabbit = cleanup.enter_context(start_rabbit_cluster(RABBIT_BASE_PORT, logs / "rabbitmq",
                                                              prefix=RABBIT_PREFIX))
    if case == "rabbitmq-leader":
        stack.store = cleanup.enter_context(RedisServer(logs / "store").start())
        store_env = {"REDIS_URL": stack.store.url}
        stack.done_messages = lambda: DoneMessages(stack.store.url)
    else:
        redis_cluster = redis_cluster_support()
        stack.redis_cluster = redis_cluster.start_cluster(REDIS_BASE_PORT, logs / "redis-cluster")
        cleanup.callback(stack.redis_cluster.stop)
        # "Accepted" = on a replica too: a master lost right after a write loses nothing acknowledged.
        store_env = {"REDIS_URL": stack.redis_cluster.seed_url(), "REDIS_CLUSTER": "true",
                     "REDIS_WAIT_REPLICAS": "1"}
        stack.done_messages = lambda: ShardedDoneMessages(stack.redis_cluster.ports, stack.records.keys)
    stack.env = base_env(store_env["REDIS_URL"], **store_env, MODELS=f"{MODEL}={model_path}", DEFAULT_MODEL=MODEL,
                         CELERY_BROKER_URL=stack.rabbit.failover_url(), BATCH_MAX_TEXTS="4", BATCH_MAX_WAIT_MS="20",
                         WORKER_CONCURRENCY="1", SLOW_MODEL_SECONDS="0.25")
    settings = load_settings(stack.env)
    client = make_redis(settings)
    stack.records = JobStore(client, 3600)
    if stack.redis_cluster is not None:
        stack.store = SimpleNamespace(client=lambda: client)
    stack.api = cleanup.enter_context(start_api(stack.env, logs / "api.log"))
    return stack


def killer(stack, job_ids: list[str]):
    """What the case kills, chosen before the workers start (asking the clusters takes a second): the RabbitMQ
    node that leads the queue, the Redis master that holds the last job queued (unfinished when the kill comes).
    Returns kill(): SIGKILL them at once; (time.monotonic() of the kill, what was killed)."""
    victims, kills = {}, []
    if stack.case in ("rabbitmq-leader", "node-of-both"):
        leader = stack.rabbit.leader_of(QUEUE)
        victims["rabbitmq"] = leader.name
        kills.append(lambda: stack.rabbit.kill(leader))
    if stack.case in ("redis-master", "node-of-both"):
        slot = key_slot(stack.records.keys.job_key(job_ids[-1]).encode())
        victims["redis"], victims["redis_slot"] = stack.redis_cluster.master_for_slot(slot), slot
        kills.append(lambda: stack.redis_cluster.kill(victims["redis"]))

    def kill() -> tuple[float, dict]:
        threads = [threading.Thread(target=k) for k in kills]
        killed_at = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        return killed_at, victims
    return kill


def bring_back_the_redis_node(stack, victims: dict, killed_at: float, row: dict) -> threading.Thread:
    """In a thread: wait until the cluster serves every slot again without the lost master (its replica
    promoted), then start the lost node again, as a supervisor would: it rejoins as the new master's replica, so
    REDIS_WAIT_REPLICAS=1 is met again for that shard's jobs (until then the API refuses them with a 503, which
    clients retry). Records both times in `row`."""
    def run():
        # Not before the replica took over: the lost node keeps no data (the local cluster runs without
        # persistence), so back as the master it would serve its slots empty.
        wait_until(lambda: stack.redis_cluster.master_for_slot(victims["redis_slot"]) != victims["redis"],
                   timeout=60, interval=0.1, what="the lost master's replica to be promoted")
        stack.redis_cluster.wait_ok(timeout=60, replicas=False)
        row["redis_promoted_s"] = round(time.monotonic() - killed_at, 1)
        row["redis_new_master"] = stack.redis_cluster.master_for_slot(victims["redis_slot"])
        stack.redis_cluster.restart(victims["redis"])
        stack.redis_cluster.wait_ok(timeout=60, replicas=True)
        row["redis_replica_back_s"] = round(time.monotonic() - killed_at, 1)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def recovery_times(first_seen: dict[str, float], killed_at: float) -> dict:
    """From the kill to the first job finished after it and to the last one; the longest time after the kill
    in which no job finished."""
    after = sorted(t - killed_at for t in first_seen.values() if t > killed_at)
    if not after:
        return {"first_finish_s": float("nan"), "all_finished_s": float("nan"), "longest_pause_s": float("nan")}
    return {"first_finish_s": round(after[0], 1), "all_finished_s": round(after[-1], 1),
            "longest_pause_s": round(max(b - a for a, b in zip([0.0, *after], after)), 1)}


@pytest.mark.parametrize("case", CASES)
def test_every_accepted_job_finishes_once_when_a_node_is_lost(case, tiny_multilabel_model, tmp_path_factory):
    logs = tmp_path_factory.mktemp(f"node-loss-{case}")
    print(f"\n[node loss] {case}: logs (API, workers, RabbitMQ and Redis nodes) in {logs}")
    with ExitStack() as cleanup:
        stack = build_stack(case, tiny_multilabel_model, logs, cleanup)
        done = stack.done_messages()
        cleanup.callback(done.close)
        workers = Workers(stack, MODEL)
        cleanup.callback(workers.close)
        refused: Counter = Counter()
        job_ids = submit_accepted(stack.api.url, distinct_texts(JOBS_BEFORE, f"{case} before"), refused)
        members = stack.rabbit.queue_info(QUEUE)["members"]
        assert len(members) == 3, f"the quorum queue has {members}, not three replicas"
        kill = killer(stack, job_ids)

        def start_worker(first: int):  # its broker list from node `first`
            return workers.start(hooked_worker("slow-model"), CELERY_BROKER_URL=stack.rabbit.failover_url(first=first))
        with ThreadPoolExecutor(2) as pool:  # together: neither drains the backlog while the other loads its model
            list(pool.map(start_worker, (0, 1)))
        wait_until(lambda: unfinished(stack, job_ids) <= JOBS_BEFORE - DONE_BEFORE_KILL, timeout=120, interval=0.02,
                   what="the workers to finish their first jobs")
        row = {"fault": case, "in_flight_at_kill": unfinished(stack, job_ids)}
        killed_at, victims = kill()
        recovery = bring_back_the_redis_node(stack, victims, killed_at, row) if "redis" in victims else None
        job_ids += submit_accepted(stack.api.url, distinct_texts(JOBS_AFTER, f"{case} after"), refused)
        if recovery is not None:
            recovery.join(120)
        row.update(tally(stack, done, workers, job_ids, killed_at, died=False))
        row.update(recovery_times(done.first_seen, killed_at), killed=victims, refused=sum(refused.values()),
                   refused_codes=dict(refused))
        if "rabbitmq" in victims:
            info = stack.rabbit.queue_info(QUEUE)
            row["queue_leader_after"] = info["leader"]
            assert info["leader"] != victims["rabbitmq"], info
        ROWS.append(row)
        print(f"\n[node loss] {row}")
    assert row["lost"] == 0 and row["failed"] == 0 and row["duplicated"] == 0, row
    assert row["counted"] == row["stored"], row  # no worker died: each counted exactly what it stored
    assert row["most_deaths"] <= 1, row
