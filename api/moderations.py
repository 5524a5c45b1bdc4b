"""POST /v1/moderations: OpenAI-compatible, synchronous on top of the same job queue.

Answers in OpenAI's shape (docs/api.md "OpenAI compatibility"): `id` is "modr-" + the job id, `model` the
served model's id, and every result lists all of OpenAI's categories.
"""

from __future__ import annotations

from flask import Blueprint

from api import idempotency
from api import schemas as s
from api.auth import require_api_key
from api.contract import operation, reply
from api.errors import APIError
from api.extensions import services, wait_for_job
from api.long_polls import require_long_poll
from api.submission import submit_and_wait
from api.validation import parse_json_body
from shared.jobs import SUCCEEDED
from shared.model_registry import ModelSpec

bp = Blueprint("moderations", __name__)
bp.before_request(require_api_key)

ID_PREFIX = "modr-"


def _configured_name(requested: str | None, models: dict[str, ModelSpec]) -> str | None:
    """The configured model a request means: OpenAI's names mean the default model (unless a configured
    model has that name) and a served model's id means that model; None is the default model."""
    if requested in models:
        return requested
    if requested in s.OPENAI_MODEL_NAMES:
        return None
    return next((name for name, spec in models.items() if spec.model_id == requested), requested)


def openai_result(stored: dict) -> s.OpenAIModeration:
    """OpenAI's categories in OpenAI's order (false, 0.0 and applied to no input type where the model lacks
    one), then the model's other labels under their own names; each label the model scored applies to text.
    A cascade model's "stage" is left out, as OpenAI's shape has no such field: GET /jobs/<job id> shows it."""
    result = s.ModerationResult.model_validate(stored)
    names = list(dict.fromkeys([*s.OPENAI_CATEGORIES, *result.categories]))
    return s.OpenAIModeration(
        flagged=result.flagged,
        categories={name: result.categories.get(name, False) for name in names},
        category_scores={name: result.category_scores.get(name, 0.0) for name in names},
        category_applied_input_types={name: ["text"] if name in result.categories else [] for name in names},
    )


@bp.post("/v1/moderations")
@operation("OpenAI-compatible moderation (waits for the job)", {200: ("Results", s.ModerationResponse)},
           errors=(422, 500, 503, 504), body="moderations", headers=(idempotency.header_parameter,), secured=True)
def create_moderation():
    svc = services()
    body = parse_json_body(svc.schemas.moderations)
    require_long_poll(svc.settings.moderations_timeout)  # past the long-poll caps: 429, and no job created
    claim = idempotency.claim()
    timeout = svc.settings.moderations_timeout
    headers = claim.headers if claim else {}
    if claim is not None and claim.replayed:  # the original job, waited for as the original request did
        record = finished = wait_for_job(claim.job_id, timeout) or claim.record
    else:
        with idempotency.released_on_failure(claim):
            record, finished = submit_and_wait(body.texts(), _configured_name(body.model, svc.models), timeout,
                                               job_id=claim.job_id if claim else None)
    job_id = claim.job_id if claim else record.job_id
    if record is None or finished is None or not finished.finished:
        raise APIError(504, "timeout", "the job did not finish in time; poll its status_url", headers=headers,
                       job_id=job_id, status_url=f"/jobs/{job_id}")
    if finished.status != SUCCEEDED:
        raise APIError(500, "job_failed", finished.error or "the job failed", headers=headers, job_id=job_id)
    return reply(s.ModerationResponse(id=ID_PREFIX + job_id, model=svc.models[record.model].model_id,
                                      results=[openai_result(result) for result in finished.results]), headers=headers)
