"""Rate limiting with flask-limiter, counters in Redis so all gunicorn processes share them.

Two budgets per client, so a client that polls politely is never throttled by its own submissions
(nor the other way round): RATE_LIMITER for submissions (POST, DELETE) and READ_RATE_LIMITER for
reads (GET). Both use flask-limiter syntax (e.g. "60/minute;1000/hour") and count per API key when
keys are on (only a configured key gets its own budget, so made-up keys cannot dodge the limit),
else per client IP (X-Forwarded-For is believed only through TRUSTED_PROXIES hops, see create_app).
On a Redis Cluster (REDIS_CLUSTER) the counters go to the cluster through `limits`' own cluster storage
(shared/redis_client.py: limiter_storage_url); each counter is one key, so it lives on whichever master
holds its slot. When the limiter's Redis is down, limits fall back to each process's memory (in_memory_fallback)
instead of refusing or failing requests: availability over exactness. Operations documented with
rate_limited=False (health, readiness, metrics, the OpenAPI document, the web page's files) are exempt.

Tokens are budgeted too, as OpenAI's APIs do (TOKEN_RATE_LIMITER, e.g. "150000/minute"): each accepted
submission spends its token count (api/tokens.py) from the caller's budget in the same storage (the
`limits` strategy flask-limiter runs on, with a cost per hit); past it, 429 with Retry-After. Every
limited response says where the caller stands in OpenAI's headers: x-ratelimit-limit-requests,
-remaining-requests, -reset-requests, and the same three for tokens (reset as a duration, "1s", "6m0s").
"""

from __future__ import annotations

import time

from flask import Flask, current_app, request
from flask_limiter import ApplicationLimit, Limiter
from flask_limiter.util import get_remote_address
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from api.auth import authenticated_fingerprint
from api.errors import APIError
from api.metrics import count_rejection, count_tokens
from shared import metrics as names
from shared.config import ConfigError, Settings
from shared.redis_client import limiter_storage_url

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_SCOPE = "moderation-limits/tokens"


def client_identity() -> str:
    """Whose budget a request spends: its API key's fingerprint, else its client IP."""
    fingerprint = authenticated_fingerprint()
    if fingerprint is not None:
        return "key:" + fingerprint
    return "ip:" + (get_remote_address() or "unknown")


def key_class() -> str:
    """The moderation_tokens_total label: "key" for an API key's budget, "anonymous" for a client IP's."""
    return "key" if authenticated_fingerprint() is not None else "anonymous"


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


def openai_duration(seconds: float) -> str:
    """OpenAI's reset format: "250ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if round(seconds, 1) < 60:
        return f"{round(seconds, 1):g}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return (f"{hours}h" if hours else "") + f"{rest // 60}m{rest % 60}s"


class TokenBudget:
    """Tokens per minute (or any window) per caller, in the rate limiter's own storage."""

    def __init__(self, settings: Settings):
        self.strategy = MovingWindowRateLimiter(storage_from_string(
            limiter_storage_url(settings), socket_timeout=settings.redis_socket_timeout,
            socket_connect_timeout=settings.redis_socket_timeout))
        raw = settings.token_rate_limiter
        self.items: list[RateLimitItem] = [item for limit in parse_limits(raw, "TOKEN_RATE_LIMITER")
                                           for item in parse_many(limit)]

    def _stats(self, identity: str) -> tuple[RateLimitItem, int, float] | None:
        """The tightest limit for this caller: (limit, remaining, seconds to reset); None if storage fails."""
        try:
            rows = [(item, self.strategy.get_window_stats(item, TOKEN_SCOPE, identity))
                    for item in self.items]
        except Exception:  # noqa: BLE001 (the limiter's storage is down: availability over exactness)
            return None
        item, stats = min(rows, key=lambda row: row[1].remaining)
        return item, stats.remaining, max(0.0, stats.reset_time - time.time())

    def spend(self, tokens: int, model: str) -> None:
        """Take `tokens` from the caller's budget, or refuse with 429 (nothing is spent then)."""
        if not self.items or not tokens:
            return
        identity = client_identity()
        try:
            for item in self.items:
                if tokens > item.amount:
                    raise APIError(413, "request_too_large",
                                   f"the request holds {tokens} tokens, more than the whole per-key budget "
                                   f"TOKEN_RATE_LIMITER={item}", param=None, tokens=tokens, limit=item.amount)
            # A moving window's hit takes nothing when the cost does not fit: one round trip per limit (with
            # several limits, e.g. per minute and per hour, one that fits is spent even if a later one refuses).
            fits = all(self.strategy.hit(item, TOKEN_SCOPE, identity, cost=tokens) for item in self.items)
        except APIError:
            raise
        except Exception:  # noqa: BLE001 (storage down: as flask-limiter's swallow_errors, let it through)
            return
        if not fits:
            stats = self._stats(identity)
            retry = max(1, round(stats[2])) if stats else 1
            count_rejection(names.REJECT_RATE_LIMITED)
            count_tokens(model, key_class(), names.TOKENS_RATE_LIMITED, tokens)
            raise APIError(429, "tokens_rate_limited",
                           f"this request's {tokens} tokens are past the token budget ({self.items[0]}"
                           f"{', remaining ' + str(stats[1]) if stats else ''}); retry after the Retry-After "
                           "header's seconds", headers={"Retry-After": str(retry)}, tokens=tokens)

    def headers(self) -> dict[str, str]:
        stats = self._stats(client_identity()) if self.items else None
        if stats is None:
            return {}
        item, remaining, reset = stats
        return {"x-ratelimit-limit-tokens": str(item.amount), "x-ratelimit-remaining-tokens": str(remaining),
                "x-ratelimit-reset-tokens": openai_duration(reset)}


def token_budget() -> TokenBudget:
    return current_app.extensions["moderation-token-budget"]


def _request_headers(limiter: Limiter) -> dict[str, str]:
    """The request budget this request was counted against, in OpenAI's header names."""
    try:
        current = limiter.current_limit
    except Exception:  # noqa: BLE001
        return {}
    if current is None:
        return {}
    return {"x-ratelimit-limit-requests": str(current.limit.amount),
            "x-ratelimit-remaining-requests": str(current.remaining),
            "x-ratelimit-reset-requests": openai_duration(current.reset_at - time.time())}


def init_limiter(app: Flask, settings: Settings) -> Limiter:
    submit = parse_limits(settings.rate_limiter)
    read = parse_limits(settings.read_rate_limiter, "READ_RATE_LIMITER")
    budgets = [ApplicationLimit(limit_provider=";".join(limits), scope=scope, exempt_when=exempt)
               for limits, scope, exempt in ((submit, "submit", lambda: _exempt() or _is_read()),
                                             (read, "read", lambda: _exempt() or not _is_read()))
               if limits]
    limiter = Limiter(
        key_func=client_identity,
        app=app,
        application_limits=budgets,
        storage_uri=limiter_storage_url(settings),  # `limits`' redis+cluster:// form on a Redis Cluster
        storage_options={"socket_timeout": settings.redis_socket_timeout,
                         "socket_connect_timeout": settings.redis_socket_timeout},
        strategy="moving-window",
        headers_enabled=True,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        key_prefix="moderation-limits",
        enabled=bool(budgets),
    )
    tokens = TokenBudget(settings)
    app.extensions["moderation-token-budget"] = tokens

    @app.after_request
    def _openai_headers(response):
        if _exempt():
            return response
        response.headers.update(_request_headers(limiter))
        response.headers.update(tokens.headers())
        return response
    return limiter
