"""Webhooks: which callback URLs may be called, how they are logged, and the outbox of pending calls.

The API checks `callback_url` against WEBHOOK_ALLOWED_HOSTS when a job is submitted (so the service
cannot be pointed at internal addresses); the webhook task checks again before each call. A callback
URL's query string often carries a token: logs name it only as `redacted(url)` (scheme, host, port,
path). The body is the job exactly as GET /jobs/<id> returns it, signed as shared/webhook_signing.py says.

The outbox makes delivery at-least-once across crashes: the script that stores a job's result also adds
the job to OUTBOX_KEY when it has a callback_url (one atomic step), a delivery that is over (delivered,
refused, given up) removes it, and the webhook worker's sweeper re-sends entries nobody touched for
WEBHOOK_SWEEP_GRACE seconds (a worker that died between storing the result and enqueueing the call).
On a Redis Cluster the outbox is one sorted set per bucket of jobs (shared/keyspace.py), each in the slot
of its jobs' records, and the sweeper takes due entries bucket by bucket.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import redis

from shared.keyspace import OUTBOX_KEY, keyspace_for  # noqa: F401  (OUTBOX_KEY: re-exported)
from shared.redis_client import call_script, run_pipelined

WEBHOOK_TASK = "moderation.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"
# OUTBOX_KEY (shared/keyspace.py; per bucket on a cluster): sorted set, job id -> when its callback was last due
# or tried (epoch seconds).

# Take due entries and stamp them `now` in one step, so two sweepers never both re-send one entry.
_TAKE_DUE_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, job_id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], job_id) end
return due
"""


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


def redacted(url: str) -> str:
    """The URL as logs may show it: scheme://host[:port]/path, without credentials, query or fragment."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "<malformed URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{port}' if port is not None else ''}{parts.path}"


def scrubbed(text: str, *urls: str) -> str:
    """`text` (e.g. an HTTP library's error, which names the URL it called) without the query strings,
    fragments and credentials of `urls` (give each spelling the library may have used)."""
    for url in urls:
        try:
            parts = urlsplit(url)
        except ValueError:
            continue
        for secret in (f"?{parts.query}" if parts.query else "", f"#{parts.fragment}" if parts.fragment else "",
                       parts.netloc.rpartition("@")[0] + "@" if "@" in parts.netloc else ""):
            if secret:
                text = text.replace(secret, "")
    return text


class WebhookOutbox:
    """Pending callbacks (OUTBOX_KEY, per bucket on a cluster); entries are added by the job store's finish script."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self.keys = keyspace_for(client)
        self._take_due = client.register_script(_TAKE_DUE_SCRIPT)

    def is_pending(self, job_id: str) -> bool:
        return self.redis.zscore(self.keys.outbox_key_of(job_id), job_id) is not None

    def touch(self, job_id: str) -> None:
        """A delivery is being tried now: the sweeper leaves the entry alone for another grace period."""
        self.redis.zadd(self.keys.outbox_key_of(job_id), {job_id: time.time()}, xx=True)

    def done(self, job_id: str) -> None:
        self.redis.zrem(self.keys.outbox_key_of(job_id), job_id)

    def take_due(self, grace: float, limit: int = 200) -> list[str]:
        """Entries untouched for `grace` seconds, stamped now (the caller enqueues their delivery); at most
        `limit` per bucket."""
        now = time.time()
        if self.keys.buckets == 1:
            return self._take_due(keys=[self.keys.outbox_key(0)], args=[now - grace, now, limit])

        def build(pipe):
            for bucket in range(self.keys.buckets):
                call_script(pipe, self._take_due, [self.keys.outbox_key(bucket)], [now - grace, now, limit])
            return [self._take_due]
        return [job_id for due in run_pipelined(self.redis, build) for job_id in due]
