"""One Celery batch of moderation jobs: from task messages to stored results.

Returns a BatchReport: the requests whose outcome is safely in Redis (worker/tasks.py acknowledges
exactly those) and the requests whose job another live worker holds (kept, tried again later). A Redis
error makes the report say so (store_failed): worker/tasks.py then holds the whole batch until the store
takes writes and runs it again, so a crash or a store outage never loses a job.

One run per job: claiming takes a lease on each job (shared/job_scripts.py, renewed by worker/leases.py),
so a job a live worker holds is not run again concurrently, here or elsewhere, and only the current
lease's token stores a result. Jobs delivered for the first time share forward passes. A job
whose previous worker died while running it runs alone, after the batch's first-time jobs are stored and
with no other batch of this process at the model: if it is what kills the process, it takes no innocent
job down with it, and after MAX_DELIVERIES deaths it is failed instead of run (worker/deliveries.py).

No batch reads more than about SLICE_TOKENS tokens: small jobs run whole and are stored first, a large
one advances by a slice and goes back to its queue (worker/slices.py). A job past its model's
JOB_TIMEOUT (counted from its acceptance) is failed with a clear error instead of run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from shared.celery_app import celery_app
from shared.jobs import FAILED, HELD, RUN, SKIP, SUCCEEDED, Claim
from shared.queues import publish_job, queue_for_model
from shared.redis_client import STORE_ERRORS
from worker import metrics
from worker.deliveries import MODEL_GATE, poison_error, worker_name
from worker.followups import after_batch
from worker.inference import PassStats
from worker.leases import IN_FLIGHT
from worker.policy import moderation_result
from worker.runtime import ServedModel, WorkerRuntime
from worker.slices import plan_turn, remaining_cost, score_slice

log = logging.getLogger(__name__)

Outcome = tuple  # (job_id, results | None, error | None)
# What became of a job this batch saw, beyond stored results (BatchReport.outcomes, for Celery's task events).
REQUEUED = "requeued"  # back in its queue with a new message (a slice done, postponed, or after a worker died)
SKIPPED = "skipped"  # not run: already finished or canceled, its record expired, or a second copy in this batch


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)  # request ids to acknowledge
    deferred: list[str] = field(default_factory=list)  # request ids whose job a live worker holds
    unacknowledged: bool = False  # leave the rest as they are (not requeued): worker/tasks.py
    store_failed: bool = False  # the job store failed mid-batch: worker/tasks.py runs the batch again
    # request id -> (SUCCEEDED, results) | (FAILED, error) | (REQUEUED, why) | (SKIPPED, record status or
    # "duplicate"): what became of each request's job, for Celery's task events (worker/task_events.py)
    outcomes: dict[str, tuple] = field(default_factory=dict)


class UnconfirmedFinishes:
    """Jobs whose finish round trip failed in this process (the store went away mid-call). Redis may still
    have run it (a frozen server runs the buffered script when it thaws), so the held batch's retry finds the
    job finished: if by this worker, that finish was this attempt's and is counted then, once, keeping
    moderation_jobs_completed_total exact across a store outage."""

    def __init__(self):
        self._lock, self._ids = threading.Lock(), set()

    def add(self, job_ids) -> None:
        with self._lock:
            self._ids.update(job_ids)

    def pop(self, job_ids) -> list[str]:
        """Forget these jobs; returns those that were unconfirmed."""
        with self._lock:
            found = [job_id for job_id in job_ids if job_id in self._ids]
            self._ids.difference_update(job_ids)
            return found


UNCONFIRMED = UnconfirmedFinishes()


@dataclass
class Job:
    request_id: str
    job_id: str
    model: str
    texts: list[str] = field(default_factory=list)  # from the record, once claimed
    claim: Claim | None = None
    cost: int = 0  # tokens still to read (worker/slices.py)
    outcome: tuple | None = None  # see BatchReport.outcomes

    @property
    def owner(self) -> str:
        return self.claim.owner if self.claim else ""

    @property
    def waited_since(self) -> float:
        """When it last joined the queue: accepted, or put back after a slice."""
        claim = self.claim
        return (claim.requeued_ts or float(claim.enqueued_ts or 0)) if claim else 0.0


class MalformedTask(ValueError):
    def __init__(self, message: str, job_id: str | None):
        super().__init__(message)
        self.job_id = job_id


def parse_request(request, served_models: dict) -> Job:
    """Task args are (job_id, model); anything else is failed, not retried forever. The texts are read
    from the job record when the job is claimed. (A message from an older API also carries the texts
    as a third argument: they are the record's, so they are not read.)"""
    args = tuple(request.args or ())
    job_id = args[0] if args and isinstance(args[0], str) else None
    if len(args) not in (2, 3) or job_id is None:
        raise MalformedTask("malformed task message: expected (job_id, model)", job_id)
    model = args[1]
    if not isinstance(model, str) or model not in served_models:
        raise MalformedTask(f"malformed task message: model {model!r} is not served here", job_id)
    return Job(request.id, job_id, model)


def short_error(exc: BaseException) -> str:
    """A one-line message for the job record; the traceback goes to the worker log only."""
    detail = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"inference failed: {type(exc).__name__}" + (f": {detail}" if detail else "")


def _observe_pass(model: str):
    def observe(stats: PassStats) -> None:
        metrics.BATCH_SIZE.labels(model).observe(stats.texts)
        metrics.BATCH_TOKENS.labels(model).observe(stats.padded_tokens)
        metrics.INFERENCE.labels(model).observe(stats.seconds)
    return observe


def _score_together(served: ServedModel, jobs: list[Job], settings) -> list[Outcome]:
    """All texts of these jobs in shared forward passes; cached texts skip inference."""
    unique = list(dict.fromkeys(text for job in jobs for text in job.texts))
    cached = served.cache.get_many(unique)
    scores = {text: row for text, row in zip(unique, cached) if row is not None}
    missing = [text for text in unique if text not in scores]
    metrics.CACHE_HITS.labels(served.spec.name).inc(len(unique) - len(missing))
    fresh = served.classifier.score_many(missing, settings.batch_max_texts,
                                         settings.batch_max_tokens or served.classifier.token_budget,
                                         on_pass=_observe_pass(served.spec.name)) if missing else []
    served.cache.put_many(missing, fresh)
    scores.update(zip(missing, fresh))
    return [(job.job_id, [moderation_result(scores[t], served.spec) for t in job.texts], None)
            for job in jobs]


def score_jobs(served: ServedModel, jobs: list[Job], settings) -> list[Outcome]:
    """Outcomes for jobs of one model. If the shared pass fails, each job is retried alone,
    so one text that makes inference raise fails only its own job. A Redis error (the result cache is in
    the job store) is no job's fault: it propagates, and the batch is held until the store answers."""
    try:
        return _score_together(served, jobs, settings)
    except STORE_ERRORS:
        raise
    except Exception as exc:
        if len(jobs) == 1:
            log.exception("job %s failed", jobs[0].job_id)
            return [(jobs[0].job_id, None, short_error(exc))]
        log.warning("a pass over %d jobs failed; scoring each job alone", len(jobs), exc_info=True)
        return [outcome for job in jobs for outcome in score_jobs(served, [job], settings)]


def process_batch(runtime: WorkerRuntime, requests: list) -> BatchReport:
    report = BatchReport()
    outcomes: list[Outcome] = []
    jobs: list[Job] = []
    for request in requests:
        try:
            jobs.append(parse_request(request, runtime.models))
        except MalformedTask as exc:
            log.error("request %s: %s", request.id, exc)
            report.done.append(request.id)
            report.outcomes[request.id] = (FAILED, str(exc))
            if exc.job_id:
                outcomes.append((exc.job_id, None, str(exc)))
    busy = IN_FLIGHT.take([job.job_id for job in jobs])
    mine = [job for job in jobs if job.job_id not in busy]
    try:
        _process_jobs(runtime, mine, outcomes, report)
    except STORE_ERRORS as exc:
        # Refused, timed out past the client's retries, or a write refused (READONLY, MISCONF, OOM): no job's
        # fault. The whole batch runs again here once the store takes writes (worker/tasks.py); every step
        # of it is idempotent (shared/job_scripts.py), so what already went through is not done twice.
        log.warning("the job store failed mid-batch (%s: %s); the batch will run again", type(exc).__name__, exc)
        return BatchReport(store_failed=True, outcomes=_job_outcomes(jobs))  # what it stored before the error
    except Exception:
        # The batch goes back to the broker: free its leases now, so another worker need not wait for them.
        _release(runtime, mine)
        raise
    finally:
        IN_FLIGHT.release([job.job_id for job in mine])
    report.deferred.extend(job.request_id for job in jobs if job.job_id in busy)
    report.outcomes.update(_job_outcomes(jobs))
    return report


def _job_outcomes(jobs: list[Job]) -> dict[str, tuple]:
    return {job.request_id: job.outcome for job in jobs if job.outcome is not None}


def _release(runtime: WorkerRuntime, jobs: list[Job]) -> None:
    leases = {job.job_id: job.claim.token for job in jobs if job.claim is not None}
    try:
        runtime.store.release(worker_name(), leases)
    except STORE_ERRORS as exc:
        log.warning("could not release the leases of a failed batch (they expire in seconds): %s", exc)


def _process_jobs(runtime: WorkerRuntime, jobs: list[Job], outcomes: list[Outcome], report: BatchReport) -> None:
    store, settings = runtime.store, runtime.settings
    # Skip jobs that already finished (a redelivered duplicate) or whose record expired, and a second
    # copy of a job's message in this same batch (a re-publish racing the original): run each job once.
    # Jobs another live worker holds wait. The others are marked running under our lease in the same round trip.
    claims = store.claim([job.job_id for job in jobs], worker_name())
    _count_lost_replies(runtime, [(job, claim) for job, claim in zip(jobs, claims) if claim.verdict != RUN])
    live, live_ids, fresh, retried = [], set(), [], []
    now = time.time()
    for job, claim in zip(jobs, claims):
        if claim.verdict == HELD:
            log.info("job %s is held by another live worker; trying again later", job.job_id)
            report.deferred.append(job.request_id)
        elif claim.verdict == SKIP or job.job_id in live_ids:
            log.info("job %s is %s; skipping", job.job_id,
                     "already in this batch" if job.job_id in live_ids else claim.status or "unknown (expired)")
            job.outcome = (SKIPPED, "duplicate" if job.job_id in live_ids else claim.status or "expired")
            report.done.append(job.request_id)
        else:
            job.claim, job.texts = claim, claim.texts or []
            IN_FLIGHT.hold(job.job_id, claim.token)
            live.append(job)
            live_ids.add(job.job_id)
            metrics.QUEUE_WAIT.labels(job.model).observe(max(0.0, now - job.waited_since))
            if not job.texts:
                outcomes.append((job.job_id, None, "the job record holds no texts"))
            elif _past_deadline(runtime, job, now):
                outcomes.append((job.job_id, None, _deadline_error(runtime, job)))
            else:
                served = runtime.models[job.model].classifier
                job.cost = remaining_cost(claim.text_tokens, job.texts, claim.cursor, served.window_size)
                (retried if claim.deaths else fresh).append((job, claim.deaths))

    turn = plan_turn([job for job, _ in fresh], settings.slice_tokens)
    stored = _store(runtime, live, outcomes)
    with MODEL_GATE.shared():
        # Small jobs first, stored before any slice runs: their clients are not kept waiting behind one.
        stored += _store(runtime, live, _run_jobs(runtime, [job for job in turn.whole if not job.claim.cursor]))
        stored += _advance(runtime, live, _resumed(turn.whole) + turn.sliced, turn.postponed)
    # One job a worker died with per batch, after the others are stored and with no other batch of this
    # process at the model (worker/deliveries.py MODEL_GATE): if it is what kills the process, it takes no
    # innocent job down with it. The others go back to the queue for later batches.
    for job, _ in retried[1:]:
        _put_back(runtime, job, job.claim.cursor, job.claim.partial or [], progressed=False)
    for job, deaths in retried[:1]:
        if deaths >= settings.max_deliveries:
            log.error("job %s: %d workers died running it; failing it", job.job_id, deaths)
            stored += _store(runtime, live, [(job.job_id, None, poison_error(deaths))])
            continue
        alone = plan_turn([job], settings.slice_tokens)
        with MODEL_GATE.alone():
            stored += _store(runtime, live, _run_jobs(runtime, [job for job in alone.whole if not job.claim.cursor]))
            stored += _advance(runtime, live, _resumed(alone.whole) + alone.sliced, [])
    after_batch(store.redis, celery_app, {job.job_id: job.model for job in live}, stored)
    report.done.extend(job.request_id for job in live)


def _resumed(whole: list[Job]) -> list:
    """Jobs small enough to finish now that an earlier slice began: they go on from where it stopped."""
    return [(job, job.cost + 1) for job in whole if job.claim.cursor]


def _past_deadline(runtime: WorkerRuntime, job: Job, now: float) -> bool:
    timeout = runtime.settings.job_timeouts.get(job.model, 0)
    return bool(timeout) and now - float(job.claim.enqueued_ts or now) > timeout


def _deadline_error(runtime: WorkerRuntime, job: Job) -> str:
    timeout = runtime.settings.job_timeouts[job.model]
    return (f"job_timeout: not finished within JOB_TIMEOUT={timeout:g}s of its acceptance "
            f"({len(job.texts)} texts; the queue was too long or the job too large for the workers)")


def _advance(runtime: WorkerRuntime, live: list[Job], sliced: list, postponed: list[Job]) -> list[Outcome]:
    """Run one slice of each sliced job (finishing those it completes) and put the rest back in their queue."""
    stored: list[Outcome] = []
    settings = runtime.settings
    for job, budget in sliced:
        served = runtime.models[job.model]
        runtime.deliveries.record([job.job_id])
        try:
            part = score_slice(served.classifier, job.texts, job.claim.text_tokens, job.claim.cursor,
                               job.claim.partial, budget, settings.batch_max_texts,
                               settings.batch_max_tokens or served.classifier.token_budget,
                               on_pass=_observe_pass(job.model))
        except STORE_ERRORS:
            raise
        except Exception as exc:
            log.exception("job %s failed", job.job_id)
            stored += _store(runtime, live, [(job.job_id, None, short_error(exc))])
            continue
        if part.done:
            results = [moderation_result(row, served.spec) for row in part.scores]
            stored += _store(runtime, live, [(job.job_id, results, None)])
        else:
            _put_back(runtime, job, part.cursor, part.scores, progressed=True)
    for job in postponed:
        _put_back(runtime, job, job.claim.cursor, job.claim.partial or [], progressed=False)
    return stored


def _put_back(runtime: WorkerRuntime, job: Job, cursor: str, scores: list, progressed: bool) -> None:
    """The job goes to the back of its queue: its record first (queued, where it stopped), then its message."""
    if runtime.store.requeue(job.job_id, queue_for_model(job.model), worker_name(), job.claim.token, cursor, scores,
                             progressed):
        publish_job(celery_app, job.job_id, job.model, time.time())
        job.outcome = (REQUEUED, "sliced" if progressed else "postponed")
    else:
        log.warning("job %s is no longer this worker's; not putting it back", job.job_id)


def _store(runtime: WorkerRuntime, live: list[Job], outcomes: list[Outcome]) -> list[Outcome]:
    """Store outcomes; count (metrics) only the jobs this call finished, so a job finished twice counts once."""
    if not outcomes:
        return []
    job_ids = [job_id for job_id, _, _ in outcomes]
    UNCONFIRMED.add(job_ids)  # until the reply comes: a Redis error leaves them here
    tokens = {job.job_id: job.claim.token for job in live if job.claim is not None}
    finished = runtime.store.finish_many(outcomes, worker_name(), tokens)
    UNCONFIRMED.pop(job_ids)
    stored = [outcome for outcome, new in zip(outcomes, finished) if new]
    _count_outcomes(live, stored)
    return stored


def _count_lost_replies(runtime: WorkerRuntime, skipped: list[tuple[Job, object]]) -> None:
    """Count the jobs not run again that this worker finished in a call whose reply was lost (UnconfirmedFinishes)."""
    lost = set(UNCONFIRMED.pop([job.job_id for job, _ in skipped]))
    if not lost:
        return
    jobs = [(job, claim) for job, claim in skipped if job.job_id in lost]
    ours = worker_name()
    for (job, claim), finisher in zip(jobs, runtime.store.finishers([job.job_id for job, _ in jobs])):
        if finisher == ours:  # (rare: a store outage) its texts are read back from the stored results
            record = runtime.store.get(job.job_id) if claim.status == SUCCEEDED else None
            _count_job(job.model, claim.status, len(record.results or []) if record else 0)


def _run_jobs(runtime: WorkerRuntime, jobs: list[Job]) -> list[Outcome]:
    """Record the attempt and score the jobs (already claimed; jobs of one model share passes)."""
    if not jobs:
        return []
    runtime.deliveries.record([job.job_id for job in jobs])
    by_model: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_model[job.model].append(job)
    return [outcome for model, model_jobs in by_model.items()
            for outcome in score_jobs(runtime.models[model], model_jobs, runtime.settings)]


def _count_outcomes(live: list[Job], outcomes: list[Outcome]) -> None:
    model_of = {job.job_id: job for job in live}
    now = time.time()
    for job_id, results, error in outcomes:
        job = model_of.get(job_id)
        if job is None:
            continue
        job.outcome = (FAILED, error) if error else (SUCCEEDED, results)
        _count_job(job.model, FAILED if error else SUCCEEDED, len(results) if results is not None else 0)
        if job.claim is not None:
            slices = job.claim.slices + 1
            metrics.JOB_SLICES.labels(job.model).observe(slices)
            metrics.JOB_LATENCY.labels(job.model, "light" if slices == 1 else "bulk").observe(
                max(0.0, now - float(job.claim.enqueued_ts or now)))


def _count_job(model: str, status: str, texts_scored: int) -> None:
    metrics.JOBS_COMPLETED.labels(model, status).inc()
    if texts_scored:
        metrics.TEXTS_PROCESSED.labels(model).inc(texts_scored)
