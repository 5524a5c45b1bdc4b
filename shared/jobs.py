"""Job records in Redis: the one place a job's state and results live.

Lifecycle: the API creates a record ("queued") *before* it enqueues the Celery message, so an id
the API answered for is never unknown; the worker moves it to "running" and then to "succeeded"
or "failed", and publishes the finished record (a JSON object of its hash fields) on the job's
channel so waiting requests answer at once (shared/completions.py). A queued job
may instead be "canceled" (DELETE /jobs/<id>); a worker that later receives its message skips it.
Records expire RESULT_TTL seconds after creation (refreshed when they finish).
"""

from __future__ import annotations

import base64
import json
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
from shared.webhooks import OUTBOX_KEY

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
FINISHED = (SUCCEEDED, FAILED, CANCELED)
KEY_PREFIX = "moderation:job:"

# One result per input text, in input order. category_scores are floats in [0, 1].
#   {"flagged": bool, "categories": {label: bool}, "category_scores": {label: float}}
ModerationResult = dict

# Verdicts of the claim script.
RUN, HELD, SKIP = "run", "held", "skip"
# Per job: who holds it (owner, token, lease_until: shared/job_scripts.py) and how many workers died with it
# (worker/deliveries.py reads and writes it too).
DELIVERIES_PREFIX = "moderation:deliveries:"
# A job's lease lasts this long past its claim or last renewal (worker/leases.py renews it every third).
LEASE_SECONDS = 10
# A worker's write probe: the store gate resumes only once a write goes through (worker/tasks.py).
PROBE_PREFIX = "moderation:store-probe:"


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


def job_key(job_id: str) -> str:
    return KEY_PREFIX + job_id


DONE_SUFFIX = ":done"


def done_channel(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}{DONE_SUFFIX}"


PENDING_PREFIX = "moderation:pending:"


def pending_key(queue: str) -> str:
    """Sorted set of a queue's unfinished jobs, scored by when their message was (last) published."""
    return PENDING_PREFIX + queue


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
    def __init__(self, client: redis.Redis, ttl_seconds: int):
        self.redis = client
        self.ttl = ttl_seconds
        self._finish = client.register_script(scripts.FINISH)
        self._cancel = client.register_script(scripts.CANCEL)
        self._claim = client.register_script(scripts.CLAIM)
        self._create = client.register_script(scripts.CREATE)
        self._requeue = client.register_script(scripts.REQUEUE)
        self._renew = client.register_script(scripts.RENEW)
        self._release = client.register_script(scripts.RELEASE)

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

    def create_unless_full(self, record: JobRecord, depth_keys: list[str], max_depth: int,
                           message: tuple[str, str] | None = None) -> int:
        """Write a new record only if the lists `depth_keys` hold fewer than `max_depth` messages in all,
        and then push `message` ((list, payload): its broker message) if given; returns that depth
        (>= max_depth: nothing was written). One round trip, atomic."""
        fields = [item for pair in self._fields(record).items() for item in pair]
        target, payload = message or (depth_keys[0], "")
        return int(self._create(keys=[job_key(record.job_id), pending_key(record.queue), target, *depth_keys],
                                args=[max_depth, self.ttl, repr(record.enqueued_ts), record.job_id, payload,
                                      *fields]))

    def create(self, record: JobRecord) -> None:
        """Write a new record and its pending entry (nothing if it exists: a retried call)."""
        key = job_key(record.job_id)
        fields = [item for pair in self._fields(record).items() for item in pair]
        self._create(keys=[key, pending_key(record.queue), key],
                     args=[1, self.ttl, repr(record.enqueued_ts), record.job_id, "", *fields])

    def delete(self, record: JobRecord) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(job_key(record.job_id))
        pipe.zrem(pending_key(record.queue), record.job_id)
        pipe.execute()

    def pending_before(self, queue: str, cutoff: float, limit: int = 500) -> list[str]:
        """Unfinished jobs of `queue` whose message was published before `cutoff` (epoch seconds)."""
        return self.redis.zrangebyscore(pending_key(queue), 0, cutoff, start=0, num=limit)

    def mark_republished(self, queue: str, job_id: str, when: float) -> None:
        self.redis.zadd(pending_key(queue), {job_id: when})

    def forget_pending(self, queue: str, job_id: str) -> None:
        self.redis.zrem(pending_key(queue), job_id)

    def get(self, job_id: str) -> JobRecord | None:
        data = self.redis.hgetall(job_key(job_id))
        return JobRecord.from_hash(job_id, data) if data else None

    def states(self, job_ids: list[str]) -> list[tuple[str | None, str | None]]:
        """(status, enqueued_ts) per job in one round trip; (None, None) for unknown or expired ids."""
        pipe = self.redis.pipeline()
        for job_id in job_ids:
            pipe.hmget(job_key(job_id), ["status", "enqueued_ts"])
        return [tuple(row) for row in pipe.execute()]

    def claim(self, job_ids: list[str], owner: str = "") -> list[Claim]:
        """Mark the jobs `owner` may run "running" under a lease of this call's token and return each job's
        Claim (shared/job_scripts.py CLAIM), in one round trip for the whole batch."""
        if not job_ids:
            return []
        token = secrets.token_hex(8)
        keys = [key for job_id in job_ids for key in (job_key(job_id), DELIVERIES_PREFIX + job_id)]
        flat = self._claim(keys=keys, args=[utc_now(), owner, token, LEASE_SECONDS, self.ttl])
        return [Claim.from_reply(flat[i:i + CLAIM_FIELDS], token) for i in range(0, len(flat), CLAIM_FIELDS)]

    def renew(self, owner: str, leases: dict[str, str]) -> list[str]:
        """Extend the leases {job id: token} `owner` holds by LEASE_SECONDS; returns the jobs it no longer holds."""
        if not leases:
            return []
        job_ids = list(leases)
        held = self._renew(keys=[DELIVERIES_PREFIX + job_id for job_id in job_ids],
                           args=[owner, LEASE_SECONDS, *leases.values()])
        return [job_id for job_id, renewed in zip(job_ids, held) if not renewed]

    def release(self, owner: str, leases: dict[str, str]) -> None:
        """Give up the leases {job id: token} at once (their batch failed and goes back to the broker)."""
        if leases:
            self._release(keys=[DELIVERIES_PREFIX + job_id for job_id in leases], args=[owner, *leases.values()])

    def requeue(self, job_id: str, queue: str, owner: str, token: str, cursor: str, partial: list,
                progressed: bool) -> bool:
        """Put a job `owner` runs under `token` back to queued after a slice (shared/job_scripts.py REQUEUE);
        the caller then publishes its next message. False: the job is no longer this claim's (publish nothing)."""
        now = time.time()
        return bool(self._requeue(keys=[job_key(job_id), DELIVERIES_PREFIX + job_id, pending_key(queue)],
                                  args=[owner, cursor, json.dumps(partial), repr(now), job_id, int(progressed),
                                        token]))

    def finish_many(self, outcomes: list[tuple[str, list[ModerationResult] | None, str | None]],
                    finisher: str = "", tokens: dict[str, str] | None = None) -> list[bool]:
        """Store (job_id, results, error) outcomes in one round trip; error set means failed; `finisher`
        (the worker) is kept as the record's finished_by. `tokens`: each job's claim token; a job with one
        is finished only while that claim holds it (fencing), a job without (a malformed message, the
        parking reconciler) whatever holds it. Returns, per outcome, whether this claim finished the job
        (True also when a retried call finds its own first run did; False: already finished by another,
        taken over, or expired)."""
        now = utc_now()
        tokens = tokens or {}
        pipe = self.redis.pipeline()
        for job_id, results, error in outcomes:
            status = FAILED if error else SUCCEEDED
            payload = json.dumps(results) if results is not None else ""
            self._finish(keys=[job_key(job_id), done_channel(job_id), OUTBOX_KEY, DELIVERIES_PREFIX + job_id],
                         args=[status, now, payload, error or "", self.ttl, PENDING_PREFIX, job_id, time.time(),
                               finisher, tokens.get(job_id, "")], client=pipe)
        return [bool(stored) for stored in pipe.execute()]

    def takes_writes(self, owner: str) -> bool:
        """A real write, as a worker's batch makes: True, or the store's refusal raised (worker/tasks.py)."""
        return bool(self.redis.set(PROBE_PREFIX + owner, utc_now(), ex=60))

    def finishers(self, job_ids: list[str]) -> list[str | None]:
        """Each job's finished_by (see finish_many), None if unfinished, expired or finished by no worker."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(job_key(job_id), "finished_by")
        return [by or None for by in pipe.execute()]

    def cancel(self, job_id: str) -> tuple[bool, str | None]:
        """Cancel the job if it is still queued: (True, "canceled"), else (False, its status or None if unknown)."""
        found = self._cancel(keys=[job_key(job_id), done_channel(job_id)], args=[utc_now(), PENDING_PREFIX, job_id])
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
