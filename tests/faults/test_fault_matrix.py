"""The fault matrix: each fault x each broker, a few hundred jobs in flight; every accepted job finishes once.

Faults: worker SIGKILL (restarted at once, as a supervisor does), worker SIGTERM (then a new worker), job
store refused 20 s (a proxy that refuses and cuts connections), job store frozen 20 s (SIGSTOP of its private
redis-server), job store stalls (SIGSTOP 1.5 s, three times 2 s apart: past the 1 s socket timeout, so a
script the stalled server runs when it thaws is sent again), job store read-only 20 s (REPLICAOF a port where
nothing listens, then REPLICAOF NO ONE: a failover demoting it and promoting it back, data kept), job store
out of memory 20 s (maxmemory just under its used memory, noeviction: writes refused with OOM, then maxmemory
0), broker refused 20 s, broker frozen 20 s (Redis: SIGSTOP of the private broker redis-server; RabbitMQ: the
proxy stops forwarding without closing, never the machine's RabbitMQ), broker connections closed (RabbitMQ:
rabbitmqctl close_all_connections in the case's vhost; Redis: CLIENT KILL TYPE normal on the broker's
redis-server; then clients submit 20 more jobs, so the API must have reconnected too), worker SIGSTOP 30 s
(past its 10 s lease) with a second worker started at once, then SIGCONT (Redis: the stalled worker's messages
come back to the second one after VISIBILITY_TIMEOUT, which takes the jobs over, and the first one's late
finishes are refused by fencing; RabbitMQ: they stay with the stalled consumer and finish after SIGCONT), API
restart (SIGTERM and a new API while clients keep submitting). Brokers: RabbitMQ (a private vhost behind a
proxy) and the Redis transport on a separate broker Redis (so a store fault and a broker fault are different
faults; with one Redis they are the same, tests/test_redis_outage.py).

For each case: no job lost (all accepted jobs finished), none failed, none stored twice (each job's
done message, published by the finish script only when it stores the job, is seen exactly once) and none
counted twice (the workers' moderation_jobs_completed_total, sampled until each worker exits, adds
up to at most the jobs stored, and exactly to them when no worker died: also with a worker SIGSTOPped,
which lives on). The jobs taken over from a worker (a death counted in their deliveries hash) are reported;
none may have more than one. The table is printed and written to var/fault-matrix/report.json;
docs/reliability.md records a run. Each case prints where its logs are (the API's, workers', servers').

Run by `make test-faults` (MODERATION_FAULT_TESTS=1): 10 to 15 minutes, so not part of `make test`.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from contextlib import ExitStack
from types import SimpleNamespace

import pytest
import redis
import requests

from scripts import rabbitmq
from scripts.launch import ROOT
from shared.jobs import JobStore
from tests.job_accounting import DoneMessages, Workers, submit_accepted, tally, unfinished, write_report
from tests.support import (
    RabbitVhost,
    RedisServer,
    TcpProxy,
    base_env,
    distinct_texts,
    free_port,
    start_api,
    wait_until,
)

pytestmark = pytest.mark.skipif(os.environ.get("MODERATION_FAULT_TESTS") != "1",
                                reason="the fault matrix (10-15 min): run by `make test-faults`")

MODEL = "tiny"
JOBS = 300
FAULT_SECONDS = 20
# store-stalls: each past the store client's 1 s socket timeout (a call in flight times out, and the server runs
# it when it thaws); the worker's client sends it again (shared/redis_client.py), the API's answers 503.
STALLS, STALL_SECONDS, STALL_GAP = 3, 1.5, 2.0
OOM_MARGIN = 128 * 1024  # store-oom: maxmemory this far under the store's used memory (some 2 MiB here)
SIGSTOP_SECONDS = 30  # worker-sigstop: past the worker's lease (shared/jobs.py LEASE_SECONDS = 10)
JOBS_AFTER_RECONNECT = 20  # broker-connections-closed: submitted once the connections are closed
FAULTS = ["worker-sigkill", "worker-sigterm", "store-refused", "store-frozen", "store-stalls", "store-readonly",
          "store-oom", "broker-refused", "broker-frozen", "broker-connections-closed", "worker-sigstop",
          "api-restart"]
REPORT = ROOT / "var" / "fault-matrix" / "report.json"
ROWS: list[dict] = []


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def stack(request, tiny_multilabel_model, tmp_path_factory):
    kind, logs = request.param, tmp_path_factory.mktemp(f"faults-{request.param}")
    with ExitStack() as cleanup:
        store = cleanup.enter_context(RedisServer(logs / "store").start())
        store_proxy = TcpProxy(store.port).start()
        cleanup.callback(store_proxy.stop)
        broker_server = vhost = None
        if kind == "redis":
            broker_server = cleanup.enter_context(RedisServer(logs / "broker").start())
            broker_proxy = TcpProxy(broker_server.port).start()
            broker_url = f"redis://127.0.0.1:{broker_proxy.port}/0"
        else:
            vhost = cleanup.enter_context(RabbitVhost(f"test-faults-{uuid.uuid4().hex[:12]}"))
            broker_proxy = TcpProxy(rabbitmq.PORT).start()
            broker_url = f"amqp://guest:guest@127.0.0.1:{broker_proxy.port}/{vhost.name}"
        cleanup.callback(broker_proxy.stop)
        # Small batches so a backlog lasts while the fault hits; VISIBILITY_TIMEOUT=10 as in tests/test_delivery.py.
        env = base_env(f"redis://127.0.0.1:{store_proxy.port}/0", MODELS=f"{MODEL}={tiny_multilabel_model}",
                       DEFAULT_MODEL=MODEL, CELERY_BROKER_URL=broker_url, BATCH_MAX_TEXTS="4",
                       BATCH_MAX_WAIT_MS="20", VISIBILITY_TIMEOUT="10")
        stack = SimpleNamespace(kind=kind, env=env, logs=logs, store=store, store_proxy=store_proxy,
                                broker_server=broker_server, broker_proxy=broker_proxy, vhost=vhost,
                                api=start_api(env, logs / "api-0.log"), records=JobStore(store.client(), 3600),
                                apis=1, workers=0)
        cleanup.callback(lambda: stack.api.stop())  # the API of the moment (api-restart replaces it)
        yield stack


@pytest.fixture(scope="session", autouse=True)
def report():
    yield
    write_report(REPORT, ROWS, {"fault": "{fault}", "broker": "{broker}", "jobs": "{jobs}", "lost": "{lost}",
                                "duplicated": "{duplicated}", "failed": "{failed}", "taken over": "{taken_over}",
                                "drain time": "{drain_seconds:.1f} s"})


@pytest.mark.parametrize("fault", FAULTS)
def test_every_accepted_job_finishes_once(stack, fault):
    print(f"\n[fault matrix] {fault} on {stack.kind}: logs (API, workers, store and broker servers) in {stack.logs}")
    done = DoneMessages(stack.store.url)
    workers = Workers(stack, MODEL)
    died = fault in ("worker-sigkill", "worker-sigterm")
    try:
        if fault == "api-restart":
            job_ids, fault_started = restart_the_api_while_submitting(stack, workers)
        else:
            job_ids = submit_accepted(stack.api.url, distinct_texts(JOBS, f"{fault} {stack.kind}"))
            workers.start()
            wait_until(lambda: unfinished(stack, job_ids) <= JOBS - 20, timeout=120, interval=0.02,
                       what="the worker to finish its first jobs")
            fault_started = time.monotonic()
            job_ids += apply(stack, workers, fault)
        counts = tally(stack, done, workers, job_ids, fault_started, died)
    finally:
        done.close()
        workers.close()
    row = {"fault": fault, "broker": stack.kind, **counts}
    ROWS.append(row)
    print(f"\n[fault matrix] {row}")
    assert row["lost"] == 0 and row["failed"] == 0 and row["duplicated"] == 0, row
    if not died:  # every worker lived to the end (a SIGSTOPped one too): its counter is exact
        assert row["counted"] == row["stored"], row
    # A job taken over counts one death (the worker that held it stopped renewing its lease), never more.
    assert row["most_deaths"] <= 1, row


def apply(stack, workers: Workers, fault: str) -> list[str]:
    """Apply `fault` (returns once it is over); returns the ids of jobs accepted during or after it, if any."""
    if fault == "worker-sigkill":
        workers.current.signal_group(signal.SIGKILL)
        workers.start()  # restarted at once, as `make run` / Compose would
    elif fault == "worker-sigterm":
        old = workers.current
        old.signal_group(signal.SIGTERM)
        wait_until(lambda: not old.alive(), timeout=60, what="the worker's warm shutdown")
        workers.start()
    elif fault == "worker-sigstop":
        stall_the_worker(workers)
    elif fault == "store-stalls":
        stall(stack.store)
    elif fault == "store-readonly":
        demote_the_store(stack.store)
    elif fault == "store-oom":
        fill_the_store(stack.store)
    elif fault == "broker-connections-closed":
        close_broker_connections(stack)
        # The API's broker connections were closed too: it must publish again (a 503 is retried, as clients do).
        return submit_accepted(stack.api.url, distinct_texts(JOBS_AFTER_RECONNECT, f"{fault} {stack.kind} after"))
    else:
        target = fault.split("-")[0]
        start, end = outage(stack, target, fault.endswith("frozen"))
        start()
        try:
            time.sleep(FAULT_SECONDS)  # the fault's length
        finally:
            end()
    return []


def stall_the_worker(workers: Workers) -> None:
    """SIGSTOP the worker past its lease while a second one starts at once; then SIGCONT: both live on."""
    old, stopped = workers.current, time.monotonic()
    old.signal_group(signal.SIGSTOP)
    try:
        workers.start()
        time.sleep(max(0.0, SIGSTOP_SECONDS - (time.monotonic() - stopped)))
    finally:
        old.signal_group(signal.SIGCONT)
    print(f"[fault matrix] worker {old.process.pid} stopped for {time.monotonic() - stopped:.1f}s")


def stall(server) -> None:
    """SIGSTOP the redis-server for STALL_SECONDS, STALLS times, STALL_GAP apart."""
    for i in range(STALLS):
        if i:
            time.sleep(STALL_GAP)
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            time.sleep(STALL_SECONDS)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)


def refused_write(client: redis.Redis) -> str | None:
    """The store's refusal of a write now (its error), or None if the write went through."""
    try:
        client.set("fault-matrix:probe", time.time(), ex=60)
    except redis.ResponseError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def demote_the_store(server) -> None:
    """A failover demoting the store and promoting it back: a replica of a master that never answers (it keeps
    its data and serves reads, refuses writes with READONLY) for FAULT_SECONDS, then REPLICAOF NO ONE."""
    client = server.client()
    client.replicaof("127.0.0.1", free_port())  # nothing listens there
    try:
        refusal = refused_write(client)
        assert refusal and "ReadOnly" in refusal, f"the demoted store took a write ({refusal})"
        time.sleep(FAULT_SECONDS)
    finally:
        client.replicaof("NO", "ONE")
    assert refused_write(client) is None, "the store still refuses writes after REPLICAOF NO ONE"


def fill_the_store(server) -> None:
    """The store at maxmemory (noeviction) for FAULT_SECONDS: writes refused with OOM, reads served. maxmemory is
    set just under its used memory (OOM_MARGIN: clients' buffers move it by some 20 KiB either way, and at
    exactly the used memory about half the writes went through); should a write go through all the same,
    it is set again just under the used memory then."""
    client = server.client()

    def full() -> None:
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - OOM_MARGIN)
    client.config_set("maxmemory-policy", "noeviction")
    full()
    probes = leaks = 0
    try:
        refusal = refused_write(client)
        assert refusal and "OutOfMemory" in refusal, f"the full store took a write ({refusal})"
        deadline = time.monotonic() + FAULT_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.5)
            probes += 1
            if refused_write(client) is None:
                leaks += 1
                full()
    finally:
        client.config_set("maxmemory", 0)
    print(f"[fault matrix] store-oom: {leaks} of {probes} probe writes went through (maxmemory set again each time)")


def close_broker_connections(stack) -> None:
    """Every broker connection of the case's clients (workers, API) closed by the broker itself, mid-batch."""
    if stack.vhost is None:  # the Redis transport: its private broker redis-server, not through the proxy
        killed = stack.broker_server.client().client_kill_filter(_type="normal")
    else:  # only this case's vhost, never the machine's other connections
        killed = RabbitVhost._ctl("close_all_connections", "-p", stack.vhost.name, "fault matrix").strip()
    print(f"[fault matrix] broker connections closed: {killed}")


def outage(stack, target: str, frozen: bool):
    """(begin, end) of a refused or frozen store or broker."""
    if target == "store":
        server, proxy = stack.store, stack.store_proxy
    else:
        server, proxy = stack.broker_server, stack.broker_proxy
    if not frozen:
        return proxy.stop, proxy.start
    if server is None:  # RabbitMQ: freeze the proxy, never the machine's shared broker
        return proxy.freeze, proxy.thaw
    return (lambda: os.kill(server.process.pid, signal.SIGSTOP)), (lambda: os.kill(server.process.pid, signal.SIGCONT))


def restart_the_api_while_submitting(stack, workers: Workers) -> tuple[list[str], float]:
    """Clients submit JOBS jobs while the API is stopped (SIGTERM) and a new one started; only accepted
    (202) submissions count. Returns the accepted ids and when the restart began."""
    workers.start()
    texts = iter(distinct_texts(10 * JOBS, f"api-restart {stack.kind}"))
    accepted: list[str] = []
    lock = threading.Lock()

    def client():
        while True:
            with lock:
                if len(accepted) >= JOBS:
                    return
                text = next(texts)
            try:
                response = requests.post(stack.api.url + "/generate", json={"input_text": text}, timeout=30)
            except requests.RequestException:
                time.sleep(0.05)
                continue
            if response.status_code == 202:
                with lock:
                    accepted.append(response.json()["job_id"])

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(accepted) >= JOBS // 3, timeout=60, interval=0.02, what="the first submissions")
    restarted = time.monotonic()
    stack.api.stop()
    stack.apis += 1
    stack.api = start_api(stack.env, stack.logs / f"api-{stack.apis}.log")
    for thread in threads:
        thread.join(120)
    return accepted, restarted
