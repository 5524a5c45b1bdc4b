"""POST /generate and GET /jobs/<id>: the asynchronous job API."""

from __future__ import annotations

from flask import Blueprint, jsonify, request, url_for

from api.auth import require_api_key
from api.errors import APIError
from api.extensions import services, wait_for_job
from api.submission import find_job, submit_and_wait, submit_job
from api.validation import parse_json_body

bp = Blueprint("jobs", __name__)
bp.before_request(require_api_key)


def _wait_seconds(raw: str | None) -> float:
    if raw is None:
        return 0.0
    limit = services().settings.max_wait_seconds
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= limit:
        raise APIError(400, "invalid_request", f"wait: must be a number of seconds from 0 to {limit:g}")
    return value


@bp.post("/generate")
def generate():
    body = parse_json_body(services().schemas.generate)
    if body.wait:
        record, finished = submit_and_wait(body.texts(), body.model, body.wait)
        if finished is not None and finished.finished:
            return jsonify(finished.public()), 200
    else:
        record = submit_job(body.texts(), body.model)
    status_url = url_for("jobs.get_job", job_id=record.job_id)
    response = jsonify({"job_id": record.job_id, "status": record.status, "model": record.model,
                        "status_url": status_url})
    response.status_code = 202
    response.headers["Location"] = status_url
    return response


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    wait = _wait_seconds(request.args.get("wait"))
    record = find_job(job_id)
    if wait and not record.finished:
        record = wait_for_job(job_id, wait) or record
    return jsonify(record.public())
