"""Response models both sides serialise with: the body of GET /jobs/<id> is also the webhook body.

The API's other schemas (api/schemas.py) import these; /openapi.json is generated from all of them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from shared.jobs import JobRecord

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    # Only a cascade model's results have it (absent from the others', not null: their shape is unchanged).
    stage: Literal["fast", "accurate"] | None = Field(
        default=None, exclude_if=lambda stage: stage is None,
        description="a cascade model's results only: which stage decided the text (accurate: any part of it)")


class Job(BaseModel):
    job_id: str
    status: JobStatus
    model: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    results: list[ModerationResult] | None
    error: str | None

    @classmethod
    def of(cls, record: JobRecord) -> Job:
        return cls.model_validate(record.public())
