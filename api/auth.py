"""Optional API keys (API_KEYS / API_KEYS_FILE): Bearer auth and job ownership.

A job remembers a hash of the key that created it; any other key gets 404 for it, so ids leak
nothing. Keys are compared in constant time, as SHA-256 digests: hmac.compare_digest returns early on inputs
of different lengths, so comparing the keys themselves would reveal a configured key's length.
"""

from __future__ import annotations

import hashlib
import hmac

from flask import g, request

from api.errors import APIError
from api.extensions import services


def _presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def key_fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _key_digest(key: str) -> bytes:
    """32 bytes whatever the key's length, so the comparison's time says nothing about lengths."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _is_configured_key(presented: str, keys: tuple[str, ...]) -> bool:
    # Compare against every key so timing does not reveal which one (or whether any) matched, and compare
    # fixed-length digests so it does not reveal any key's length either.
    presented_digest = _key_digest(presented)
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented_digest, _key_digest(key))
    return matched


def authenticated_fingerprint() -> str | None:
    """The fingerprint of the request's key if it is a configured one; None otherwise."""
    keys = services().settings.api_keys
    presented = _presented_key()
    if not keys or presented is None or not _is_configured_key(presented, keys):
        return None
    return key_fingerprint(presented)


def require_api_key() -> None:
    """before_request hook for job blueprints: sets g.owner ("" when keys are off)."""
    g.owner = ""
    if not services().settings.api_keys:
        return
    owner = authenticated_fingerprint()
    if owner is None:
        raise APIError(401, "unauthorized", "missing or invalid API key (Authorization: Bearer <key>)",
                       headers={"WWW-Authenticate": "Bearer"})
    g.owner = owner
