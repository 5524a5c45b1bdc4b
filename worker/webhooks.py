"""Webhook deliveries: `python -m worker.webhooks` runs a small Celery worker on the `webhooks` queue.

`python -m worker` starts it as a child process when WEBHOOK_ALLOWED_HOSTS is set; it loads no model,
and its threads are its own, so a slow or dead receiver never holds up a moderation batch. Each
delivery POSTs the job (the body of GET /jobs/<id>, serialised by the same pydantic model), signed the
Standard Webhooks way with the job owner's secrets, looked up now (shared/webhook_signing.py), and a
timestamp of this attempt; a failure (connection error, timeout, non-2xx) is retried by Celery with exponential
backoff (1, 2, 4 ... 60 s, with jitter) up to WEBHOOK_MAX_RETRIES times, then dropped with a log line.
The job itself is already stored: a delivery never changes it. Logs name the callback URL only as
`redacted(url)` (no query string: it often carries a token), and scrub it from the HTTP library's errors.

At least once across crashes (shared/webhooks.py's outbox): each try stamps the job's outbox entry, a
delivery that is over removes it, and OutboxSweepStep re-enqueues entries untouched for
WEBHOOK_SWEEP_GRACE seconds, e.g. of a moderation worker killed after storing a result but before
enqueueing its call. A delivery whose entry is already gone (a duplicate enqueue) is skipped.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from functools import cache

import requests
from celery import bootsteps
from celery.utils.time import get_exponential_backoff_interval
from prometheus_client import start_http_server

from shared import __version__
from shared.celery_app import celery_app, configure_celery
from shared.config import get_settings
from shared.jobs import JobStore
from shared.redis_client import make_redis
from shared.schemas import Job
from shared.webhook_signing import WebhookSecrets, global_keys, signed_headers
from shared.webhooks import (
    WEBHOOK_QUEUE,
    WEBHOOK_TASK,
    CallbackRefused,
    WebhookOutbox,
    check_callback_url,
    redacted,
    scrubbed,
)
from worker import delayed_delivery

log = logging.getLogger(__name__)
BACKOFF_MAX_SECONDS = 60
SWEEP_EVERY_MAX_SECONDS = 15.0


class DeliveryFailed(Exception):
    pass


@cache
def _store() -> JobStore:
    settings = get_settings()
    return JobStore.from_settings(make_redis(settings), settings)


def deliver(job_id: str) -> str:
    """POST the job to its callback_url once; raises DeliveryFailed when the receiver did not take it."""
    settings = get_settings()
    record = _store().get(job_id)
    if record is None or not record.callback_url:
        return "expired"
    try:
        url = check_callback_url(record.callback_url, settings.webhook_allowed_hosts)
    except CallbackRefused as exc:
        log.warning("job %s: not calling %s: %s", job_id, redacted(record.callback_url), exc)
        return "refused"
    keys = _secrets().signing_keys(record.owner, global_keys(settings.webhook_secret))
    if not keys:
        log.warning("job %s: not calling %s: no webhook secret to sign with (WEBHOOK_SECRET is not set)", job_id,
                    redacted(url))
        return "refused"
    body = Job.of(record).model_dump_json().encode()
    # Signed now, for this attempt: a retry carries a fresh timestamp (a receiver refuses one 5 minutes old).
    headers = {"Content-Type": "application/json", **signed_headers(job_id, body, keys),
               "User-Agent": f"moderation-webhooks/{__version__}"}
    try:
        # No redirects: a receiver must not bounce the call to a host outside the allowlist.
        response = requests.post(url, data=body, headers=headers, timeout=settings.webhook_timeout,
                                 allow_redirects=False)
    except requests.RequestException as exc:
        # Its message names the URL as requests sent it (the query string re-quoted): scrub both spellings.
        raise DeliveryFailed(f"{type(exc).__name__}: {scrubbed(str(exc), url, _prepared(url))}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"the receiver answered {response.status_code}")
    return "delivered"


def _prepared(url: str) -> str:
    try:
        return requests.Request("POST", url).prepare().url or url
    except Exception:  # noqa: BLE001 (a URL requests cannot prepare: its error names it as given)
        return url


@cache
def _outbox() -> WebhookOutbox:
    return WebhookOutbox(_store().redis)


@cache
def _secrets() -> WebhookSecrets:
    return WebhookSecrets(_store().redis)


@celery_app.task(name=WEBHOOK_TASK, bind=True, acks_late=True)
def deliver_webhook(self, job_id: str) -> str:
    outbox = _outbox()
    if not outbox.is_pending(job_id):
        return "already delivered"
    outbox.touch(job_id)
    try:
        outcome = deliver(job_id)
    except DeliveryFailed as exc:
        retries = get_settings().webhook_max_retries
        if self.request.retries >= retries:
            log.error("job %s: webhook not delivered after %d tries, giving up: %s", job_id, retries + 1, exc)
            outbox.done(job_id)
            return "failed"
        countdown = get_exponential_backoff_interval(1, self.request.retries, BACKOFF_MAX_SECONDS, full_jitter=True)
        log.warning("job %s: webhook delivery failed (%s); retry %d in %ss", job_id, exc, self.request.retries + 1,
                    countdown)
        raise self.retry(countdown=countdown, max_retries=retries) from None
    outbox.done(job_id)
    return outcome


class OutboxSweepStep(bootsteps.StartStopStep):
    """Re-enqueues outbox entries untouched for WEBHOOK_SWEEP_GRACE seconds, on the worker's timer."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.tref = None

    def start(self, consumer):
        grace = get_settings().webhook_sweep_grace
        self.tref = consumer.timer.call_repeatedly(min(SWEEP_EVERY_MAX_SECONDS, grace / 4), sweep,
                                                   args=(consumer.app, grace))

    def stop(self, consumer):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


def sweep(app, grace: float) -> int:
    """Enqueue a delivery for each due outbox entry; returns how many."""
    try:
        due = _outbox().take_due(grace)
        for job_id in due:
            log.warning("job %s: its webhook was pending for over %ss; sending it", job_id, grace)
            app.send_task(WEBHOOK_TASK, args=[job_id], queue=WEBHOOK_QUEUE)
    except Exception:  # the store or the broker is down: the next sweep tries again
        log.exception("webhook outbox sweep failed")
        return 0
    return len(due)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if argv[:1] == ["--metrics-port"]:
        # Its own Deployment (the Helm chart): /metrics (process metrics; `up` of its scrape job) is also
        # the liveness probe, which reads neither the store nor the broker. Not when `python -m worker`
        # starts it as a child, whose metrics port is the parent's.
        start_http_server(int(argv[1]))
        argv = argv[2:]
    configure_celery(celery_app, settings)
    celery_app.steps["consumer"].add(OutboxSweepStep)
    delayed_delivery.install(celery_app)  # on a RabbitMQ cluster: set up once, not once per node
    celery_app.worker_main([
        "worker", "--pool", "threads", "--concurrency", str(settings.webhook_concurrency),
        "--queues", WEBHOOK_QUEUE, "--hostname", f"webhooks-{os.getpid()}@{socket.gethostname()}",
        "--without-mingle", "--without-gossip", "--loglevel", os.environ.get("LOG_LEVEL", "INFO"), *argv,
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
