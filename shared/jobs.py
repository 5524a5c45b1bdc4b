"""Job records in Redis: the one place a job's state and results live.

Lifecycle: the API creates a record ("queued") *before* it enqueues the Celery message, so an id
the API answered for is never unknown; the worker moves it to "running" and then to "succeeded"
or "failed", and publishes the finished record (a JSON object of its hash fields) on the job's
channel so waiting requests answer at once (shared/completions.py). A queued job
may instead be "canceled" (DELETE /jobs/<id>); a worker that later receives its message skips it.
Records expire RESULT_TTL seconds after creation (refreshed when they finish).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import redis

from shared.webhooks import OUTBOX_KEY

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
FINISHED = (SUCCEEDED, FAILED, CANCELED)
KEY_PREFIX = "moderation:job:"

# One result per input text, in input order. category_scores are floats in [0, 1].
#   {"flagged": bool, "categories": {label: bool}, "category_scores": {label: float}}
ModerationResult = dict

# Finishing is one atomic step: it never resurrects an expired record, and a duplicate delivery
# (a redelivered message whose job already finished) cannot overwrite a finished result.
_FINISH_SCRIPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' or status == 'canceled' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2], 'results', ARGV[3], 'error', ARGV[4],
           'finished_by', ARGV[9])
redis.call('HDEL', KEYS[1], 'texts', 'text_tokens', 'cursor', 'partial')
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZREM', ARGV[6] .. redis.call('HGET', KEYS[1], 'queue'), ARGV[7])
-- The webhook outbox entry is written with the result, so a crash before the call is enqueued loses nothing.
if redis.call('HEXISTS', KEYS[1], 'callback_url') == 1 then redis.call('ZADD', KEYS[3], ARGV[8], ARGV[7]) end
-- The finished record itself is the message, so a waiting request needs no read to answer.
local flat, record = redis.call('HGETALL', KEYS[1]), {}
for i = 1, #flat, 2 do record[flat[i]] = flat[i + 1] end
redis.call('PUBLISH', KEYS[2], cjson.encode(record))
return 1
"""
# Cancel only a job still queued (checked and changed atomically); answers 1, or the status it found.
_CANCEL_SCRIPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' then return status end
redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'texts', 'text_tokens', 'cursor', 'partial')
redis.call('ZREM', ARGV[2] .. redis.call('HGET', KEYS[1], 'queue'), ARGV[3])
redis.call('PUBLISH', KEYS[2], 'canceled')
return 1
"""
# Accepting a job is one call: add up the queue's broker lists (KEYS[4:]) and, below ARGV[1] messages,
# write the record (KEYS[1], fields ARGV[6:]) with its TTL and pending entry (KEYS[2]), then push its
# broker message ARGV[5] onto list KEYS[3] if one is given (not ''). Returns the depth.
_CREATE_SCRIPT = """
local depth = 0
for i = 4, #KEYS do depth = depth + redis.call('LLEN', KEYS[i]) end
if depth >= tonumber(ARGV[1]) then return depth end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
if ARGV[5] ~= '' then redis.call('LPUSH', KEYS[3], ARGV[5]) end
return depth
"""
# Claiming a batch is one call. KEYS come in pairs: a job's record and its delivery hash
# (DELIVERIES_PREFIX: `owner` holds the lease, `attempt` the worker that handed it to the model and has not
# been counted dead yet, `deaths`). ARGV: started_at, this worker, LEASE_PREFIX, lease seconds, TTL.
# A job is run ("run") when it is queued, or running under this worker's own lease (a batch held over a
# store outage), or running under an expired lease (its worker died: if that worker had handed it to the
# model, one death is counted, once). A job running under another worker's live lease is "held": it is
# not run again concurrently. Finished, canceled or unknown jobs are "skip". Every reply is
# (status, enqueued_ts, verdict, deaths, then for a job to run: texts, owner, text_tokens, cursor, partial,
# requeued_ts, slices: the record is the one copy of the texts, the message carries only the job id);
# missing values answer "" ("nil" would cut Lua's array short).
# The claim also renews this worker's lease, so a worker holds its jobs from its first claim on.
_CLAIM_SCRIPT = """
redis.call('SET', ARGV[3] .. ARGV[2], '1', 'EX', ARGV[4])
local out = {}
for i = 1, #KEYS, 2 do
  local job, deliveries = KEYS[i], KEYS[i + 1]
  local row = redis.call('HMGET', job, 'status', 'enqueued_ts')
  local status = row[1] or ''
  local lease = redis.call('HMGET', deliveries, 'owner', 'attempt')
  local owner, attempt = lease[1] or '', lease[2] or ''
  local verdict = 'skip'
  if status == 'queued' then
    verdict = 'run'
  elseif status == 'running' then
    if owner == ARGV[2] or owner == '' or redis.call('EXISTS', ARGV[3] .. owner) == 0 then
      verdict = 'run'
      if attempt ~= '' and attempt ~= ARGV[2] and redis.call('EXISTS', ARGV[3] .. attempt) == 0 then
        redis.call('HINCRBY', deliveries, 'deaths', 1)
        redis.call('HSET', deliveries, 'attempt', '')
      end
    else
      verdict = 'held'
    end
  end
  if verdict == 'run' then
    redis.call('HSET', job, 'status', 'running', 'started_at', ARGV[1])
    redis.call('HSET', deliveries, 'owner', ARGV[2])
    redis.call('EXPIRE', deliveries, ARGV[5])
  end
  local n = #out
  out[n + 1] = status
  out[n + 2] = row[2] or ''
  out[n + 3] = verdict
  out[n + 4] = redis.call('HGET', deliveries, 'deaths') or '0'
  local work = {}
  if verdict == 'run' then
    work = redis.call('HMGET', job, 'texts', 'owner', 'text_tokens', 'cursor', 'partial', 'requeued_ts', 'slices')
  end
  for j = 1, 7 do out[n + 4 + j] = work[j] or '' end
end
return out
"""
CLAIM_FIELDS = 11
# A job scored in part goes back to its queue (worker/slices.py): only while it is running under this
# worker (ARGV[1]); keeps where scoring stopped (cursor, partial scores), frees the lease without a death
# (nothing crashed), and marks it published now in the pending index (KEYS[3]) so the redelivery sweep
# treats the message about to be sent as the job's latest. Returns 1, or 0 if the job is not ours.
_REQUEUE_SCRIPT = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[2], 'owner') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'cursor', ARGV[2], 'partial', ARGV[3], 'requeued_ts', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'slices', ARGV[6])
redis.call('HSET', KEYS[2], 'owner', '', 'attempt', '')
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return 1
"""
# Verdicts of the claim script.
RUN, HELD, SKIP = "run", "held", "skip"
# Per job: who holds it and how many workers died with it (worker/deliveries.py reads and writes it too).
DELIVERIES_PREFIX = "moderation:deliveries:"
# A worker's lease: a key that lives LEASE_SECONDS past its last renewal (each claim and each heartbeat).
LEASE_PREFIX = "moderation:lease:"
LEASE_SECONDS = 10


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

    @classmethod
    def from_reply(cls, flat: list) -> Claim:
        texts, owner, tokens, cursor, partial, requeued, slices = flat[4:CLAIM_FIELDS]
        return cls(flat[0] or None, flat[1] or None, flat[2], int(flat[3]),
                   json.loads(texts) if texts else None, owner or "", json.loads(tokens) if tokens else None,
                   cursor or "", json.loads(partial) if partial else None, float(requeued) if requeued else None,
                   int(slices or 0))


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
            texts=json.loads(data["texts"]) if data.get("texts") else None,
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


def _texts_json(texts: list[str]) -> str:
    """Stored as UTF-8, not \\u escapes, so a job costs Redis about its text bytes (README "Limits"); a text
    that is not valid Unicode (a lone surrogate; the API refuses those) keeps its escapes."""
    encoded = json.dumps(texts, ensure_ascii=False)
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(texts)
    return encoded


class JobStore:
    def __init__(self, client: redis.Redis, ttl_seconds: int):
        self.redis = client
        self.ttl = ttl_seconds
        self._finish = client.register_script(_FINISH_SCRIPT)
        self._cancel = client.register_script(_CANCEL_SCRIPT)
        self._claim = client.register_script(_CLAIM_SCRIPT)
        self._create = client.register_script(_CREATE_SCRIPT)
        self._requeue = client.register_script(_REQUEUE_SCRIPT)

    @staticmethod
    def _fields(record: JobRecord) -> dict[str, str]:
        return {
            "model": record.model,
            "queue": record.queue,
            "texts": _texts_json(record.texts or []),
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

    def create(self, record: JobRecord, pipe: redis.client.Pipeline | None = None) -> None:
        """Write a new record; given a pipeline, only queue the commands on it (the caller executes)."""
        key = job_key(record.job_id)
        own_pipe = pipe is None
        pipe = self.redis.pipeline() if own_pipe else pipe
        pipe.hset(key, mapping=self._fields(record))
        pipe.expire(key, self.ttl)
        pipe.zadd(pending_key(record.queue), {record.job_id: record.enqueued_ts})
        if own_pipe:
            pipe.execute()

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
        """Mark the jobs `owner` may run "running" under its lease and return each job's Claim (see
        _CLAIM_SCRIPT), in one round trip for the whole batch."""
        if not job_ids:
            return []
        keys = [key for job_id in job_ids for key in (job_key(job_id), DELIVERIES_PREFIX + job_id)]
        flat = self._claim(keys=keys, args=[utc_now(), owner, LEASE_PREFIX, LEASE_SECONDS, self.ttl])
        return [Claim.from_reply(flat[i:i + CLAIM_FIELDS]) for i in range(0, len(flat), CLAIM_FIELDS)]

    def requeue(self, job_id: str, queue: str, owner: str, cursor: str, partial: list, progressed: bool) -> bool:
        """Put a job `owner` runs back to queued after a slice (_REQUEUE_SCRIPT); the caller then publishes
        its next message. False: the job is no longer this worker's (publish nothing)."""
        now = time.time()
        return bool(self._requeue(keys=[job_key(job_id), DELIVERIES_PREFIX + job_id, pending_key(queue)],
                                  args=[owner, cursor, json.dumps(partial), repr(now), job_id, int(progressed)]))

    def renew_lease(self, owner: str) -> None:
        """Keep this worker's claimed jobs its own for another LEASE_SECONDS (the heartbeat calls it)."""
        self.redis.set(LEASE_PREFIX + owner, "1", ex=LEASE_SECONDS)

    def finish_many(self, outcomes: list[tuple[str, list[ModerationResult] | None, str | None]],
                    finisher: str = "") -> list[bool]:
        """Store (job_id, results, error) outcomes in one round trip; error set means failed; `finisher`
        (the worker) is kept as the record's finished_by. Returns, per outcome, whether this call finished
        the job (False: it was already finished, or expired)."""
        now = utc_now()
        pipe = self.redis.pipeline()
        for job_id, results, error in outcomes:
            status = FAILED if error else SUCCEEDED
            payload = json.dumps(results) if results is not None else ""
            self._finish(keys=[job_key(job_id), done_channel(job_id), OUTBOX_KEY],
                         args=[status, now, payload, error or "", self.ttl, PENDING_PREFIX, job_id, time.time(),
                               finisher], client=pipe)
        return [bool(stored) for stored in pipe.execute()]

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
    """The record published by _FINISH_SCRIPT; None if the message is not one (then read the record)."""
    try:
        data = json.loads(message or "")
        return JobRecord.from_hash(job_id, data) if isinstance(data, dict) and data.get("status") else None
    except (ValueError, TypeError):
        return None
