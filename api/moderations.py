"""POST /v1/moderations: OpenAI-compatible, synchronous on top of the same job queue."""

from __future__ import annotations

from flask import Blueprint

from api import schemas as s
from api.auth import require_api_key
from api.contract import operation, reply
from api.errors import APIError
from api.extensions import services
from api.submission import submit_and_wait
from api.validation import parse_json_body
from shared.jobs import SUCCEEDED

bp = Blueprint("moderations", __name__)
bp.before_request(require_api_key)


@bp.post("/v1/moderations")
@operation("OpenAI-compatible moderation (waits for the job)", {200: ("Results", s.ModerationResponse)},
           errors=(500, 503, 504), body="moderations", secured=True)
def create_moderation():
    svc = services()
    body = parse_json_body(svc.schemas.moderations)
    # OpenAI's model names mean the default model, unless a configured model has that name.
    model = None if body.model in s.OPENAI_MODEL_NAMES and body.model not in svc.models else body.model
    record, finished = submit_and_wait(body.texts(), model, svc.settings.moderations_timeout)
    if finished is None or not finished.finished:
        raise APIError(504, "timeout", "the job did not finish in time; poll its status_url",
                       job_id=record.job_id, status_url=f"/jobs/{record.job_id}")
    if finished.status != SUCCEEDED:
        raise APIError(500, "job_failed", finished.error or "the job failed", job_id=record.job_id)
    return reply(s.ModerationResponse(id=record.job_id, model=record.model, results=finished.results))
