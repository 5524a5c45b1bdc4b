"""Rate limiting with flask-limiter, counters in Redis so all gunicorn processes share them.

RATE_LIMITER (flask-limiter syntax, e.g. "60/minute;1000/hour") applies per API key when keys are
on, else per client IP (X-Forwarded-For is believed only through TRUSTED_PROXIES hops, see
create_app). When the limiter's Redis is down, limits fall back to each process's memory
(in_memory_fallback) instead of refusing or failing requests: availability over exactness.
Health, readiness, metrics and the OpenAPI document are exempt.
"""

from __future__ import annotations

from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from api.auth import key_fingerprint
from shared.config import Settings

EXEMPT_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json")


def _client_key() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "key:" + key_fingerprint(token.strip())
    return "ip:" + (get_remote_address() or "unknown")


def init_limiter(app: Flask, settings: Settings) -> Limiter:
    limits = [part.strip() for part in settings.rate_limiter.split(";") if part.strip()]
    limiter = Limiter(
        key_func=_client_key if settings.api_keys else get_remote_address,
        app=app,
        default_limits=limits,
        default_limits_exempt_when=lambda: request.path in EXEMPT_PATHS,
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
    return limiter
