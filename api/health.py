"""GET /healthz, /readyz and /models."""

from __future__ import annotations

import redis
from flask import Blueprint, jsonify

from api.errors import error_response
from api.extensions import services
from shared.worker_registry import live_workers

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is alive; says nothing about Redis or workers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Ready when Redis answers and a live worker serves the default model's queue."""
    svc = services()
    default = svc.settings.default_model
    try:
        svc.redis.ping()
        workers = live_workers(svc.redis, [default])[default]
    except redis.RedisError as exc:
        return error_response(503, "not_ready", f"Redis is unreachable: {exc}",
                              headers={"Retry-After": "1"})
    if workers < 1:
        return error_response(503, "not_ready", f"no live worker serves the default model '{default}'",
                              headers={"Retry-After": "1"})
    return jsonify({"status": "ready", "default_model": default, "workers": workers})


@bp.get("/models")
def models():
    svc = services()
    try:
        workers = live_workers(svc.redis, list(svc.models))
    except redis.RedisError:
        workers = {}
    return jsonify({
        "default_model": svc.settings.default_model,
        "models": [{**spec.describe(), "live_workers": workers.get(name)} for name, spec in svc.models.items()],
    })
