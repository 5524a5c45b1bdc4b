"""Accepting a job: check the model and queue, write the record, then enqueue the Celery message."""

from __future__ import annotations

from flask import g

from api.errors import APIError
from api.extensions import services
from api.metrics import JOBS_SUBMITTED, TEXTS_SUBMITTED, count_rejection
from shared import metrics as names
from shared.jobs import JobRecord, is_job_id, new_job_id
from shared.model_registry import ModelSpec
from shared.queues import broker_lists, publish_job

RETRY_AFTER_SECONDS = "1"


def resolve_model(name: str | None) -> ModelSpec:
    svc = services()
    name = name or svc.settings.default_model
    spec = svc.models.get(name)
    if spec is None:
        raise APIError(400, "unknown_model",
                       f"model: '{name}' is not configured (available: {', '.join(svc.models)})")
    return spec


def submit_job(texts: list[str], model: str | None, job_id: str | None = None) -> JobRecord:
    svc = services()
    spec = resolve_model(model)
    record = JobRecord(job_id=job_id or new_job_id(), model=spec.name, queue=spec.queue, texts=texts,
                       owner=g.get("owner", ""))
    # One script call reads the queue depth and, below MAX_QUEUE_DEPTH, writes the record (the record
    # exists before the message, so a worker or GET never sees an unknown job).
    if svc.store.create_unless_full(record, broker_lists(spec.queue), svc.settings.max_queue_depth) \
            >= svc.settings.max_queue_depth:
        count_rejection(names.REJECT_QUEUE_FULL)
        raise APIError(503, "queue_full", f"the {spec.name} queue holds MAX_QUEUE_DEPTH="
                       f"{svc.settings.max_queue_depth} jobs; retry later",
                       headers={"Retry-After": RETRY_AFTER_SECONDS})
    try:
        publish_job(svc.celery, record.job_id, spec.name, texts, record.enqueued_ts)
    except Exception:
        svc.store.delete(record)
        raise
    JOBS_SUBMITTED.labels(spec.name).inc()
    TEXTS_SUBMITTED.labels(spec.name).inc(len(texts))
    return record


def submit_and_wait(texts: list[str], model: str | None, timeout: float) -> tuple[JobRecord, JobRecord | None]:
    """Accept a job, then wait up to `timeout` s for it: (accepted record, latest record). Watched
    before it is queued, so its completion cannot slip by and nothing needs reading back."""
    svc = services()
    job_id = new_job_id()
    with svc.completions.watching(job_id) as waiter:
        record = submit_job(texts, model, job_id)
        return record, svc.store.wait_watched(waiter, timeout, svc.completions, record)


def find_job(job_id: str) -> JobRecord:
    """The job if it exists and belongs to the caller; otherwise 404 (never 403: ids leak nothing)."""
    record = services().store.get(job_id) if is_job_id(job_id) else None
    if record is None or record.owner != g.get("owner", ""):
        raise APIError(404, "not_found", f"no job with id '{job_id}' (unknown or expired)")
    return record
