"""Idempotent submission: the `Idempotency-Key` header on POST /generate and POST /v1/moderations
(IETF draft-ietf-httpapi-idempotency-key-header, as Stripe does it; docs/idempotency.md).

A key is scoped to its caller (the API key's fingerprint, "" when keys are off) and reserved in the job
Redis with SET NX before the job exists: the reservation holds the body's fingerprint and the job id the
submission will use. The same key with the same body then answers with that job (`Idempotent-Replayed:
true`, nothing queued or charged again); with another body or endpoint, 422 `idempotency_key_reused`. A
submission that fails releases its reservation, so the client's retry goes through.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flask import g, request

from api.errors import APIError
from api.extensions import services
from shared.jobs import JobRecord, new_job_id
from shared.redis_client import STORE_ERRORS

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_PREFIX = "moderation:idempotency:"
IDEMPOTENCY_TTL = 24 * 3600  # s; never longer than RESULT_TTL, so a key does not outlive its job
MAX_KEY_LENGTH = 255
# A reservation whose job is still not in the store after this long was abandoned (the process that made
# it died mid-submission, or could not release it): the next request with the key takes it over.
IN_FLIGHT_GRACE = 15.0
POLL_INTERVAL = 0.05

# Delete the reservation only if it is still the one this request wrote.
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Claim:
    """What a request's Idempotency-Key gave it: a fresh reservation (submit with `job_id`), or a replay
    of the job the key already names (`record`: that job as stored now)."""

    job_id: str
    replayed: bool
    record: JobRecord | None = None
    redis_key: str = ""
    value: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {REPLAYED_HEADER: "true"} if self.replayed else {}


def header_parameter(schemas) -> dict:
    """The header as /openapi.json documents it (api/contract.py Operation.headers)."""
    return {"name": HEADER, "in": "header", "required": False,
            "description": "makes the submission idempotent for 24 h: the same key and body answer with the "
                           "original job (header Idempotent-Replayed: true); another body is a 422",
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH,
                       "pattern": "^[\\x20-\\x7e]+$"}}


def _valid_key(value: str) -> bool:
    return 1 <= len(value) <= MAX_KEY_LENGTH and all(" " <= char <= "~" for char in value)


def fingerprint(path: str, data: object) -> str:
    """What makes two requests "the same": the endpoint and the parsed body, canonically serialised."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{path}\n{canonical}".encode("utf-8", "surrogatepass")).hexdigest()


def reservation_key(owner: str, key: str) -> str:
    return KEY_PREFIX + hashlib.sha256(f"{owner}\0{key}".encode("utf-8", "surrogatepass")).hexdigest()


def claim() -> Claim | None:
    """The request's Idempotency-Key claimed (call it after the body has been validated): None without
    the header; 400 for a malformed key; 422 if the key was used with another body or endpoint."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not _valid_key(key):
        raise APIError(400, "invalid_request",
                       f"{HEADER}: must be 1 to {MAX_KEY_LENGTH} printable ASCII characters", param=HEADER)
    svc = services()
    body = json.loads(request.get_data(cache=True).decode("utf-8"))  # parse_json_body has accepted it
    wanted = fingerprint(request.path, body)
    redis_key = reservation_key(g.get("owner", ""), key)
    ttl = max(1, min(IDEMPOTENCY_TTL, svc.settings.result_ttl))
    while True:
        job_id = new_job_id()
        value = json.dumps({"fingerprint": wanted, "job_id": job_id, "reserved_at": time.time()})
        if svc.redis.set(redis_key, value, nx=True, ex=ttl):
            return Claim(job_id, replayed=False, redis_key=redis_key, value=value)
        stored = svc.redis.get(redis_key)
        if stored is None:
            continue  # released (its submission failed) or expired since our SET: try again
        original = json.loads(stored)
        if stored == value:  # our own SET went through and redis-py sent it again after a timeout
            return Claim(job_id, replayed=False, redis_key=redis_key, value=value)
        if original["fingerprint"] != wanted:
            raise APIError(422, "idempotency_key_reused",
                           f"{HEADER} '{key}' was already used with a different request (body or endpoint) "
                           "in the last 24 h; send a new key for a new request", param=HEADER)
        record = svc.store.get(original["job_id"])
        if record is not None:
            return Claim(original["job_id"], replayed=True, record=record)
        # The original request has reserved the key but its job is not stored (yet): wait for it, for the
        # reservation to go (that submission failed), or until the reservation counts as abandoned.
        if time.time() - float(original.get("reserved_at", 0)) > IN_FLIGHT_GRACE:
            log.warning("taking over abandoned %s reservation for job %s", HEADER, original["job_id"])
            svc.redis.eval(_RELEASE_SCRIPT, 1, redis_key, stored)
            continue
        time.sleep(POLL_INTERVAL)


def release(found: Claim | None) -> None:
    """After a failed submission: drop the reservation unless its job was created after all."""
    if found is None or found.replayed:
        return
    try:
        svc = services()
        if not svc.store.exists(found.job_id):
            svc.redis.eval(_RELEASE_SCRIPT, 1, found.redis_key, found.value)
    except STORE_ERRORS as exc:  # it expires, or the next request takes it over after IN_FLIGHT_GRACE
        log.warning("could not release %s reservation for job %s: %s", HEADER, found.job_id, exc)


@contextmanager
def released_on_failure(found: Claim | None) -> Iterator[None]:
    """Run a submission; if it raises (queue full, Redis down, a refused body), release the reservation."""
    try:
        yield
    except BaseException:
        release(found)
        raise
