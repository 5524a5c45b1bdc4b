"""Rate limiting with flask-limiter, counters in Redis so all gunicorn processes share them.

Two budgets per client, so a client that polls politely is never throttled by its own submissions
(nor the other way round): RATE_LIMITER for submissions (POST, DELETE) and READ_RATE_LIMITER for
reads (GET). Both use flask-limiter syntax (e.g. "60/minute;1000/hour") and count per API key when
keys are on (only a configured key gets its own budget, so made-up keys cannot dodge the limit),
else per client IP (X-Forwarded-For is believed only through TRUSTED_PROXIES hops, see create_app).
When the limiter's Redis is down, limits fall back to each process's memory (in_memory_fallback)
instead of refusing or failing requests: availability over exactness. Operations documented with
rate_limited=False (health, readiness, metrics, the OpenAPI document, the web page's files) are exempt.
"""

from __future__ import annotations

from flask import Flask, current_app, request
from flask_limiter import ApplicationLimit, Limiter
from flask_limiter.util import get_remote_address
from limits import parse_many

from api.auth import authenticated_fingerprint
from shared.config import ConfigError, Settings

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def client_identity() -> str:
    """Whose budget a request spends: its API key's fingerprint, else its client IP."""
    fingerprint = authenticated_fingerprint()
    if fingerprint is not None:
        return "key:" + fingerprint
    return "ip:" + (get_remote_address() or "unknown")


def parse_limits(raw: str, name: str = "RATE_LIMITER") -> list[str]:
    """A budget's limits, checked at start-up (a typo must not become a silent per-request error)."""
    limits = [part.strip() for part in raw.split(";") if part.strip()]
    try:
        for limit in limits:
            parse_many(limit)
    except ValueError as exc:
        raise ConfigError(f"{name} {raw!r} is not flask-limiter syntax (e.g. 60/minute;1000/hour): {exc}") \
            from None
    return limits


def _exempt() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    operation = getattr(view, "operation", None)
    return operation is None or not operation.rate_limited


def _is_read() -> bool:
    return request.method in READ_METHODS


def init_limiter(app: Flask, settings: Settings) -> Limiter:
    submit = parse_limits(settings.rate_limiter)
    read = parse_limits(settings.read_rate_limiter, "READ_RATE_LIMITER")
    budgets = [ApplicationLimit(limit_provider=";".join(limits), scope=scope, exempt_when=exempt)
               for limits, scope, exempt in ((submit, "submit", lambda: _exempt() or _is_read()),
                                             (read, "read", lambda: _exempt() or not _is_read()))
               if limits]
    return Limiter(
        key_func=client_identity,
        app=app,
        application_limits=budgets,
        storage_uri=settings.rate_limit_storage_url or settings.redis_url,
        storage_options={"socket_timeout": settings.redis_socket_timeout,
                         "socket_connect_timeout": settings.redis_socket_timeout},
        strategy="moving-window",
        headers_enabled=True,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        key_prefix="moderation-limits",
        enabled=bool(budgets),
    )
