"""Accepting a job: check the model and queue, write the record, then enqueue the Celery message."""

from __future__ import annotations

from flask import g

from api.errors import APIError
from api.extensions import services
from api.limits import key_class, token_budget
from api.metrics import JOBS_CANCELED, JOBS_SUBMITTED, TEXTS_SUBMITTED, count_rejection, count_tokens
from api.tokens import check_token_budget
from shared import metrics as names
from shared.jobs import JobRecord, is_job_id, new_job_id
from shared.kombu_redis import captured_publishes, transport_for
from shared.model_registry import ModelSpec
from shared.queues import broker_lists, publish_job
from shared.webhooks import CallbackRefused, check_callback_url

RETRY_AFTER_SECONDS = "1"


def resolve_model(name: str | None) -> ModelSpec:
    svc = services()
    name = name or svc.settings.default_model
    spec = svc.models.get(name)
    if spec is None:
        raise APIError(400, "unknown_model",
                       f"model: '{name}' is not configured (available: {', '.join(svc.models)})", param="model")
    return spec


def checked_callback_url(url: str | None) -> str:
    if url is None:
        return ""
    try:
        return check_callback_url(url, services().settings.webhook_allowed_hosts)
    except CallbackRefused as exc:
        raise APIError(400, "invalid_request", f"callback_url: {exc}", param="callback_url") from None


def _queue_full(spec: ModelSpec) -> APIError:
    count_rejection(names.REJECT_QUEUE_FULL)
    max_depth = services().settings.max_queue_depth
    return APIError(503, "queue_full", f"the {spec.name} queue holds MAX_QUEUE_DEPTH={max_depth} jobs; retry later",
                    headers={"Retry-After": RETRY_AFTER_SECONDS})


def submit_job(texts: list[str], model: str | None, callback_url: str | None = None,
               job_id: str | None = None, field: str = "input") -> JobRecord:
    """`field`: the body field holding the texts, named by a 413 for a text past MAX_TEXT_TOKENS."""
    svc = services()
    spec = resolve_model(model)
    callback_url = checked_callback_url(callback_url)
    klass = key_class()
    counts = check_token_budget(svc.token_counters[spec.name], texts, svc.settings, klass, spec.name, field)
    token_budget().spend(sum(counts), spec.name)
    record = JobRecord(job_id=job_id or new_job_id(), model=spec.name, queue=spec.queue, texts=texts,
                       text_tokens=counts, owner=g.get("owner", ""), callback_url=callback_url)
    # The record exists before the message, so a worker or GET never sees an unknown job.
    if svc.queues.shares_record_redis and transport_for(svc.settings.broker_url):
        _create_with_message(svc, spec, record)
    else:
        _create_then_publish(svc, spec, record)
    JOBS_SUBMITTED.labels(spec.name).inc()
    TEXTS_SUBMITTED.labels(spec.name).inc(len(record.texts))
    count_tokens(spec.name, klass, names.TOKENS_ACCEPTED, sum(counts))
    return record


def _create_with_message(svc, spec: ModelSpec, record: JobRecord) -> None:
    """This project's Redis transport on the record Redis: one script call reads the depth and, below
    MAX_QUEUE_DEPTH, writes the record and pushes the message Celery built but did not send."""
    with captured_publishes() as messages:
        publish_job(svc.celery, record.job_id, spec.name, record.enqueued_ts, captured=True,
                    producer=svc.capture_producer)
    (message,) = messages
    max_depth = svc.settings.max_queue_depth
    if svc.store.create_unless_full(record, broker_lists(spec.queue), max_depth, message) >= max_depth:
        raise _queue_full(spec)


def _create_then_publish(svc, spec: ModelSpec, record: JobRecord) -> None:
    """Any other broker: the record first (with the broker in the record Redis, written only below
    MAX_QUEUE_DEPTH in one script call), then the Celery message."""
    queues, max_depth = svc.queues, svc.settings.max_queue_depth
    if queues.shares_record_redis:
        if svc.store.create_unless_full(record, broker_lists(spec.queue), max_depth) >= max_depth:
            raise _queue_full(spec)
    else:
        svc.store.create(record)
    try:  # whatever fails from here (a full queue, the broker down) removes the record it wrote
        if not queues.shares_record_redis and queues.depth(spec.queue) >= max_depth:
            raise _queue_full(spec)
        publish_job(svc.celery, record.job_id, spec.name, record.enqueued_ts)
    except Exception:
        svc.store.delete(record)
        raise


def submit_and_wait(texts: list[str], model: str | None, timeout: float,
                    callback_url: str | None = None, job_id: str | None = None,
                    field: str = "input") -> tuple[JobRecord, JobRecord | None]:
    """Accept a job, then wait up to `timeout` s for it: (accepted record, latest record). Watched
    before it is queued, so its completion cannot slip by and nothing needs reading back."""
    svc = services()
    job_id = job_id or new_job_id()
    with svc.completions.watching(job_id) as waiter:
        record = submit_job(texts, model, callback_url, job_id=job_id, field=field)
        return record, svc.store.wait_watched(waiter, timeout, svc.completions, record)


def find_job(job_id: str) -> JobRecord:
    """The job if it exists and belongs to the caller; otherwise 404 (never 403: ids leak nothing)."""
    record = services().store.get(job_id) if is_job_id(job_id) else None
    if record is None or record.owner != g.get("owner", ""):
        raise APIError(404, "not_found", f"no job with id '{job_id}' (unknown or expired)")
    return record


def cancel_job(job_id: str) -> JobRecord:
    """Cancel the caller's job if it is still queued; 409 if it is running or finished."""
    record = find_job(job_id)
    canceled, status = services().store.cancel(job_id)
    if status is None:
        raise APIError(404, "not_found", f"no job with id '{job_id}' (unknown or expired)")
    if not canceled:
        raise APIError(409, "not_cancelable", f"job '{job_id}' is {status}; only a queued job can be canceled")
    JOBS_CANCELED.labels(record.model).inc()
    return find_job(job_id)
