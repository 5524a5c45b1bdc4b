"""Job records in Redis: the one place a job's state and results live.

Lifecycle: the API creates a record ("queued") *before* it enqueues the Celery message, so an id
the API answered for is never unknown; the worker moves it to "running" and then to "succeeded"
or "failed", and publishes the finished record (a JSON object of its hash fields) on the job's
channel so waiting requests answer at once (shared/completions.py). A queued job
may instead be "canceled" (DELETE /jobs/<id>); a worker that later receives its message skips it.
Records expire RESULT_TTL seconds after creation (refreshed when they finish).

The store runs on a plain Redis or, with REDIS_CLUSTER, on a Redis Cluster: key names come from the client's
KeySpace (shared/keyspace.py: one untagged bucket on a plain Redis, the names they always had; 64 hash-tagged
buckets on a cluster), and a step over many jobs is one script call per bucket. Readers of a queue's pending
index use pending_oldest / pending_age / pending_count, which read every bucket. REDIS_WAIT_REPLICAS: see
JobStore.create and JobStore.finish_many.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import redis

from shared import job_scripts as scripts
from shared.job_scripts import CLAIM_FIELDS
from shared.keyspace import (  # noqa: F401  (re-exported: the names every reader of the store imports from here)
    DELIVERIES_PREFIX,
    DONE_SUFFIX,
    KEY_PREFIX,
    PENDING_PREFIX,
    PROBE_PREFIX,
    KeySpace,
    keyspace_for,
)
from shared.queues import queue_for_model
from shared.redis_client import call_script, is_cluster, run_pipelined

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
FINISHED = (SUCCEEDED, FAILED, CANCELED)

# One result per input text, in input order. category_scores are floats in [0, 1].
#   {"flagged": bool, "categories": {label: bool}, "category_scores": {label: float}}
ModerationResult = dict

# Verdicts of the claim script.
RUN, HELD, SKIP = "run", "held", "skip"
# Per job (DELIVERIES_PREFIX, shared/keyspace.py): who holds it (owner, token, lease_until: shared/job_scripts.py)
# and how many workers died with it (worker/deliveries.py reads and writes it too).
# A job's lease lasts this long past its claim or last renewal (worker/leases.py renews it every third).
LEASE_SECONDS = 10
# A worker's write probe (PROBE_PREFIX): the store gate resumes only once a write goes through (worker/tasks.py).


class Claim(NamedTuple):
    status: str | None  # as it was before the claim (None: unknown or expired)
    enqueued_ts: str | None
    verdict: str  # RUN, HELD or SKIP
    deaths: int  # workers that died after handing this job to the model
    # For a job to run (RUN), read in the same round trip:
    texts: list[str] | None = None
    owner: str = ""
    text_tokens: list[int] | None = None  # counted by the API (api/tokens.py); None from an older API
    cursor: str = ""  # where an earlier slice stopped (worker/slices.py); "" from the start
    partial: list | None = None  # the earlier slices' scores
    requeued_ts: float | None = None  # when it went back to the queue after a slice
    slices: int = 0  # slices already run
    token: str = ""  # this claim's fencing token: only it finishes or puts back the job

    @classmethod
    def from_reply(cls, flat: list, token: str) -> Claim:
        texts, owner, tokens, cursor, partial, requeued, slices, compressed = flat[4:CLAIM_FIELDS]
        return cls(flat[0] or None, flat[1] or None, flat[2], int(flat[3]), texts_from(texts, compressed),
                   owner or "", json.loads(tokens) if tokens else None, cursor or "",
                   json.loads(partial) if partial else None, float(requeued) if requeued else None,
                   int(slices or 0), token)


def new_job_id() -> str:
    return str(uuid.uuid4())


def is_job_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower() and uuid.UUID(value).version == 4
    except (ValueError, AttributeError):
        return False


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# The plain-Redis layout's names (shared/keyspace.py PLAIN). Code that may run on a cluster asks the store's
# `keys` (or keyspace_for(client)) instead.
def job_key(job_id: str) -> str:
    return KEY_PREFIX + job_id


def done_channel(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}{DONE_SUFFIX}"


def pending_key(queue: str) -> str:
    """Sorted set of a queue's unfinished jobs, scored by when their message was (last) published."""
    return PENDING_PREFIX + queue


def pending_oldest(client: redis.Redis, queue: str) -> float | None:
    """When the oldest unfinished job of `queue` was (last) published (epoch seconds), from the pending index
    (every bucket of it on a cluster); None when it holds none. One pipelined round trip per server."""
    def build(pipe):
        for key in keyspace_for(client).pending_keys(queue):
            pipe.zrange(key, 0, 0, withscores=True)
    scores = [head[0][1] for head in run_pipelined(client, build) if head]
    return min(scores) if scores else None


def pending_age(client: redis.Redis, queue: str) -> float:
    """Seconds since the oldest unfinished job of `queue` was published; 0 when none (the queue-age gauge)."""
    oldest = pending_oldest(client, queue)
    return 0.0 if oldest is None else max(0.0, time.time() - oldest)


def pending_count(client: redis.Redis, queue: str) -> int:
    """Unfinished jobs of `queue` in its pending index (every bucket on a cluster)."""
    def build(pipe):
        for key in keyspace_for(client).pending_keys(queue):
            pipe.zcard(key)
    return sum(run_pipelined(client, build))


class NotReplicated(redis.exceptions.RedisError):
    """REDIS_WAIT_REPLICAS replicas did not acknowledge a new job's record within REDIS_WAIT_TIMEOUT_MS: the
    record was deleted and nothing published, so the API answers 503 (api/__init__.py) and the client retries."""


@dataclass
class JobRecord:
    job_id: str
    model: str
    queue: str = ""
    # Kept until the job finishes: the one copy of the texts (the message carries only the job id).
    texts: list[str] | None = None
    text_tokens: list[int] | None = None  # tokens per text, counted by the API (api/tokens.py)
    status: str = QUEUED
    owner: str = ""
    callback_url: str = ""
    created_at: str = field(default_factory=utc_now)
    enqueued_ts: float = field(default_factory=time.time)
    started_at: str | None = None
    finished_at: str | None = None
    results: list[ModerationResult] | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def public(self) -> dict:
        """The body of GET /jobs/<id>."""
        return {
            "job_id": self.job_id,
            "status": self.status,
            "model": self.model,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "results": self.results,
            "error": self.error,
        }

    @classmethod
    def from_hash(cls, job_id: str, data: dict) -> JobRecord:
        return cls(
            job_id=job_id,
            model=data.get("model", ""),
            queue=data.get("queue", ""),
            texts=texts_from(data.get("texts"), data.get("texts_z")),
            text_tokens=json.loads(data["text_tokens"]) if data.get("text_tokens") else None,
            status=data.get("status", QUEUED),
            owner=data.get("owner", ""),
            callback_url=data.get("callback_url", ""),
            created_at=data.get("created_at", ""),
            enqueued_ts=float(data.get("enqueued_ts") or 0),
            started_at=data.get("started_at") or None,
            finished_at=data.get("finished_at") or None,
            results=json.loads(data["results"]) if data.get("results") else None,
            error=data.get("error") or None,
        )


# Texts past this many bytes of JSON are stored zlib-compressed (base64, as the store's client reads
# strings): a job then costs Redis less than its text bytes even after the allocator rounds its value up
# to a size class (up to 25% over for a value just past one); below it, compressing saves nothing.
COMPRESS_ABOVE = 1024


def texts_fields(texts: list[str]) -> dict[str, str]:
    """The record fields holding `texts`: {"texts": JSON} or, for long ones, {"texts_z": base64(zlib(JSON))}.
    JSON as UTF-8, not \\u escapes, unless a text is not valid Unicode (a lone surrogate; the API refuses
    those), which keeps its escapes."""
    encoded = json.dumps(texts, ensure_ascii=False)
    try:
        raw = encoded.encode("utf-8")
    except UnicodeEncodeError:
        return {"texts": json.dumps(texts)}
    if len(raw) <= COMPRESS_ABOVE:
        return {"texts": encoded}
    return {"texts_z": base64.b64encode(zlib.compress(raw, 1)).decode("ascii")}


def texts_from(plain: str | None, compressed: str | None) -> list[str] | None:
    """The texts back from the record's `texts` or `texts_z` field (None if neither)."""
    if compressed:
        return json.loads(zlib.decompress(base64.b64decode(compressed)))
    return json.loads(plain) if plain else None


class JobStore:
    """The job records and every step of a job's life (shared/job_scripts.py), on a plain Redis or a Redis Cluster
    (the client decides: its keys follow keyspace_for(client)).

    `queues`: the queues whose pending index a finish or cancel may have to clear (every configured model's; the
    scripts declare the job's bucket of each, so a job of another queue has its entry removed by a second
    command). `wait_replicas`: REDIS_WAIT_REPLICAS (see create and finish_many)."""

    def __init__(self, client: redis.Redis, ttl_seconds: int, queues=(), wait_replicas: int = 0,
                 wait_timeout_ms: int = 100):
        self.redis = client
        self.ttl = ttl_seconds
        self.keys: KeySpace = keyspace_for(client)
        self.queues = tuple(dict.fromkeys(queues))
        self.wait_replicas, self.wait_timeout_ms = wait_replicas, wait_timeout_ms
        self.unreplicated_finishes = 0  # finishes whose WAIT counted fewer than wait_replicas (logged)
        self._finish = client.register_script(scripts.FINISH)
        self._cancel = client.register_script(scripts.CANCEL)
        self._claim = client.register_script(scripts.CLAIM)
        self._create = client.register_script(scripts.CREATE)
        self._requeue = client.register_script(scripts.REQUEUE)
        self._renew = client.register_script(scripts.RENEW)
        self._release = client.register_script(scripts.RELEASE)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings) -> JobStore:
        return cls(client, settings.result_ttl, [queue_for_model(model) for model in settings.models],
                   settings.redis_wait_replicas, settings.redis_wait_timeout_ms)

    @staticmethod
    def _fields(record: JobRecord) -> dict[str, str]:
        return {
            "model": record.model,
            "queue": record.queue,
            **texts_fields(record.texts or []),
            **({"text_tokens": json.dumps(record.text_tokens)} if record.text_tokens is not None else {}),
            "status": record.status,
            "owner": record.owner,
            **({"callback_url": record.callback_url} if record.callback_url else {}),
            "created_at": record.created_at,
            "enqueued_ts": repr(record.enqueued_ts),
        }

    # WAIT (REDIS_WAIT_REPLICAS): Redis replicates asynchronously, and WAIT counts the replicas that acknowledged
    # every write made *on its own connection* so far. So the writes and their WAIT go down one pipeline, which
    # sends each server's commands on one connection: one round trip, and one WAIT per master written to.
    def _write_and_wait(self, build, keys: list[str]) -> tuple[list, int]:
        """Run `build(pipe)`'s commands, then WAIT on each server that holds one of `keys`; returns their replies
        and the fewest replicas any of those servers counted."""
        if is_cluster(self.redis):
            nodes = list({node.name: node for node in map(self.redis.get_node_from_key, keys)}.values())
        else:
            nodes = [None]

        def commands(pipe):
            used = build(pipe)
            for node in nodes:
                options = {"target_nodes": node} if node is not None else {}
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms, **options)
            return used
        replies = run_pipelined(self.redis, commands)
        return replies[:-len(nodes)], min(int(acked) for acked in replies[-len(nodes):])

    def _written(self, record: JobRecord, keys: list[str], args: list, retractable: bool) -> int:
        """The create script's reply; with wait_replicas, only once that many replicas hold the record: otherwise
        it is deleted and NotReplicated raised (`retractable`: no broker message was pushed with it; else the
        shortfall is only logged, the message being out already)."""
        if not self.wait_replicas:
            return int(self._create(keys=keys, args=args))
        def build(pipe):
            call_script(pipe, self._create, keys, args)
            return [self._create]
        (depth,), acked = self._write_and_wait(build, [keys[0]])
        depth = int(depth)
        if acked < self.wait_replicas and depth < int(args[0]):
            if retractable:
                self.delete(record)
                raise NotReplicated(f"the job's record reached {acked} of REDIS_WAIT_REPLICAS={self.wait_replicas} "
                                    f"replica(s) within {self.wait_timeout_ms} ms; it was not accepted")
            log.warning("job %s: its record reached %d of %d replica(s) within %d ms (accepted: its message was "
                        "pushed with it)", record.job_id, acked, self.wait_replicas, self.wait_timeout_ms)
        return depth

    def create_unless_full(self, record: JobRecord, depth_keys: list[str], max_depth: int,
                           message: tuple[str, str] | None = None) -> int:
        """Write a new record only if the lists `depth_keys` hold fewer than `max_depth` messages in all,
        and then push `message` ((list, payload): its broker message) if given; returns that depth
        (>= max_depth: nothing was written). One round trip, atomic. (Plain Redis only: a broker in the store.)"""
        fields = [item for pair in self._fields(record).items() for item in pair]
        target, payload = message or (depth_keys[0], "")
        keys = [self.keys.job_key(record.job_id), self.keys.pending_key_of(record.queue, record.job_id), target,
                *depth_keys]
        return self._written(record, keys, [max_depth, self.ttl, repr(record.enqueued_ts), record.job_id, payload,
                                            *fields], retractable=message is None)

    def create(self, record: JobRecord) -> None:
        """Write a new record and its pending entry (nothing if it exists: a retried call). With wait_replicas,
        raises NotReplicated (the record deleted again) unless that many replicas acknowledged it."""
        key = self.keys.job_key(record.job_id)
        fields = [item for pair in self._fields(record).items() for item in pair]
        self._written(record, [key, self.keys.pending_key_of(record.queue, record.job_id), key],
                      [1, self.ttl, repr(record.enqueued_ts), record.job_id, "", *fields], retractable=True)

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.keys.job_key(job_id)))

    def delete(self, record: JobRecord) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(self.keys.job_key(record.job_id))
        pipe.zrem(self.keys.pending_key_of(record.queue, record.job_id), record.job_id)
        pipe.execute()

    def pending_before(self, queue: str, cutoff: float, limit: int = 500) -> list[str]:
        """Unfinished jobs of `queue` whose message was published before `cutoff` (epoch seconds), oldest first,
        at most `limit` (across the buckets of its pending index)."""
        def build(pipe):
            for key in self.keys.pending_keys(queue):
                pipe.zrangebyscore(key, 0, cutoff, start=0, num=limit, withscores=True)
        rows = [row for bucket in run_pipelined(self.redis, build) for row in bucket]
        return [job_id for job_id, _ in sorted(rows, key=lambda row: row[1])[:limit]]

    def mark_republished(self, queue: str, job_id: str, when: float) -> None:
        self.redis.zadd(self.keys.pending_key_of(queue, job_id), {job_id: when})

    def forget_pending(self, queue: str, job_id: str) -> None:
        self.redis.zrem(self.keys.pending_key_of(queue, job_id), job_id)

    def get(self, job_id: str) -> JobRecord | None:
        data = self.redis.hgetall(self.keys.job_key(job_id))
        return JobRecord.from_hash(job_id, data) if data else None

    def states(self, job_ids: list[str]) -> list[tuple[str | None, str | None]]:
        """(status, enqueued_ts) per job in one round trip; (None, None) for unknown or expired ids."""
        pipe = self.redis.pipeline()
        for job_id in job_ids:
            pipe.hmget(self.keys.job_key(job_id), ["status", "enqueued_ts"])
        return [tuple(row) for row in pipe.execute()]

    def _per_bucket(self, script, job_ids: list[str], keys_of, args_of) -> list[list]:
        """Run `script` once per bucket of `job_ids` (once in all on a plain Redis: one bucket), the calls
        pipelined; returns each job's part of its call's reply, in the order of `job_ids`. `keys_of(job_id)`:
        that job's keys; `args_of(job_ids)`: a call's arguments for those jobs; each job's reply is len(reply) /
        len(jobs) items long."""
        groups: dict[int, list[int]] = {}
        for i, job_id in enumerate(job_ids):
            groups.setdefault(self.keys.bucket(job_id), []).append(i)
        calls = [([key for i in indexes for key in keys_of(job_ids[i])], args_of([job_ids[i] for i in indexes]))
                 for indexes in groups.values()]
        if len(calls) == 1:
            replies = [script(keys=calls[0][0], args=calls[0][1])]
        else:
            def build(pipe):
                for keys, args in calls:
                    call_script(pipe, script, keys, args)
                return [script]
            replies = run_pipelined(self.redis, build)
        out: list = [None] * len(job_ids)
        for indexes, reply in zip(groups.values(), replies):
            width = len(reply) // len(indexes)
            for n, i in enumerate(indexes):
                out[i] = reply[n * width:(n + 1) * width]
        return out

    def claim(self, job_ids: list[str], owner: str = "") -> list[Claim]:
        """Mark the jobs `owner` may run "running" under a lease of this call's token and return each job's
        Claim (shared/job_scripts.py CLAIM), in one round trip for the whole batch (one script call per bucket
        of jobs on a cluster, pipelined)."""
        if not job_ids:
            return []
        token = secrets.token_hex(8)
        replies = self._per_bucket(self._claim, job_ids,
                                   lambda job_id: (self.keys.job_key(job_id), self.keys.deliveries_key(job_id)),
                                   lambda _: [utc_now(), owner, token, LEASE_SECONDS, self.ttl])
        return [Claim.from_reply(reply, token) for reply in replies]

    def renew(self, owner: str, leases: dict[str, str]) -> list[str]:
        """Extend the leases {job id: token} `owner` holds by LEASE_SECONDS; returns the jobs it no longer holds."""
        if not leases:
            return []
        job_ids = list(leases)
        held = self._per_bucket(self._renew, job_ids, lambda job_id: (self.keys.deliveries_key(job_id),),
                                lambda ids: [owner, LEASE_SECONDS, *(leases[job_id] for job_id in ids)])
        return [job_id for job_id, (renewed,) in zip(job_ids, held) if not renewed]

    def release(self, owner: str, leases: dict[str, str]) -> None:
        """Give up the leases {job id: token} at once (their batch failed and goes back to the broker)."""
        if not leases:
            return
        groups = self.keys.by_bucket(leases)
        calls = [([self.keys.deliveries_key(job_id) for job_id in ids], [owner, *(leases[job_id] for job_id in ids)])
                 for ids in groups.values()]

        def build(pipe):
            for keys, args in calls:
                call_script(pipe, self._release, keys, args)
            return [self._release]
        run_pipelined(self.redis, build)

    def requeue(self, job_id: str, queue: str, owner: str, token: str, cursor: str, partial: list,
                progressed: bool) -> bool:
        """Put a job `owner` runs under `token` back to queued after a slice (shared/job_scripts.py REQUEUE);
        the caller then publishes its next message. False: the job is no longer this claim's (publish nothing)."""
        now = time.time()
        keys = [self.keys.job_key(job_id), self.keys.deliveries_key(job_id), self.keys.pending_key_of(queue, job_id)]
        return bool(self._requeue(keys=keys, args=[owner, cursor, json.dumps(partial), repr(now), job_id,
                                                   int(progressed), token]))

    def _pending_keys_of(self, job_id: str) -> list[str]:
        """The job's bucket of the pending index of every queue this store knows (a finish or cancel clears one)."""
        return [self.keys.pending_key_of(queue, job_id) for queue in self.queues]

    def _forget_missed(self, missed: list[tuple[str, str]]) -> None:
        """Remove the pending entries (job id, queue) a finish or cancel could not: a queue this store was not
        told of. Harmless if it never runs (a sweep forgets entries of finished jobs)."""
        if missed:
            def build(pipe):
                for job_id, queue in missed:
                    pipe.zrem(self.keys.pending_key_of(queue, job_id), job_id)
            run_pipelined(self.redis, build)

    def finish_many(self, outcomes: list[tuple[str, list[ModerationResult] | None, str | None]],
                    finisher: str = "", tokens: dict[str, str] | None = None) -> list[bool]:
        """Store (job_id, results, error) outcomes in one round trip; error set means failed; `finisher`
        (the worker) is kept as the record's finished_by. `tokens`: each job's claim token; a job with one
        is finished only while that claim holds it (fencing), a job without (a malformed message, the
        parking reconciler) whatever holds it. Returns, per outcome, whether this claim finished the job
        (True also when a retried call finds its own first run did; False: already finished by another,
        taken over, or expired).
        With wait_replicas, the reply comes once that many replicas hold the results (WAIT, in the same round
        trip), so the caller acknowledges the jobs' messages after that; a shortfall past the timeout is logged
        and counted (unreplicated_finishes), not raised: the results are stored, and the worker goes on."""
        if not outcomes:
            return []
        now = utc_now()
        tokens = tokens or {}
        keys = self.keys
        calls = []
        for job_id, results, error in outcomes:
            status = FAILED if error else SUCCEEDED
            payload = json.dumps(results) if results is not None else ""
            calls.append(([keys.job_key(job_id), keys.done_channel(job_id), keys.outbox_key_of(job_id),
                           keys.deliveries_key(job_id), *self._pending_keys_of(job_id)],
                          [status, now, payload, error or "", self.ttl, keys.publish_command, job_id, time.time(),
                           finisher, tokens.get(job_id, ""), keys.done_message(job_id, ""), *self.queues]))

        def build(pipe):
            for call_keys, args in calls:
                call_script(pipe, self._finish, call_keys, args)
            return [self._finish]
        if self.wait_replicas:
            replies, acked = self._write_and_wait(build, [call_keys[0] for call_keys, _ in calls])
        else:
            replies, acked = run_pipelined(self.redis, build), 0
        stored = [int(code) for code, _ in replies]
        self._forget_missed([(job_id, queue) for (job_id, _, _), (_, queue) in zip(outcomes, replies) if queue])
        if self.wait_replicas and acked < self.wait_replicas and any(code == 1 for code in stored):
            self.unreplicated_finishes += sum(code == 1 for code in stored)
            log.warning("stored %d result(s) that reached %d of REDIS_WAIT_REPLICAS=%d replica(s) within %d ms",
                        sum(code == 1 for code in stored), acked, self.wait_replicas, self.wait_timeout_ms)
        return [bool(code) for code in stored]

    def takes_writes(self, owner: str) -> bool:
        """A real write, as a worker's batch makes: True, or the store's refusal raised (worker/tasks.py). On a
        cluster, one per bucket, so every master holding jobs must take it."""
        now = utc_now()

        def build(pipe):
            for key in self.keys.probe_keys(owner):
                pipe.set(key, now, ex=60)
        return all(run_pipelined(self.redis, build))

    def finishers(self, job_ids: list[str]) -> list[str | None]:
        """Each job's finished_by (see finish_many), None if unfinished, expired or finished by no worker."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.keys.job_key(job_id), "finished_by")
        return [by or None for by in pipe.execute()]

    def cancel(self, job_id: str) -> tuple[bool, str | None]:
        """Cancel the job if it is still queued: (True, "canceled"), else (False, its status or None if unknown)."""
        found, missed = self._cancel(
            keys=[self.keys.job_key(job_id), self.keys.done_channel(job_id), *self._pending_keys_of(job_id)],
            args=[utc_now(), self.keys.publish_command, job_id, self.keys.done_message(job_id, ""), *self.queues])
        self._forget_missed([(job_id, missed)] if missed else [])
        return (True, CANCELED) if found == 1 else (False, found)

    def wait_until_finished(self, job_id: str, timeout: float, listener) -> JobRecord | None:
        """Return the record as soon as it finishes or after `timeout` seconds. `listener` is the
        process's shared.completions.CompletionListener (pub/sub, no polling while it is subscribed)."""
        with listener.watching(job_id) as waiter:
            return self.wait_watched(waiter, timeout, listener)

    def wait_watched(self, waiter, timeout: float, listener, record: JobRecord | None = None) -> JobRecord | None:
        """As wait_until_finished, for a job already watched (`listener.watching`). `record`: its state
        read or written after the watch began (None: read it now). No read when the job finishes while
        we wait: the finished record comes with the message."""
        deadline = time.monotonic() + timeout
        record = record or self.get(waiter.job_id)
        while record is not None and not record.finished:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if waiter.event.wait(min(remaining, 1.0)):
                record = _record_from_message(waiter.job_id, waiter.message) or self.get(waiter.job_id)
                waiter.event.clear()
            elif not listener.covers(waiter.since):
                record = self.get(waiter.job_id)
        return record


def _record_from_message(job_id: str, message: str | None) -> JobRecord | None:
    """The record published by the FINISH script; None if the message is not one (then read the record)."""
    try:
        data = json.loads(message or "")
        return JobRecord.from_hash(job_id, data) if isinstance(data, dict) and data.get("status") else None
    except (ValueError, TypeError):
        return None
