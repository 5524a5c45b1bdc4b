"""Rate limiting with flask-limiter, counters in Redis so all gunicorn processes share them.

RATE_LIMITER (flask-limiter syntax, e.g. "60/minute;1000/hour") is one budget per client across all
limited endpoints: per API key when keys are on (only a configured key gets its own budget, so
made-up keys cannot dodge the limit), else per client IP (X-Forwarded-For is believed only through
TRUSTED_PROXIES hops, see create_app). When the limiter's Redis is down, limits fall back to each
process's memory (in_memory_fallback) instead of refusing or failing requests: availability over
exactness. Health, readiness, metrics and the OpenAPI document are exempt.
"""

from __future__ import annotations

from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import parse_many

from api.auth import authenticated_fingerprint
from shared.config import ConfigError, Settings

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


def client_identity() -> str:
    """Whose budget a request spends: its API key's fingerprint, else its client IP."""
    fingerprint = authenticated_fingerprint()
    if fingerprint is not None:
        return "key:" + fingerprint
    return "ip:" + (get_remote_address() or "unknown")


def parse_limits(raw: str) -> list[str]:
    """RATE_LIMITER's limits, checked at start-up (a typo must not become a silent per-request error)."""
    limits = [part.strip() for part in raw.split(";") if part.strip()]
    try:
        for limit in limits:
            parse_many(limit)
    except ValueError as exc:
        raise ConfigError(f"RATE_LIMITER {raw!r} is not flask-limiter syntax (e.g. 60/minute;1000/hour): {exc}") \
            from None
    return limits


def init_limiter(app: Flask, settings: Settings) -> Limiter:
    limits = parse_limits(settings.rate_limiter)
    return Limiter(
        key_func=client_identity,
        app=app,
        application_limits=limits,
        application_limits_exempt_when=lambda: request.path in EXEMPT_PATHS,
        storage_uri=settings.rate_limit_storage_url or settings.redis_url,
        storage_options={"socket_timeout": settings.redis_socket_timeout,
                         "socket_connect_timeout": settings.redis_socket_timeout},
        strategy="moving-window",
        headers_enabled=True,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        key_prefix="moderation-limits",
        enabled=bool(limits),
    )
