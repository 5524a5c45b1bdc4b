"""Webhook signatures the Standard Webhooks way (standardwebhooks.com), with a secret per API key.

Each delivery carries `webhook-id` (the job id: the same on every retry, so a receiver can drop a
redelivery), `webhook-timestamp` (unix seconds of this attempt) and `webhook-signature`: `v1,<base64 of
HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` for each valid secret, space-separated. A secret is
`whsec_<base64 key>`; the HMAC key is the decoded part. A receiver checks the signature and refuses a
timestamp more than 5 minutes off (the `standardwebhooks` package does both), so a captured delivery
cannot be replayed later.

Which secrets sign a job's delivery is decided at delivery time from the job's owner (its API key's
fingerprint, api/auth.py): the key's own secret, set and rotated through POST /v1/webhooks/secret and kept
in the job-store Redis (SECRET_KEY_PREFIX + fingerprint), plus the one it replaced until that one's
`previous_until`; a key without one (or no key: API_KEYS off) gets the service's WEBHOOK_SECRET, which
may be one or more `whsec_` secrets (space-separated: all sign) or any other string, whose UTF-8 bytes
are then the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache

import redis

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24  # the spec asks for 24..64 random bytes
ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "webhook-id", "webhook-timestamp", "webhook-signature"
# Hash per API key fingerprint: secret, created_at, and (after a rotation that keeps it) previous,
# previous_until; previous == "" means the secret replaced was the service's WEBHOOK_SECRET.
SECRET_KEY_PREFIX = "moderation:webhooks:secret:"
DEFAULT_KEEP_PREVIOUS_SECONDS = 24 * 3600
MAX_KEEP_PREVIOUS_SECONDS = 30 * 24 * 3600

# The new secret and the one it replaces, in one step: two rotations at once never lose a secret between them.
_ROTATE_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'secret') or ''
redis.call('HDEL', KEYS[1], 'previous', 'previous_until')
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'previous', current, 'previous_until', ARGV[3]) end
redis.call('HSET', KEYS[1], 'secret', ARGV[1], 'created_at', ARGV[2])
return current
"""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret (padding optional); ValueError if it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX}")
    encoded = secret[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"the part after {SECRET_PREFIX} is not base64") from None
    if not key:
        raise ValueError(f"the part after {SECRET_PREFIX} is empty")
    return key


@lru_cache(maxsize=8)
def global_keys(raw: str) -> tuple[bytes, ...]:
    """WEBHOOK_SECRET's HMAC keys: each of its space-separated `whsec_` secrets (all sign: rotating the
    service's secret), or else the UTF-8 bytes of the whole string; () when unset. ValueError on a
    malformed `whsec_` secret (load_settings reports it at start-up)."""
    parts = raw.split()
    if not parts:
        return ()
    if all(part.startswith(SECRET_PREFIX) for part in parts):
        return tuple(secret_key(part) for part in parts)
    if any(part.startswith(SECRET_PREFIX) for part in parts):
        raise ValueError(f"mixes {SECRET_PREFIX} secrets with other text; list only {SECRET_PREFIX} secrets, "
                         "space-separated, or give one plain string")
    return (raw.encode("utf-8"),)


def sign(msg_id: str, timestamp: int, body: bytes, key: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(msg_id: str, body: bytes, keys: tuple[bytes, ...], now: float | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt, signed with each key."""
    timestamp = int(time.time() if now is None else now)
    return {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: " ".join(sign(msg_id, timestamp, body, key) for key in keys)}


@dataclass(frozen=True)
class KeySecrets:
    """An API key's stored secrets (epoch seconds); previous is None when none, "" for WEBHOOK_SECRET."""
    secret: str
    created_at: float
    previous: str | None = None
    previous_until: float | None = None

    def previous_valid(self, now: float | None = None) -> bool:
        return self.previous is not None and self.previous_until is not None and \
            self.previous_until > (time.time() if now is None else now)


class WebhookSecrets:
    """Per API key secrets in the job-store Redis, keyed by the key's fingerprint (a job's `owner`)."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._rotate = client.register_script(_ROTATE_SCRIPT)

    @staticmethod
    def key(owner: str) -> str:
        return SECRET_KEY_PREFIX + owner

    def rotate(self, owner: str, keep_previous_seconds: int, now: float | None = None) -> KeySecrets:
        """A new secret for `owner`; the one it replaces (the key's own, else WEBHOOK_SECRET) keeps signing
        for `keep_previous_seconds` (0: it stops at once, e.g. after a leak). Returns the new state."""
        if not owner:
            raise ValueError("per-key webhook secrets need an API key")
        now = time.time() if now is None else now
        secret = new_secret()
        until = now + keep_previous_seconds if keep_previous_seconds > 0 else None
        replaced = self._rotate(keys=[self.key(owner)], args=[secret, repr(now), "" if until is None else repr(until)])
        return KeySecrets(secret, now, previous=None if until is None else replaced, previous_until=until)

    def get(self, owner: str) -> KeySecrets | None:
        data = self.redis.hgetall(self.key(owner)) if owner else {}
        if not data.get("secret"):
            return None
        until = data.get("previous_until")
        return KeySecrets(secret=data["secret"], created_at=float(data.get("created_at") or 0),
                          previous=data.get("previous") if until else None,
                          previous_until=float(until) if until else None)

    def signing_keys(self, owner: str, fallback: tuple[bytes, ...], now: float | None = None) -> tuple[bytes, ...]:
        """The HMAC keys that sign a delivery of `owner`'s job: its secret and a still valid previous one;
        `fallback` (WEBHOOK_SECRET's) when the key has none, or when there is no key."""
        stored = self.get(owner)
        if stored is None:
            return fallback
        keys = [secret_key(stored.secret)]
        if stored.previous_valid(now):
            keys += [secret_key(stored.previous)] if stored.previous else list(fallback)
        return tuple(dict.fromkeys(keys))
