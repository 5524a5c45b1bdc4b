"""Counting what became of every accepted job while a fault hits: lost, failed, stored or counted twice.

Shared by the fault matrix (tests/faults/) and the node-loss tests (tests/cluster/). A case provides a
`stack` with `env` (the service's environment), `logs` (a folder), `workers` (a counter of workers started),
`records` (a JobStore) and `store` (what `.client()` gives the store's Redis client).

- lost: an accepted job not finished when the case ends;
- failed: a job whose status is `failed`;
- duplicated: a job whose done message (the finish script publishes one only when it stores the job) was
  seen more than once, plus any excess of the workers' moderation_jobs_completed_total over the jobs stored
  (the counter is exact when no worker died, a lower bound for a killed one);
- taken over: a job with a death counted in its deliveries hash (its worker stopped renewing its lease).
"""

from __future__ import annotations

import json
import select
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import requests

from shared import metrics as names
from shared.jobs import DELIVERIES_PREFIX, DONE_SUFFIX, KEY_PREFIX
from tests.scrape import metric, worker_samples
from tests.support import free_port, start_worker, wait_until


class Workers:
    """The case's worker processes, each sampled for moderation_jobs_completed_total until it exits."""

    def __init__(self, stack, model: str):
        self.stack, self.model, self.procs, self.counted, self.closed = stack, model, [], {}, False
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def start(self, argv: list[str] | None = None, **env: str):
        """One more worker (`argv`: a tests/hooked_worker.py command; `env`: settings of its own, e.g. another
        broker URL); returns once it consumes. Safe to call from several threads at once."""
        with self._lock:
            self.stack.workers += 1
            number = self.stack.workers
        port = free_port()
        proc = start_worker({**self.stack.env, **env, "WORKER_METRICS_PORT": str(port)},
                            self.stack.logs / f"worker-{number}.log", models=[self.model], argv=argv)
        proc.metrics_url = f"http://127.0.0.1:{port}/metrics"
        with self._lock:
            self.procs.append(proc)
        return proc

    @property
    def current(self):
        return self.procs[-1]

    def _read(self, proc) -> None:
        try:
            samples = worker_samples(proc.metrics_url)
        except requests.RequestException:
            return
        self.counted[proc.process.pid] = sum(metric(samples, names.JOBS_COMPLETED_TOTAL, self.model, status=s)
                                             for s in ("succeeded", "failed"))

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for proc in list(self.procs):
                if proc.alive():
                    self._read(proc)

    def close(self, expected: int = 0) -> int:
        """Stop sampling once the live ones' counts add up to `expected` (a counter moves just after the results
        it counts are stored), or after 10 s; stop the workers; the jobs they counted."""
        if self.closed:
            return sum(self.counted.values())
        self.closed = True
        self._stop.set()
        self._sampler.join(5)

        def counted_all() -> bool:
            for proc in self.procs:
                if proc.alive():
                    self._read(proc)
            return sum(self.counted.values()) >= expected
        try:
            wait_until(counted_all, timeout=10, interval=0.2, what="the workers' counters")
        except AssertionError:
            pass  # the caller compares the counts
        for proc in self.procs:
            proc.stop()
        return sum(self.counted.values())


class DoneMessages:
    """Every job's done message (the finish script publishes one only when it stores the job), counted, with
    when each job's first one arrived (time.monotonic()); read straight from a store server (not through
    anything a fault cuts)."""

    def __init__(self, url: str):
        self.counts: Counter = Counter()
        self.first_seen: dict[str, float] = {}
        # The client kept: one garbage-collected disconnects its pool, the pubsub's connection included.
        self._client = redis.Redis.from_url(url, decode_responses=True)
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe(**{f"{KEY_PREFIX}*{DONE_SUFFIX}": self._count})
        # redis-py's own listener thread: stop() ends its loop, and the thread closes the connection itself.
        self._thread = pubsub.run_in_thread(sleep_time=0.2, daemon=True,
                                            exception_handler=lambda exc, _pubsub, thread: thread.stop())

    def _count(self, message: dict) -> None:
        job_id = message["channel"][len(KEY_PREFIX):-len(DONE_SUFFIX)]
        self.counts[job_id] += 1
        self.first_seen.setdefault(job_id, time.monotonic())

    def close(self) -> None:
        self._thread.stop()
        self._thread.join(5)


class ShardedDoneMessages:
    """DoneMessages on a Redis Cluster store, whose done messages are sharded (SPUBLISH on one channel per bucket,
    "<job id> <payload>"; shared/keyspace.py): every node, master or replica, is subscribed to the channels of
    the slots its shard serves, so a master's loss leaves its promoted replica's subscription counting. Counted
    per node; a job's count is the most any one node saw (a master and its replicas each see every message of
    their shard once), its first sight the earliest on any node. One thread reads every node's subscription (as
    shared/completions.py does); a node that fails (killed) is dropped."""

    def __init__(self, ports: list[int], keys):
        from redis.crc import key_slot
        self.per_node: dict[int, Counter] = {}
        self.first_seen: dict[str, float] = {}
        self._pubsubs: dict[int, redis.client.PubSub] = {}
        # Kept: a client that is garbage-collected disconnects its pool, the pubsub's connection included.
        self._clients = [redis.Redis(host="127.0.0.1", port=port, decode_responses=True) for port in ports]
        for port, client in zip(ports, self._clients):
            slots = _shard_slots(client)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            for channel in keys.done_channels():
                if key_slot(channel.encode()) in slots:
                    pubsub.ssubscribe(channel)  # one command each: a command's channels must share a slot
            self._pubsubs[port], self.per_node[port] = pubsub, Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            for port, pubsub in list(self._pubsubs.items()):
                try:
                    while (message := pubsub.get_message(timeout=0)) is not None:
                        if message["type"] == "smessage":
                            self._count(port, message["data"].split(" ", 1)[0])
                except (redis.RedisError, OSError):
                    del self._pubsubs[port]  # the node is gone; its replica's subscription goes on counting
            select.select([p.connection._sock for p in self._pubsubs.values() if p.connection._sock], [], [], 0.2)

    def _count(self, port: int, job_id: str) -> None:
        self.per_node[port][job_id] += 1
        now = time.monotonic()
        if now < self.first_seen.get(job_id, now + 1):
            self.first_seen[job_id] = now

    @property
    def counts(self) -> Counter:
        merged: Counter = Counter()
        for counts in list(self.per_node.values()):
            for job_id, n in list(counts.items()):
                merged[job_id] = max(merged[job_id], n)
        return merged

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for pubsub in self._pubsubs.values():
            pubsub.close()


def _shard_slots(client: redis.Redis) -> set[int]:
    """The hash slots of the shard this cluster node belongs to (its own as a master, its master's as a replica)."""
    nodes = list(client.execute_command("CLUSTER NODES").values())  # redis-py parses it: {address: node}
    me = next(node for node in nodes if "myself" in node["flags"])
    master_id = me["node_id"] if "master" in me["flags"] else me["master_id"]
    master = next(node for node in nodes if node["node_id"] == master_id)
    return {slot for first, *last in master["slots"] for slot in range(int(first), int((last or [first])[0]) + 1)}


def submit_accepted(api_url: str, texts: list[str], refused: Counter | None = None) -> list[str]:
    """Submit each text until accepted, as a client honouring 503 + Retry-After does (right after a broker
    outage the API's first publish may be refused); the accepted job ids. `refused` counts the 503s by code."""
    def post(text):
        for _ in range(30):
            response = requests.post(api_url + "/generate", json={"input_text": text}, timeout=30)
            if response.status_code == 202:
                return response.json()["job_id"]
            assert response.status_code == 503, response.text
            if refused is not None:
                refused[response.json()["error"]["code"]] += 1
            time.sleep(float(response.headers.get("Retry-After", 1)))
        raise AssertionError(f"not accepted after 30 tries: {response.text}")
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(post, texts))


def unfinished(stack, job_ids: list[str]) -> int:
    """How many of the jobs are not finished; all of them while the store does not answer (a Redis Cluster whose
    master was just lost, before its replica is promoted)."""
    try:
        states = stack.records.states(job_ids)
    except redis.RedisError:
        return len(job_ids)
    return sum(status not in ("succeeded", "failed", "canceled") for status, _ in states)


def deaths(stack, job_ids: list[str]) -> list[int]:
    """Each job's counted deaths (a worker's expired lease taken over after it handed the job to the model)."""
    pipe = stack.store.client().pipeline(transaction=False)
    keys = getattr(stack.records, "keys", None)  # the store's key layout (a cluster's keys carry hash tags)
    for job_id in job_ids:
        pipe.hget(keys.deliveries_key(job_id) if keys else DELIVERIES_PREFIX + job_id, "deaths")
    return [int(value or 0) for value in pipe.execute()]


def tally(stack, done: DoneMessages, workers: Workers, job_ids: list[str], since: float, died: bool,
          timeout: float = 240) -> dict:
    """Wait (at most `timeout` s) for every accepted job to finish, stop the workers, and count: jobs, lost,
    failed, duplicated, counted (by the workers), stored (done messages), unseen_by_client (stored, never seen
    accepted), taken_over, most_deaths, drain_seconds (from `since`, a time.monotonic()), workers. `died`: a
    worker was killed, so its counter is a lower bound and the workers' total is not awaited."""
    try:
        wait_until(lambda: unfinished(stack, job_ids) == 0, timeout=timeout, interval=0.25,
                   what="every accepted job to finish")
    except AssertionError:
        pass  # counted as lost below
    drain = time.monotonic() - since
    wait_until(lambda: sum(done.counts[j] for j in job_ids) >= len(job_ids) - unfinished(stack, job_ids),
               timeout=10, what="the done messages")
    statuses = [status for status, _ in stack.records.states(job_ids)]
    # Every job stored during the case, accepted or not (a client whose connection an API restart cut may
    # never see the 202 of a job the API did accept): each must be stored once and counted once.
    stored = len(done.counts)
    job_deaths = deaths(stack, job_ids)
    counted = workers.close(expected=0 if died else stored)
    return {"jobs": len(job_ids), "lost": sum(s not in ("succeeded", "failed") for s in statuses),
            "failed": statuses.count("failed"),
            "duplicated": sum(n > 1 for n in done.counts.values()) + max(0, int(counted) - stored),
            "counted": int(counted), "stored": stored, "unseen_by_client": len(set(done.counts) - set(job_ids)),
            "taken_over": sum(n > 0 for n in job_deaths), "most_deaths": max(job_deaths, default=0),
            "drain_seconds": round(drain, 1), "workers": len(workers.procs)}


def write_report(path: Path, rows: list[dict], columns: dict[str, str]) -> None:
    """The case rows as JSON at `path`, and printed as a markdown table: heading -> format of one row's cell."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
    print("\n\n| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for row in rows:
        print("| " + " | ".join(cell.format(**row) for cell in columns.values()) + " |")
