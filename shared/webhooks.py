"""Webhooks: which callback URLs may be called, and how a delivery is signed.

The API checks `callback_url` against WEBHOOK_ALLOWED_HOSTS when a job is submitted (so the service
cannot be pointed at internal addresses); the webhook task checks again before each call.
The body is the job exactly as GET /jobs/<id> returns it; the signature header is
`X-Moderation-Signature: sha256=<hex HMAC-SHA256 of the body with WEBHOOK_SECRET>`.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

WEBHOOK_TASK = "moderation.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"
SIGNATURE_HEADER = "X-Moderation-Signature"


class CallbackRefused(ValueError):
    """callback_url is not one the service will call."""


def check_callback_url(url: str, allowed_hosts: frozenset[str]) -> str:
    """The URL if it may be called; raises CallbackRefused with the reason otherwise."""
    if not allowed_hosts:
        raise CallbackRefused("webhooks are off on this service (WEBHOOK_ALLOWED_HOSTS is not set)")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        raise CallbackRefused("not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise CallbackRefused("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise CallbackRefused("must not carry credentials")
    if host not in allowed_hosts:
        raise CallbackRefused(f"host '{host}' is not in WEBHOOK_ALLOWED_HOSTS")
    return url


def signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
