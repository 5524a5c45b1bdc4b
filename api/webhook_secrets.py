"""POST and GET /v1/webhooks/secret: the caller's API key's own webhook signing secret.

POST makes a new `whsec_` secret and shows it this once (201); the secret it replaces (the key's own, or
the service's WEBHOOK_SECRET before the key had one) keeps signing beside it for `keep_previous_seconds`
(default 24 h), so receivers can switch over without dropping a delivery. GET says which secret signs
and until when the previous one does, never a secret. Deliveries look the secrets up when they are sent
(shared/webhook_signing.py). With API_KEYS off there is no caller to own a secret: POST answers 403 and
WEBHOOK_SECRET signs every delivery.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, g

from api import schemas as s
from api.auth import require_api_key
from api.contract import operation, reply
from api.errors import APIError
from api.extensions import services
from api.validation import parse_optional_json_body
from shared.webhook_signing import KeySecrets, WebhookSecrets

bp = Blueprint("webhook_secrets", __name__)
bp.before_request(require_api_key)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _info(stored: KeySecrets | None) -> dict:
    if stored is None:
        return {"source": "global", "created_at": None, "previous": None, "previous_valid_until": None}
    # A replaced WEBHOOK_SECRET signs only if the service has one.
    valid = stored.previous_valid() and bool(stored.previous or services().settings.webhook_secret.strip())
    return {"source": "key", "created_at": _iso(stored.created_at),
            "previous": ("key" if stored.previous else "global") if valid else None,
            "previous_valid_until": _iso(stored.previous_until) if valid else None}


@bp.post("/v1/webhooks/secret")
@operation("Make (or rotate) this API key's webhook signing secret; shown once",
           {201: ("The new secret; the replaced one signs beside it for keep_previous_seconds",
                  s.WebhookSecretCreated)},
           errors=(403, 503), body="webhook_secret", body_required=False, secured=True)
def rotate_webhook_secret():
    body = parse_optional_json_body(services().schemas.webhook_secret)
    if not g.owner:
        raise APIError(403, "api_keys_off", "per-key webhook secrets need API keys (API_KEYS is not set): "
                       "WEBHOOK_SECRET signs every delivery")
    stored = WebhookSecrets(services().redis).rotate(g.owner, body.keep_previous_seconds)
    return reply(s.WebhookSecretCreated(secret=stored.secret, **_info(stored)), 201)


@bp.get("/v1/webhooks/secret")
@operation("Which secret signs this API key's webhooks (never the secret itself)",
           {200: ("Its secret's metadata", s.WebhookSecretInfo)}, errors=(503,), secured=True)
def get_webhook_secret():
    return reply(s.WebhookSecretInfo(**_info(WebhookSecrets(services().redis).get(g.owner))))
