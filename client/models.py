"""Typed views of the service's JSON answers (see api/schemas.py for the server's side)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# A job is finished in any state but these two (succeeded, failed, and canceled where the server has it).
UNFINISHED_STATUSES = frozenset({"queued", "running"})


@dataclass(frozen=True, slots=True)
class ModerationResult:
    """One text's verdict: `categories[label]` is `category_scores[label] >= threshold(label)`."""

    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModerationResult:
        return cls(flagged=bool(data["flagged"]), categories=dict(data["categories"]),
                   category_scores={k: float(v) for k, v in data["category_scores"].items()})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def flagged_categories(self) -> list[str]:
        return [label for label, hit in self.categories.items() if hit]


@dataclass(frozen=True, slots=True)
class Job:
    """A job as POST /generate (202: only the first four fields) or GET /jobs/<id> describes it."""

    job_id: str
    status: str
    model: str
    status_url: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    results: list[ModerationResult] | None = None
    error: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        results = data.get("results")
        return cls(job_id=data["job_id"], status=data["status"], model=data["model"],
                   status_url=data.get("status_url"), created_at=data.get("created_at"),
                   started_at=data.get("started_at"), finished_at=data.get("finished_at"),
                   results=[ModerationResult.from_json(r) for r in results] if results is not None else None,
                   error=data.get("error"))

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One entry of GET /models."""

    name: str
    queue: str
    labels: list[str]
    thresholds: dict[str, float]
    safe_labels: list[str] = field(default_factory=list)
    multi_label: bool = True
    live_workers: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(name=data["name"], queue=data.get("queue", ""), labels=list(data.get("labels", [])),
                   thresholds={k: float(v) for k, v in data.get("thresholds", {}).items()},
                   safe_labels=list(data.get("safe_labels", [])), multi_label=bool(data.get("multi_label", True)),
                   live_workers=data.get("live_workers"))


@dataclass(frozen=True, slots=True)
class Models:
    default_model: str
    models: list[ModelInfo]

    def get(self, name: str | None = None) -> ModelInfo | None:
        wanted = name or self.default_model
        return next((m for m in self.models if m.name == wanted), None)


@dataclass(frozen=True, slots=True)
class Readiness:
    """GET /readyz: ready, or the reason it is not."""

    ready: bool
    detail: dict[str, Any]

    @property
    def reason(self) -> str:
        error = self.detail.get("error")
        return str(error.get("message", "")) if isinstance(error, dict) else ""


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The request limits the server publishes in /openapi.json; the defaults are the server's own."""

    max_batch_items: int = 256
    max_text_chars: int = 20_000
    max_wait_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The OpenAI-style x-ratelimit-* headers of the last submission's answer (None: not sent). The resets
    are seconds from `observed_at` (time.monotonic()) until that budget is full again."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None
    observed_at: float = 0.0

    @property
    def known(self) -> bool:
        return self.remaining_requests is not None or self.remaining_tokens is not None

    def pause(self, now: float) -> tuple[float, str]:
        """(seconds to wait before the next submission, which budget is spent); (0, "") when none is."""
        waits = [(self.observed_at + (reset or 0.0) - now, name)
                 for remaining, reset, name in ((self.remaining_requests, self.reset_requests, "requests"),
                                                (self.remaining_tokens, self.reset_tokens, "tokens"))
                 if remaining is not None and remaining <= 0]
        wait, name = max(waits, default=(0.0, ""))
        return (wait, name) if wait > 0 else (0.0, "")
