"""Accepting a job: check the model and queue, write the record, then enqueue the Celery message."""

from __future__ import annotations

from flask import g

from api.errors import APIError
from api.extensions import services
from api.metrics import JOBS_CANCELED, JOBS_SUBMITTED, TEXTS_SUBMITTED, count_rejection
from shared import metrics as names
from shared.jobs import JobRecord, is_job_id, new_job_id
from shared.model_registry import ModelSpec
from shared.queues import publish_job
from shared.webhooks import CallbackRefused, check_callback_url

RETRY_AFTER_SECONDS = "1"


def resolve_model(name: str | None) -> ModelSpec:
    svc = services()
    name = name or svc.settings.default_model
    spec = svc.models.get(name)
    if spec is None:
        raise APIError(400, "unknown_model",
                       f"model: '{name}' is not configured (available: {', '.join(svc.models)})")
    return spec


def checked_callback_url(url: str | None) -> str:
    if url is None:
        return ""
    try:
        return check_callback_url(url, services().settings.webhook_allowed_hosts)
    except CallbackRefused as exc:
        raise APIError(400, "invalid_request", f"callback_url: {exc}") from None


def submit_job(texts: list[str], model: str | None, callback_url: str | None = None) -> JobRecord:
    svc = services()
    spec = resolve_model(model)
    record = JobRecord(job_id=new_job_id(), model=spec.name, queue=spec.queue, texts=texts,
                       owner=g.get("owner", ""), callback_url=checked_callback_url(callback_url))
    # The record exists before the message, so a worker or GET never sees an unknown job; a full queue
    # then deletes the unused record. With the broker in the record Redis, one round trip does both.
    queues = svc.queues
    pipe = svc.redis.pipeline()
    depth_results = queues.add_depth(pipe, spec.queue) if queues.shares_record_redis else 0
    svc.store.create(record, pipe)
    results = pipe.execute()
    try:  # whatever fails from here (a full queue, the broker down) removes the record it wrote
        depth = sum(results[:depth_results]) if queues.shares_record_redis else queues.depth(spec.queue)
        if depth >= svc.settings.max_queue_depth:
            count_rejection(names.REJECT_QUEUE_FULL)
            raise APIError(503, "queue_full", f"the {spec.name} queue holds MAX_QUEUE_DEPTH="
                           f"{svc.settings.max_queue_depth} jobs; retry later",
                           headers={"Retry-After": RETRY_AFTER_SECONDS})
        publish_job(svc.celery, record.job_id, spec.name, texts, record.enqueued_ts)
    except Exception:
        svc.store.delete(record)
        raise
    JOBS_SUBMITTED.labels(spec.name).inc()
    TEXTS_SUBMITTED.labels(spec.name).inc(len(texts))
    return record


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
