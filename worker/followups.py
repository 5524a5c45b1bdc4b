"""After a batch's outcomes are stored: count texts for the texts/s panel and schedule webhooks.

One pipelined round trip per batch (never per text or job): the per-second text counters, and a read
of callback_url and status for each job just stored. Webhook deliveries are separate Celery tasks on
their own queue, consumed by the webhook worker process, so a slow receiver never holds up a batch.
This enqueue is the fast path only: the finish script already recorded each callback in the webhook
outbox with the result, so a worker that dies before this runs loses no callback (the webhook worker's
sweeper sends it after WEBHOOK_SWEEP_GRACE; shared/webhooks.py).
Nothing here may fail a job: errors are logged and the batch goes on.
"""

from __future__ import annotations

import logging
from collections import Counter

import redis
from celery import Celery

from shared.jobs import FAILED, SUCCEEDED, keyspace_for
from shared.throughput import add_texts
from shared.webhooks import WEBHOOK_QUEUE, WEBHOOK_TASK

log = logging.getLogger(__name__)


def after_batch(client: redis.Redis, celery: Celery, models_of: dict[str, str], outcomes: list[tuple]) -> None:
    """`models_of` maps the batch's live job ids to their model; outcomes are (job_id, results, error)."""
    texts = Counter()
    for job_id, results, _ in outcomes:
        if results is not None and job_id in models_of:
            texts[models_of[job_id]] += len(results)
    job_ids = [job_id for job_id, _, _ in outcomes]
    try:
        pipe = client.pipeline(transaction=False)
        add_texts(pipe, texts)
        for job_id in job_ids:
            pipe.hmget(keyspace_for(client).job_key(job_id), ["callback_url", "status"])
        rows = pipe.execute()[-len(job_ids):] if job_ids else []
        for job_id, (callback_url, status) in zip(job_ids, rows):
            if callback_url and status in (SUCCEEDED, FAILED):
                celery.send_task(WEBHOOK_TASK, args=[job_id], queue=WEBHOOK_QUEUE)
    except Exception:
        log.exception("counting texts or scheduling webhooks failed (the jobs themselves are stored)")
