"""POST /generate, GET /jobs/<id> and DELETE /jobs/<id>: the asynchronous job API."""

from __future__ import annotations

from flask import Blueprint, request, url_for

from api import idempotency
from api import schemas as s
from api.auth import require_api_key
from api.contract import operation, reply
from api.errors import APIError
from api.extensions import services, wait_for_job
from api.long_polls import admit_long_poll
from api.submission import cancel_job, find_job, resolve_model, submit_and_wait, submit_job
from api.validation import parse_json_body

bp = Blueprint("jobs", __name__)
bp.before_request(require_api_key)



def wait_query(schemas: s.RequestSchemas) -> dict:
    return {"name": "wait", "in": "query", "required": False, "description": "long-poll up to this many seconds",
            "schema": {"type": "number", "minimum": 0, "maximum": schemas.max_wait}}


JOB_ID = {"job_id": {"type": "string", "format": "uuid"}}


def _wait_seconds(raw: str | None) -> float:
    if raw is None:
        return 0.0
    limit = services().settings.max_wait_seconds
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= limit:
        raise APIError(400, "invalid_request", f"wait: must be a number of seconds from 0 to {limit:g}",
                       param="wait")
    return value


@bp.post("/generate")
@operation("Queue texts for moderation",
           {202: ("Queued", s.JobAccepted), 200: ("Finished within `wait`", s.Job)},
           errors=(422, 503), body="generate", headers=(idempotency.header_parameter,), secured=True)
def generate():
    body = parse_json_body(services().schemas.generate)
    claim = idempotency.claim()
    if claim is not None and claim.replayed:
        return _replay(body, claim)
    job_id = claim.job_id if claim else None
    with idempotency.released_on_failure(claim):
        if body.wait and admit_long_poll(body.wait):  # past the long-poll caps: the 202 at once
            record, finished = submit_and_wait(body.texts(), body.model, body.wait, body.callback_url, job_id=job_id,
                                               field=body.texts_field())
            if finished is not None and finished.finished:
                return reply(s.Job.of(finished))
        else:
            record = submit_job(body.texts(), body.model, body.callback_url, job_id=job_id, field=body.texts_field())
    return _accepted(record.job_id, record.model)


def _accepted(job_id: str, model: str, headers: dict | None = None):
    status_url = url_for("jobs.get_job", job_id=job_id)
    return reply(s.JobAccepted(job_id=job_id, status="queued", model=model, status_url=status_url),
                 202, {"Location": status_url, **(headers or {})})


def _replay(body, claim: idempotency.Claim):
    """The answer the original request got (or would get now): the finished job within `wait`, else 202."""
    record = claim.record
    if body.wait and record is not None and not record.finished and admit_long_poll(body.wait):
        record = wait_for_job(claim.job_id, body.wait) or record
    if body.wait and record is not None and record.finished:
        return reply(s.Job.of(record), headers=claim.headers)
    return _accepted(claim.job_id, record.model if record else resolve_model(body.model).name, claim.headers)


@bp.get("/jobs/<job_id>")
@operation("A job's state and results", {200: ("The job", s.Job)}, errors=(400, 404, 503), query=(wait_query,),
           path=JOB_ID, secured=True)
def get_job(job_id: str):
    wait = _wait_seconds(request.args.get("wait"))
    record = find_job(job_id)
    if wait and not record.finished and admit_long_poll(wait):  # past the long-poll caps: the job as it is
        record = wait_for_job(job_id, wait) or record
    return reply(s.Job.of(record))


@bp.delete("/jobs/<job_id>")
@operation("Cancel a queued job", {200: ("Canceled", s.Job)}, errors=(404, 409, 503), path=JOB_ID,
           secured=True)
def delete_job(job_id: str):
    return reply(s.Job.of(cancel_job(job_id)))
