"""GET /healthz, /readyz and /models."""

from __future__ import annotations

from flask import Blueprint

from api import schemas as s
from api.contract import operation, reply
from api.errors import error_response
from api.extensions import services
from shared.redis_client import STORE_ERRORS
from shared.worker_registry import live_workers

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@operation("Liveness: the process answers", {200: ("Alive", s.Health)}, rate_limited=False)
def healthz():
    """The process is alive; says nothing about Redis or workers."""
    return reply(s.Health(status="ok"))


@bp.get("/readyz")
@operation("Readiness: Redis answers and a live worker serves the default model", {200: ("Ready", s.Ready)},
           errors=(503,), rate_limited=False)
def readyz():
    """Ready when Redis answers and a live worker serves the default model's queue."""
    svc = services()
    default = svc.settings.default_model
    try:
        svc.redis.ping()
        workers = live_workers(svc.redis, [default])[default]
    except STORE_ERRORS as exc:
        return error_response(503, "not_ready", f"Redis is unreachable: {exc}",
                              headers={"Retry-After": "1"})
    if workers < 1:
        return error_response(503, "not_ready", f"no live worker serves the default model '{default}'",
                              headers={"Retry-After": "1"})
    return reply(s.Ready(status="ready", default_model=default, workers=workers))


@bp.get("/models")
@operation("Configured models: labels, thresholds, safe labels, live workers", {200: ("Models", s.Models)})
def models():
    svc = services()
    try:
        workers = live_workers(svc.redis, list(svc.models))
    except STORE_ERRORS:
        workers = {}
    return reply(s.Models(
        default_model=svc.settings.default_model,
        models=[s.ModelInfo(**spec.describe(), live_workers=workers.get(name)) for name, spec in svc.models.items()],
    ))
